#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: datablock_recover
short_description: Release what dead processes hold in a pylabhub DataBlock
version_added: 0.1.0
description:
  - Releases slots of a pylabhub DataBlock 1.0 shared-memory segment that crashed
    processes left locked, or runs the safe C(heal) composite on the whole block.
  - A holder is released without O(force) only when its liveness verdict is C(dead)
    (kernel evidence - no process that has the block mapped or open has its PID - or,
    when the scan of the host cannot be complete, "no such process"). A holder that
    is C(alive), C(suspect-hung) or C(unknown) is refused, and the task fails with a
    message naming the holder's PID, its verdict and the evidence.
  - Every change is a compare-and-swap on the value observed, so a word that a live
    process changes at the same moment is never overwritten; the affected step is undone
    and reported as failed.
  - C(changed) is true exactly when bytes of the block changed (in check mode, when they
    would). A slot with nothing to release is "nothing to do" - C(ok), not changed.
author:
  - pylabhub maintainers (!UNKNOWN)
options:
  slot:
    description:
      - The slot index (V(0) .. capacity-1) or V(all) for every slot.
      - Required for O(action=release_writer), O(action=release_readers) and
        O(action=force_reset). O(action=heal) always works on the whole block; omit
        O(slot) or give V(all).
      - Digits given as a string (as in C(-a "slot=0")) are accepted.
    type: raw
  action:
    description:
      - V(release_writer) - release the write lock of a dead writer. A slot it left
        C(WRITING) becomes C(FREE) (half-written data never becomes readable); one it
        left C(DRAINING) returns to C(COMMITTED); a C(write_index) it advanced is rolled
        back as its abort would have done.
      - V(release_readers) - subtract the readers that are provably dead (attributed to
        dead consumers by recovery evidence, or no live process exists at all); readers
        that may be live are kept.
      - V(force_reset) - both of the above on one slot; refused unless every reader is
        provably dead (or O(force=true)).
      - V(heal) - the safe composite on the whole block - clean up dead consumers,
        release writers and readers whose holders are dead, then validate (re-blessing
        checksums only with O(repair=true)). Never forced.
    type: str
    required: true
    choices: [release_writer, release_readers, force_reset, heal]
  force:
    description:
      - Also release holders whose verdict is not C(dead) (C(alive), C(suspect-hung),
        C(unknown)), and readers that may be live. Each forced release is reported as a
        warning. Dangerous - a live writer or reader may then corrupt or read torn data.
      - Not accepted with O(action=heal).
    type: bool
    default: false
  repair:
    description:
      - With O(action=heal) only - re-bless the checksum of C(COMMITTED) slots whose
        stored checksum does not match their data (see M(pylabhub.recovery.datablock_validate)).
    type: bool
    default: false
  force_refused:
    description:
      - With O(action=heal) only - the forced actions an operator enables, per block and
        slot. After the heal, each slot it refused that an entry names (same block, same
        slot or V(all)) gets that entry's action with force (a warning each), and the
        block is healed again - in the same module call. A slot heal did not refuse is
        never forced. RV(recovery.forced) lists what was forced.
      - In check mode each forced action is predicted apart from the heal (a dry run
        sees only its own changes), so the refusal stays in the result.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The block's address, as reported (for example V(sensor_block)).
        type: str
        required: true
      slot:
        description: The slot index, or V(all) for every refused slot of the block.
        type: raw
        required: true
      action:
        description: The forced action.
        type: str
        required: true
        choices: [release_writer, release_readers, force_reset]
      reason:
        description: Why the operator forces it; copied into RV(recovery.forced).
        type: str
        default: ""
extends_documentation_fragment:
  - pylabhub.recovery.common
  - pylabhub.recovery.common.budget
  - pylabhub.recovery.common.name_or_all
  - pylabhub.recovery.common.mutating
  - pylabhub.recovery.common.record
  - pylabhub.recovery.dependencies
notes:
  - O(all=true) (with O(pattern)) is accepted with O(action=heal) only - every block on
    the host healed in one module call (one round trip per host for a fleet); blocks
    whose header is not sound are skipped with a warning and listed in RV(blocks).
  - O(action=heal) fails only when an action was refused or failed. A block that heal
    leaves unhealthy for another reason (for example corruption without O(repair=true))
    is reported in RV(recovery.healthy) and RV(recovery.validate).
seealso:
  - module: pylabhub.recovery.datablock_diagnose
  - module: pylabhub.recovery.datablock_cleanup
  - module: pylabhub.recovery.datablock_validate
'''

EXAMPLES = r'''
- name: Release the write lock a crashed producer left on slot 0
  pylabhub.recovery.datablock_recover:
    name: my_datablock
    slot: 0
    action: release_writer

- name: Release dead readers on every slot (preview first with --check --diff)
  pylabhub.recovery.datablock_recover:
    name: my_datablock
    slot: all
    action: release_readers

- name: Heal every block on every host in one call per host, repairing committed checksums
  pylabhub.recovery.datablock_recover:
    all: true
    action: heal
    repair: true

- name: Reset a slot whose holder is hung, knowingly (forced releases are warnings)
  pylabhub.recovery.datablock_recover:
    name: my_datablock
    slot: 2
    action: force_reset
    force: true

# Ad hoc, on every host:
#   ansible all -m pylabhub.recovery.datablock_recover -a "name=my_datablock slot=0 action=release_writer"
'''

RETURN = r'''
recovery:
  description:
    - The engine's result (schema C(pylabhub.recovery/v1)), also returned when the task
      fails because an action was refused or failed.
    - For O(action=heal) the keys RV(recovery.cleanup), RV(recovery.validate),
      RV(recovery.after), RV(recovery.healthy), RV(recovery.valid), RV(recovery.unrepaired)
      and RV(recovery.forced) are added and RV(recovery.action), RV(recovery.slot) and
      RV(recovery.force) are absent.
  returned: when the block could be attached
  type: dict
  contains:
    schema:
      description: Schema id of the engine result.
      type: str
      sample: pylabhub.recovery/v1
    operation:
      description: V(recover) or V(heal).
      type: str
      sample: recover
    block:
      description: Identity and geometry of the block.
      type: dict
      sample: {"address": "my_datablock", "name": "my_datablock", "path": "/dev/shm/my_datablock",
               "kind": "shm", "size": 24576, "capacity": 4, "stride": 4096, "flex_size": 0,
               "policy": "RING_BUFFER", "consumer_sync": "LATEST_ONLY",
               "checksum_policy": "ENFORCED", "write_index": 5, "commit_index": 3,
               "has_evidence": true}
    dry_run:
      description: True in check mode (nothing was written).
      type: bool
      sample: false
    changed:
      description: Whether bytes changed (or would, in check mode).
      type: bool
      sample: true
    changes:
      description:
        - Every word or byte range changed, in order. Byte ranges (checksums, names) are
          hex strings. A word changed twice (a lock claimed by the recovery, then
          released) appears twice.
      type: list
      elements: dict
      sample: [{"target": "slot[0].write_lock", "before": 16530, "after": 16528},
               {"target": "slot[0].slot_state", "before": 1, "after": 0},
               {"target": "header.write_index", "before": 5, "after": 4},
               {"target": "slot[0].write_lock", "before": 16528, "after": 0},
               {"target": "header.recovery_actions_count", "before": 0, "after": 1},
               {"target": "header.last_error_timestamp_ns", "before": 0, "after": 665838998369}]
    action:
      description: The action run (not for heal).
      type: str
      sample: release_writer
    slot:
      description: The slot given (index or V(all); not for heal).
      type: raw
      sample: 0
    force:
      description: Whether O(force) was given (not for heal).
      type: bool
      sample: false
    result:
      description:
        - Aggregate over the slots touched, worst first - V(FAILED), V(UNSAFE), V(SUCCESS),
          V(NOT_STUCK). For heal, over every step (cleanup, slots, index repair, forced).
      type: str
      sample: SUCCESS
    ok:
      description: False when an action was refused or failed (the task then fails).
      type: bool
      sample: true
    outcomes:
      description:
        - One entry per slot acted on - C(slot), C(result) (V(SUCCESS), V(NOT_STUCK),
          V(UNSAFE), V(FAILED)), C(message), C(holder) (the writer's verdict - C(pid),
          C(state), C(evidence) - or null) and C(warnings) for forced releases.
      type: list
      elements: dict
      sample: [{"slot": 0, "result": "SUCCESS",
                "message": "slot 0: released write lock of dead pid 16530, WRITING -> FREE",
                "holder": {"pid": 16530, "state": "dead",
                           "evidence": ["kill(16530, 0): ESRCH (no such process)"]}}]
    released:
      description:
        - The V(SUCCESS) outcomes - what was released, cleared or repaired (or would be,
          in check mode). For heal, of every step - cleanup, slots, index repair and the
          forced actions - in the order they ran.
      type: list
      elements: dict
      sample: []
    refused:
      description:
        - The V(UNSAFE) outcomes - a holder not provably dead. For heal, of every step,
          after the forced actions (what is still refused).
      type: list
      elements: dict
      sample: []
    failed:
      description: The V(FAILED) outcomes - a word changed between observation and action; nothing was left half-done.
      type: list
      elements: dict
      sample: []
    warnings:
      description: One line per forced release (also emitted as task warnings).
      type: list
      elements: str
      sample: []
    cleanup:
      description: Heal only - the dead-consumer cleanup (see M(pylabhub.recovery.datablock_cleanup)).
      type: dict
      sample: {"cleaned": 0, "outcomes": [], "reconciled": []}
    validate:
      description: Heal only - the validation after the releases (C(valid), C(findings), C(reblessed)).
      type: dict
      sample: {"valid": true, "findings": [], "reblessed": []}
    after:
      description: Heal only - what a diagnosis sees after heal (C(healthy), C(stuck_slots), C(suspect_slots), C(findings)).
      type: dict
      sample: {"healthy": true, "stuck_slots": [], "suspect_slots": [], "findings": []}
    healthy:
      description: Heal only - the block is healthy afterwards, valid, and nothing was refused.
      type: bool
      sample: true
    health:
      description: Heal only - the block's health word afterwards by the one rule (V(healthy), V(degraded), V(suspect), V(stuck), V(corrupt)).
      type: str
      sample: healthy
    valid:
      description: Heal only - its validation left no error finding unrepaired.
      type: bool
      sample: true
    unrepaired:
      description: Heal only - the error findings its validation left unrepaired (corruption without O(repair=true)).
      type: list
      elements: dict
      sample: []
    forced:
      description:
        - Heal only - the forced actions O(force_refused) enabled and this run applied -
          C(slot), C(action), C(reason), C(result), C(changed), C(message), C(warnings).
      type: list
      elements: dict
      sample: [{"slot": 2, "action": "release_writer", "reason": "INC-123", "result": "SUCCESS",
                "changed": true, "message": "slot 2: FORCED release of write lock of pid 4711 (suspect-hung), WRITING -> FREE",
                "warnings": ["slot 2: FORCED release of write lock held by pid 4711 (suspect-hung)"]}]
blocks:
  description:
    - With O(all=true) (O(action=heal)), one entry per block found - C(address), C(status)
      (from discovery), C(recovery) (the heal result as RV(recovery), or null), C(error)
      (C(code)/C(message), or null), C(skipped) (why the block was not touched, or null),
      C(health) (the health word after heal, null when not healed) and C(healthy).
  returned: with O(all=true)
  type: list
  elements: dict
  sample: [{"address": "my_datablock", "status": "ok", "recovery": {"healthy": true},
            "error": null, "skipped": null, "health": "healthy", "healthy": true}]
healthy:
  description:
    - With O(all=true), whether every block is healthy afterwards (a block that could not
      be healed - an error, or skipped - is not).
  returned: with O(all=true)
  type: bool
  sample: true
audit:
  description:
    - The audit line of each real run of this task that reached a block (time, host,
      user, block, operation, changes, verdicts with evidence, forced, snapshot id), as
      appended to the host's audit log; see docs/audit-and-undo.md.
  returned: when a real run (not check mode) reached a block
  type: list
  elements: dict
  sample: [{"operation": "heal", "host": "lab1", "user": "root", "changed": true,
            "snapshot": "20261201T031200.000000Z-heal-4242-0a1b2c3d"}]
msg:
  description:
    - What the task did, in one line - or, in check mode, what it would do (C(would release ...)).
    - On failure, why (a refusal names the holder and its verdict).
  returned: success with a single O(name), and failure
  type: str
  sample: "my_datablock: slot 0: released the write lock of dead pid 4711 (WRITING → FREE) and scrubbed the torn bytes to zeros"
code:
  description: Error code of the failure (for example V(not-found), V(slot-out-of-range), V(permission), V(usage)).
  returned: failure
  type: str
  sample: not-found
error:
  description: The structured error (C(code), C(message) and details such as C(capacity)).
  returned: failure caused by an engine error
  type: dict
  sample: {"code": "slot-out-of-range", "message": "my_datablock: slot 9 is out of range: the block has 4 slots (0..3)", "capacity": 4}
'''

from ansible_collections.pylabhub.recovery.plugins.module_utils.ansible_adapter import (
    ACTIONS, SLOT_ACTIONS, DataBlockModule, argument_spec, parse_slot, problem_messages,
    summary_msg,
)

FORCE_ENTRY = dict(name=dict(type="str", required=True), slot=dict(type="raw", required=True),
                   action=dict(type="str", required=True, choices=list(SLOT_ACTIONS)),
                   reason=dict(type="str", default=""))


def main():
    m = DataBlockModule(
        argument_spec("name", "all", "pattern", "slot", "force", "repair", "max_bytes",
                      "snapshot", "snapshot_dir", "audit_log",
                      action=dict(type="str", required=True, choices=list(ACTIONS)),
                      force_refused=dict(type="list", elements="dict", default=[],
                                         options=FORCE_ENTRY)),
        required_if=[("action", action, ["slot"]) for action in SLOT_ACTIONS],
    )
    p = m.params
    try:
        slot = parse_slot(p["slot"])
    except ValueError as exc:
        m.fail(str(exc), code="usage")
    address = m.targets()
    if p["action"] == "heal":
        if slot not in (None, "all"):
            m.fail("action=heal works on the whole block: omit slot or give slot=all",
                   code="usage")
        if p["force"]:
            m.fail("action=heal is never forced: force=true is not accepted with it "
                   "(force_refused enables forced actions on the slots heal refuses)",
                   code="usage")
        if address is None:
            heal_all(m)
        result = m.call(m.engine.heal, address, repair=p["repair"], dry_run=m.check_mode,
                        force_refused=p["force_refused"])
    else:
        if address is None:
            m.fail("all=true is accepted with action=heal only; slot actions need a name",
                   code="usage")
        if p["repair"] or p["force_refused"]:
            m.fail("%s=true is only accepted with action=heal%s"
                   % (("repair", " (or use pylabhub.recovery.datablock_validate)")
                      if p["repair"] else ("force_refused", "")), code="usage")
        result = m.call(m.engine.recover, address, slot, p["action"], force=p["force"],
                        dry_run=m.check_mode)
    m.record(result)
    problems = problem_messages(result)
    if problems or not result.get("ok", True):
        m.fail("%s: %s" % (result["block"]["address"], "; ".join(problems) or "not ok"),
               changed=result.get("changed"), recovery=result,
               code="holder-alive" if result.get("refused") else "failed")
    m.exit(changed=result.get("changed"), msg=summary_msg(result), recovery=result)


def heal_all(m):
    """action=heal, all=true: every block in one engine call; fails like one block would,
    naming each block that refused or failed."""
    summary = m.each("heal", "recovery", repair=m.params["repair"],
                     force_refused=m.params["force_refused"])
    problems = ["%s: %s" % (e["address"], e["error"]["message"])
                for e in summary["blocks"] if e["error"]]
    problems += ["%s: %s" % (e["address"], "; ".join(problem_messages(e["recovery"])))
                 for e in summary["blocks"] if e["recovery"] and problem_messages(e["recovery"])]
    if problems:
        m.fail("%d block(s) refused or failed: %s" % (len(problems), "; ".join(problems)),
               changed=summary["changed"], blocks=summary["blocks"],
               healthy=summary["healthy"],
               code="holder-alive" if any(e["recovery"] and e["recovery"]["refused"]
                                          for e in summary["blocks"]) else "failed")
    m.exit(changed=summary["changed"], blocks=summary["blocks"], healthy=summary["healthy"])


if __name__ == "__main__":
    main()
