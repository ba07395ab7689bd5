#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: datablock_cleanup
short_description: Clear the entries of dead consumers in pylabhub DataBlocks
version_added: 0.1.0
description:
  - For one block (O(name)) or every block on the host (O(all=true)), clears the
    heartbeat entry of every consumer whose liveness verdict is C(dead) - releasing
    first the readers recovery evidence attributes to it - and then recomputes
    C(active_consumer_count) (and, for C(Sequential_sync) blocks, C(read_index)) from the
    consumers that survive.
  - Live, suspect-hung and unknown consumers are never touched.
  - C(changed) is true exactly when bytes changed (in check mode, when they would).
    Nothing dead is "nothing to do" - C(ok), not changed.
  - With O(all=true), blocks whose header is not sound (discovery status other than
    V(ok), see M(pylabhub.recovery.datablock_info)) are skipped with a warning; an error on any other block fails the task after
    every block was processed, with the results of all of them.
author:
  - pylabhub maintainers (!UNKNOWN)
extends_documentation_fragment:
  - pylabhub.recovery.common
  - pylabhub.recovery.common.budget
  - pylabhub.recovery.common.name_or_all
  - pylabhub.recovery.common.mutating
  - pylabhub.recovery.common.record
  - pylabhub.recovery.dependencies
seealso:
  - module: pylabhub.recovery.datablock_recover
  - module: pylabhub.recovery.datablock_info
'''

EXAMPLES = r'''
- name: Clean up dead consumers of one block
  pylabhub.recovery.datablock_cleanup:
    name: my_datablock

- name: Clean up dead consumers of every block on every host (preview with --check --diff)
  pylabhub.recovery.datablock_cleanup:
    all: true
'''

RETURN = r'''
cleanup:
  description: The engine's result for O(name) (schema C(pylabhub.recovery/v1)).
  returned: with O(name), when the block could be attached
  type: dict
  contains:
    schema:
      description: Schema id.
      type: str
      sample: pylabhub.recovery/v1
    operation:
      description: Always V(cleanup).
      type: str
      sample: cleanup
    block:
      description: Identity and geometry of the block (see M(pylabhub.recovery.datablock_recover)).
      type: dict
      sample: {"address": "my_datablock", "capacity": 4}
    dry_run:
      description: True in check mode.
      type: bool
      sample: false
    changed:
      description: Whether bytes changed (or would, in check mode).
      type: bool
      sample: true
    changes:
      description: Every word or byte range changed (byte ranges as hex), in order.
      type: list
      elements: dict
      sample: [{"target": "consumer[0].consumer_pid", "before": 16533, "after": 16528},
               {"target": "consumer[0].last_heartbeat_ns", "before": 665847071543, "after": 0},
               {"target": "consumer[0].consumer_pid", "before": 16528, "after": 0},
               {"target": "header.active_consumer_count", "before": 1, "after": 0}]
    ok:
      description: False when clearing an entry failed (a live process changed it meanwhile).
      type: bool
      sample: true
    cleaned:
      description: Number of consumer entries cleared.
      type: int
      sample: 1
    outcomes:
      description:
        - Per dead consumer - C(consumer), C(pid), C(result) (V(SUCCESS) or V(FAILED)),
          C(message), C(verdict); and per slot whose readers were released first, an
          outcome as in M(pylabhub.recovery.datablock_recover).
      type: list
      elements: dict
      sample: [{"consumer": 0, "pid": 16533, "result": "SUCCESS",
                "message": "consumer 0 (pid 16533, reader-a): entry cleared; kill(16533, 0): ESRCH (no such process)",
                "verdict": {"pid": 16533, "state": "dead",
                            "evidence": ["kill(16533, 0): ESRCH (no such process)"]}}]
    reconciled:
      description: Header counts recomputed from the surviving consumers (C(field), C(before), C(after)).
      type: list
      elements: dict
      sample: [{"field": "active_consumer_count", "before": 1, "after": 0}]
blocks:
  description:
    - With O(all=true), one entry per block found - C(address), C(status) (from
      discovery), C(cleanup) (the engine result as above, or null), C(error)
      (C(code)/C(message), or null), C(skipped) (why the block was not touched, or
      null), C(health) (null - cleanup does not judge) and C(healthy) (false for an
      error or a skipped block, else null).
  returned: with O(all=true)
  type: list
  elements: dict
  sample: [{"address": "my_datablock", "status": "ok", "cleanup": {"cleaned": 1},
            "error": null, "skipped": null}]
cleaned:
  description: Consumer entries cleared, over all blocks.
  returned: success
  type: int
  sample: 1
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
  sample: "my_datablock: consumer 1 (pid 4712, reader, dead): cleared its entry"
code:
  description: Error code of the failure (for example V(not-found), V(permission), V(failed)).
  returned: failure
  type: str
  sample: not-found
error:
  description: The structured error of a single-block failure (C(code), C(message), details).
  returned: failure caused by an engine error
  type: dict
  sample: {"code": "not-found", "message": "my_datablock: no such block (/dev/shm/my_datablock does not exist)"}
'''

from ansible_collections.pylabhub.recovery.plugins.module_utils.ansible_adapter import (
    DataBlockModule, argument_spec, problem_messages, summary_msg,
)


def main():
    m = DataBlockModule(argument_spec("name", "all", "pattern", "max_bytes", "snapshot",
                                      "snapshot_dir", "audit_log"))
    address = m.targets()
    if address is not None:
        result = m.call(m.engine.cleanup, address, dry_run=m.check_mode)
        m.record(result)
        problems = problem_messages(result)
        if problems or not result.get("ok", True):
            m.fail("%s: %s" % (address, "; ".join(problems) or "not ok"),
                   changed=result["changed"], cleanup=result, code="failed")
        m.exit(changed=result["changed"], msg=summary_msg(result), cleanup=result,
               cleaned=result["cleaned"])

    summary = m.each("cleanup", "cleanup")
    failures = ["%s: %s" % (e["address"], e["error"]["message"]) for e in summary["blocks"]
                if e["error"]]
    failures += ["%s: %s" % (e["address"], "; ".join(problem_messages(e["cleanup"])) or "not ok")
                 for e in summary["blocks"] if e["cleanup"] and not e["cleanup"].get("ok", True)]
    cleaned = sum(int(e["cleanup"]["cleaned"]) for e in summary["blocks"] if e["cleanup"])
    if failures:
        m.fail("%d block(s) failed: %s" % (len(failures), "; ".join(failures)),
               changed=summary["changed"], blocks=summary["blocks"], cleaned=cleaned,
               code="failed")
    m.exit(changed=summary["changed"], blocks=summary["blocks"], cleaned=cleaned)


if __name__ == "__main__":
    main()
