#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: datablock_validate
short_description: Validate pylabhub DataBlocks and optionally re-bless checksums
version_added: 0.1.0
description:
  - Validates one block (O(name)) or every block on the host (O(all=true)) - the header
    (magic, version, layout hash, layout checksum, geometry, size), state sanity (slot
    states, locks and reader counts against states, consumer count, indexes) and every
    committed slot's and the flexible zone's checksum, recomputed from the data.
  - Checksums are judged as pylabhub's readers of the block's checksum policy judge them -
    under C(ENFORCED) a wrong or missing checksum is an error (a wrong flex-zone checksum
    makes every read fail); under C(MANUAL) the producer stamps only some slots, so a
    mismatch is C(info) (unverifiable); under C(NONE) nothing is checked.
  - Without O(repair) nothing is written. With O(repair=true), and only under the
    C(ENFORCED) policy, C(COMMITTED) slots whose checksum is wrong or missing get a new
    checksum (each under the recovery's own write lock), and so does the flexible zone
    once its producer is dead; nothing else is ever changed. Under another policy repair
    writes no checksum and the findings say so.
  - B(Corruption fails the task by default.) With O(fail_on_corruption=true) (the
    default) the task fails when an error-level finding remains that was not repaired -
    corruption is a finding an operator must see, and a play should not carry on as if
    the data were sound. With O(fail_on_corruption=false) the task succeeds and reports
    RV(valid=false), for reporting plays that collect the state of a fleet.
  - Warning-level findings (for example an orphaned slot or a consumer count mismatch)
    never fail the task; they are for M(pylabhub.recovery.datablock_recover) and
    M(pylabhub.recovery.datablock_cleanup).
  - C(changed) is true exactly when a checksum was re-blessed (in check mode, would be).
author:
  - pylabhub maintainers (!UNKNOWN)
options:
  repair:
    description:
      - Re-bless the checksum of every C(COMMITTED) slot (and of the flexible zone) whose
        stored checksum is wrong or missing, under the C(ENFORCED) policy only. The data
        itself is never changed (it cannot be restored), so re-blessing declares the current
        data to be the truth; only do it when that is right (for example after a known
        torn write was discarded by the producer).
    type: bool
    default: false
  fail_on_corruption:
    description:
      - Fail the task when an error-level finding is left unrepaired (see above).
      - With V(false) the task succeeds and RV(valid) tells.
    type: bool
    default: true
extends_documentation_fragment:
  - pylabhub.recovery.common
  - pylabhub.recovery.common.budget
  - pylabhub.recovery.common.name_or_all
  - pylabhub.recovery.common.mutating
  - pylabhub.recovery.common.record
  - pylabhub.recovery.dependencies
notes:
  - Blocks with an unsound header cannot be attached for recovery, but are validated
    (their header problems are findings); so O(all=true) covers every block found.
  - Validation hashes every committed slot (large zero-copy views, several threads), so
    it costs time in proportion to the size of the blocks.
seealso:
  - module: pylabhub.recovery.datablock_info
  - module: pylabhub.recovery.datablock_recover
'''

EXAMPLES = r'''
- name: Validate a block; fail when it is corrupt
  pylabhub.recovery.datablock_validate:
    name: my_datablock

- name: Report the corrupt blocks of the fleet without failing
  pylabhub.recovery.datablock_validate:
    all: true
    fail_on_corruption: false
  register: checked

- name: List them
  ansible.builtin.debug:
    msg: "{{ checked.blocks | rejectattr('validation.valid', 'true') | map(attribute='address') | list }}"

- name: Re-bless the checksums of committed slots (preview with --check --diff)
  pylabhub.recovery.datablock_validate:
    name: my_datablock
    repair: true
'''

RETURN = r'''
valid:
  description: No error-level finding is left unrepaired (on every block, with O(all=true)).
  returned: when validation ran
  type: bool
  sample: true
validation:
  description: The engine's result for O(name) (schema C(pylabhub.recovery/v1)).
  returned: with O(name), when the block could be opened
  type: dict
  contains:
    schema:
      description: Schema id.
      type: str
      sample: pylabhub.recovery/v1
    operation:
      description: Always V(validate).
      type: str
      sample: validate
    block:
      description: Identity and geometry of the block (see M(pylabhub.recovery.datablock_recover)).
      type: dict
      sample: {"address": "my_datablock", "capacity": 4}
    dry_run:
      description: True in check mode.
      type: bool
      sample: false
    changed:
      description: Whether a checksum was re-blessed (or would be, in check mode).
      type: bool
      sample: true
    changes:
      description: Every word or byte range changed (byte ranges as hex), in order.
      type: list
      elements: dict
      sample: [{"target": "slot[1].write_lock", "before": 0, "after": 16528},
               {"target": "slot[1].checksum",
                "before": "fe550be2d2da2f2c2e70a1839f35856e978a038e7ec685552c551a47fb741b4000",
                "after": "a0bc65cb8bfbf4f6337342040457fd776812d9658bb0c3ee6407779b732787b900"},
               {"target": "slot[1].write_lock", "before": 16528, "after": 0}]
    repair:
      description: Whether O(repair) was given.
      type: bool
      sample: true
    ok:
      description: Same as RV(validation.valid).
      type: bool
      sample: true
    valid:
      description: No error-level finding left unrepaired.
      type: bool
      sample: true
    findings:
      description:
        - Each finding - C(code), C(severity) (C(error), C(warning) or C(info)), C(message),
          C(repairable), where (C(slot) or C(field)) and C(repaired) once re-blessed.
      type: list
      elements: dict
      sample: [{"code": "checksum-mismatch", "severity": "error",
                "message": "slot 1: stored checksum fe550be2... but the data hashes to a0bc65cb...",
                "repairable": true, "slot": 1, "repaired": true}]
    reblessed:
      description:
        - Checksums re-blessed - C(target) (C(slot[N].checksum) or C(flexzone_checksum)),
          C(slot) for a slot, C(before) and C(after) as hex.
      type: list
      elements: dict
      sample: [{"target": "slot[1].checksum", "slot": 1,
                "before": "fe550be2d2da2f2c2e70a1839f35856e978a038e7ec685552c551a47fb741b40",
                "after": "a0bc65cb8bfbf4f6337342040457fd776812d9658bb0c3ee6407779b732787b9"}]
    checksum_policy:
      description:
        - The block's checksum policy the checksums were judged by (C(NONE), C(MANUAL),
          C(ENFORCED) or C(UNKNOWN(n))); null when the header is not sound.
      type: str
      sample: ENFORCED
blocks:
  description:
    - With O(all=true), one entry per block found - C(address), C(status) (from
      discovery), C(validation) (the engine result as above, or null), C(error)
      (C(code)/C(message), or null), C(skipped) (always null - validate reports a
      damaged header as findings), C(health) (the health word, null on an error) and
      C(healthy).
  returned: with O(all=true)
  type: list
  elements: dict
  sample: [{"address": "my_datablock", "status": "ok", "validation": {"valid": true},
            "error": null, "skipped": null}]
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
  returned: success with a single O(name) and O(repair=true), and failure
  type: str
  sample: "my_datablock: re-blessed the checksum of slot 1"
code:
  description: Error code of the failure - V(corrupt) for unrepaired corruption, otherwise the engine's (for example V(not-found)).
  returned: failure
  type: str
  sample: corrupt
error:
  description: The structured error of a single-block failure (C(code), C(message), details).
  returned: failure caused by an engine error
  type: dict
  sample: {"code": "not-found", "message": "my_datablock: no such block (/dev/shm/my_datablock does not exist)"}
'''

from ansible_collections.pylabhub.recovery.plugins.module_utils.ansible_adapter import (
    DataBlockModule, argument_spec, summary_msg, unrepaired_message,
)


def main():
    m = DataBlockModule(argument_spec("name", "all", "pattern", "repair", "max_bytes",
                                      "snapshot", "snapshot_dir", "audit_log",
                                      fail_on_corruption=dict(type="bool", default=True)))
    p = m.params
    address = m.targets()
    if address is not None:
        result = m.call(m.engine.validate, address, repair=p["repair"], dry_run=m.check_mode)
        m.record(result)
        valid = bool(result["valid"])
        if not valid and p["fail_on_corruption"]:
            m.fail(unrepaired_message(address, result), changed=result["changed"],
                   validation=result, valid=False, code="corrupt")
        if p["repair"]:
            m.exit(changed=result["changed"], msg=summary_msg(result), validation=result,
                   valid=valid)
        m.exit(changed=result["changed"], validation=result, valid=valid)

    summary = m.each("validate", "validation", repair=p["repair"])
    entries = summary["blocks"]
    errors = ["%s: %s" % (e["address"], e["error"]["message"]) for e in entries if e["error"]]
    corrupt = [unrepaired_message(e["address"], e["validation"]) for e in entries
               if e["validation"] and not e["validation"]["valid"]]
    valid = not corrupt
    if errors or (corrupt and p["fail_on_corruption"]):
        m.fail("; ".join(errors + (corrupt if p["fail_on_corruption"] else [])),
               changed=summary["changed"], blocks=entries, valid=valid,
               code="corrupt" if corrupt and p["fail_on_corruption"] else "failed")
    m.exit(changed=summary["changed"], blocks=entries, valid=valid)


if __name__ == "__main__":
    main()
