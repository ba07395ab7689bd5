#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: datablock_diagnose
short_description: Explain who holds what in a pylabhub DataBlock, and what to do
version_added: 0.1.0
description:
  - Reads a pylabhub DataBlock 1.0 shared-memory segment and explains, per slot, who holds
    its write lock and readers, the liveness verdict on each holder (with evidence),
    whether the slot is stuck, why, and which recovery action would release it; and, per
    registered consumer, whether it is alive.
  - Read-only; never changes the block. A stuck or unhealthy block does not fail the
    task - test RV(diagnosis.healthy) or RV(diagnosis.stuck_slots).
  - The stuck/releasable judgement is the very one M(pylabhub.recovery.datablock_recover)
    acts on.
author:
  - pylabhub maintainers (!UNKNOWN)
options:
  slot:
    description:
      - Diagnose only this slot (consumers and block-wide findings are still reported).
      - Out of range fails the task with code V(slot-out-of-range).
      - No other slot's data is read; the block's health is still the whole block's.
    type: int
  all_slots:
    description:
      - List every slot in RV(diagnosis.slots), plain ones too.
      - By default only the slots that are not plain are listed (a plain slot is FREE or
        COMMITTED with no write lock, no reader and no writer waiting); every slot is
        counted in RV(diagnosis.slot_counts).
    type: bool
    default: false
extends_documentation_fragment:
  - pylabhub.recovery.common
  - pylabhub.recovery.common.budget
  - pylabhub.recovery.common.name
  - pylabhub.recovery.common.read_only
  - pylabhub.recovery.dependencies
seealso:
  - module: pylabhub.recovery.datablock_info
  - module: pylabhub.recovery.datablock_recover
'''

EXAMPLES = r'''
- name: Diagnose a block
  pylabhub.recovery.datablock_diagnose:
    name: my_datablock
  register: diag

- name: Release what dead writers hold, if diagnose says so
  pylabhub.recovery.datablock_recover:
    name: my_datablock
    slot: "{{ item.index }}"
    action: "{{ item.action }}"
  loop: "{{ diag.diagnosis.slots | selectattr('is_stuck') | list }}"

- name: Look at one slot only
  pylabhub.recovery.datablock_diagnose:
    name: my_datablock
    slot: 2
'''

RETURN = r'''
diagnosis:
  description: The engine's diagnosis (schema C(pylabhub.recovery/v1)).
  returned: success
  type: dict
  contains:
    schema:
      description: Schema id.
      type: str
      sample: pylabhub.recovery/v1
    operation:
      description: Always V(diagnose).
      type: str
      sample: diagnose
    block:
      description: Identity and geometry of the block (see M(pylabhub.recovery.datablock_recover)).
      type: dict
      sample: {"address": "my_datablock", "name": "my_datablock", "path": "/dev/shm/my_datablock",
               "kind": "shm", "size": 24576, "capacity": 4, "stride": 4096, "flex_size": 0,
               "policy": "RING_BUFFER", "consumer_sync": "LATEST_ONLY",
               "checksum_policy": "ENFORCED", "write_index": 5, "commit_index": 3,
               "has_evidence": true}
    healthy:
      description: No stuck slot and no finding worse than C(info).
      type: bool
      sample: false
    stuck_slots:
      description: Indexes of the slots a recovery action would release.
      type: list
      elements: int
      sample: [0]
    suspect_slots:
      description:
        - Indexes of slots locked by a holder that is neither provably dead nor plainly
          alive (suspect-hung, unknown); only a forced action releases them.
      type: list
      elements: int
      sample: []
    slot_counts:
      description:
        - Every slot counted - C(total), C(plain) (FREE or COMMITTED, no lock, no reader,
          no writer waiting), C(listed) (entries in RV(diagnosis.slots)) and the count of
          each state (C(FREE), C(WRITING), C(COMMITTED), C(DRAINING), C(UNKNOWN)).
      type: dict
      sample: {"total": 4, "plain": 3, "listed": 1, "FREE": 0, "WRITING": 1,
               "COMMITTED": 3, "DRAINING": 0, "UNKNOWN": 0}
    slots_listed:
      description:
        - Which slots RV(diagnosis.slots) lists - V(not_plain) (the default), V(all)
          (O(all_slots)) or V(one) (O(slot)).
      type: str
      sample: not_plain
    slots:
      description:
        - One entry per slot listed (see RV(diagnosis.slots_listed)), in slot order -
          C(index), C(state), C(write_lock) (pid or 0),
          C(writer) (verdict or null), C(reader_count), C(readers) (C(attributed),
          C(provably_dead), C(may_be_live)), C(writer_waiting), C(write_generation),
          C(is_stuck), C(suspect), C(stuck_for_s), C(reason) and C(action) (the
          O(pylabhub.recovery.datablock_recover#module:action) that releases it, or null).
      type: list
      elements: dict
      sample: [{"index": 0, "state": "WRITING", "write_lock": 16709,
                "writer": {"pid": 16709, "state": "dead",
                           "evidence": ["kill(16709, 0): ESRCH (no such process)"]},
                "reader_count": 0,
                "readers": {"attributed": [], "provably_dead": 0, "may_be_live": 0},
                "writer_waiting": false, "write_generation": 1, "is_stuck": true,
                "suspect": false, "stuck_for_s": 12.5,
                "reason": "write lock held by dead pid 16709 (WRITING)",
                "action": "release_writer"}]
    consumers:
      description:
        - One entry per registered consumer - C(index), C(pid), C(name), C(uid),
          C(last_seen_s), C(reading_slot), C(verdict) and C(action) (V(cleanup) or null).
      type: list
      elements: dict
      sample: [{"index": 0, "pid": 16711, "name": "reader-a", "uid": "", "last_seen_s": 3.2,
                "reading_slot": null,
                "verdict": {"pid": 16711, "state": "dead",
                            "evidence": ["kill(16711, 0): ESRCH (no such process)"]},
                "action": "cleanup"}]
    producer:
      description: The producer heartbeat's C(pid), C(name), C(uid), C(last_seen_s) and C(verdict).
      type: dict
      sample: {"pid": 16709, "name": "", "uid": "", "last_seen_s": 12.5,
               "verdict": {"pid": 16709, "state": "dead",
                           "evidence": ["kill(16709, 0): ESRCH (no such process)"]}}
    findings:
      description: Block-wide findings, each with C(code), C(severity) (C(info), C(warning), C(error)) and C(message).
      type: list
      elements: dict
      sample: [{"code": "dead-producer", "severity": "info",
                "message": "producer pid 16709 is dead: committed data stays readable; a new producer may attach"}]
code:
  description: Error code of the failure (for example V(not-found), V(slot-out-of-range)).
  returned: failure
  type: str
  sample: not-found
error:
  description: The structured error (C(code), C(message), details).
  returned: failure caused by an engine error
  type: dict
  sample: {"code": "not-found", "message": "my_datablock: no such block (/dev/shm/my_datablock does not exist)"}
'''

from ansible_collections.pylabhub.recovery.plugins.module_utils.ansible_adapter import (
    DataBlockModule, argument_spec,
)


def main():
    m = DataBlockModule(argument_spec("name", "max_bytes", name=dict(required=True),
                                      slot=dict(type="int"),
                                      all_slots=dict(type="bool", default=False)))
    diagnosis = m.call(m.engine.diagnose, m.params["name"], m.params["slot"],
                       all_slots=m.params["all_slots"])
    m.exit(changed=False, diagnosis=diagnosis)


if __name__ == "__main__":
    main()
