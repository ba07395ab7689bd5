#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: datablock_info
short_description: List the pylabhub DataBlocks on a host, with a health summary each
version_added: 0.1.0
description:
  - Finds every pylabhub DataBlock 1.0 on the managed host - named segments in
    C(/dev/shm) and memfd-backed blocks held open by processes (addressed as
    C(memfd:<pid>:<fd>)) - reading at most each candidate's 4096-byte header.
  - For each block adds a health summary from the engine's diagnosis (and, with
    O(validate=true), from a read-only validation). An error on one block (for example
    permission denied, or a header the engine refuses) is reported in that block's entry
    and does not fail the task.
  - Never changes anything; C(changed) is always false.
author:
  - pylabhub maintainers (!UNKNOWN)
options:
  pattern:
    description:
      - Shell-style pattern (C(fnmatch), case-sensitive) on the block's name or address,
        for example V(sensor_*) or V(memfd:*).
      - All blocks when omitted.
    type: str
  diagnose:
    description:
      - Diagnose each block for RV(blocks[].health). With V(false) only what the header
        says is listed (faster on hosts with very many blocks).
    type: bool
    default: true
  validate:
    description:
      - Also validate each block read-only (header, state sanity and every committed
        slot's checksum recomputed from the data) for C(valid) in RV(blocks[].health). Hashes
        every committed slot, so it costs time proportional to the blocks' size.
    type: bool
    default: false
extends_documentation_fragment:
  - pylabhub.recovery.common
  - pylabhub.recovery.common.budget
  - pylabhub.recovery.common.read_only
  - pylabhub.recovery.dependencies
attributes:
  info_module:
    description: This module returns information and never changes anything.
    support: full
seealso:
  - module: pylabhub.recovery.datablock_diagnose
  - module: pylabhub.recovery.datablock_validate
'''

EXAMPLES = r'''
- name: List every block with its health
  pylabhub.recovery.datablock_info:
  register: found

- name: Show the unhealthy ones
  ansible.builtin.debug:
    msg: "{{ found.blocks | rejectattr('health.healthy') | map(attribute='address') | list }}"

- name: Only the sensor blocks, with checksums verified
  pylabhub.recovery.datablock_info:
    pattern: "sensor_*"
    validate: true
'''

RETURN = r'''
blocks:
  description:
    - One entry per block found, sorted by address. Keys from discovery - C(address),
      C(kind) (V(shm) or V(memfd)), C(path), C(name), C(size), C(inode), C(owner_uid),
      C(mode), C(status) (V(ok) or the first header problem's code), C(problems),
      C(holders) (pids holding a memfd, null for shm), C(capacity), C(stride),
      C(flex_size), C(policy), C(consumer_sync), C(checksum_policy), C(hub_name),
      C(hub_uid), C(producer_name), C(producer_uid), C(has_evidence), C(producer_pid),
      C(producer_verdict), C(producer_alive) - plus RV(blocks[].health).
  returned: always
  type: list
  elements: dict
  contains:
    address:
      description: The address to give other modules as O(pylabhub.recovery.datablock_recover#module:name).
      type: str
      sample: my_datablock
    status:
      description: V(ok), or the code of the first header problem (for example V(unsupported-layout)).
      type: str
      sample: ok
    health:
      description:
        - The health summary. C(status) is the block's health word by the one rule that
          diagnose, validate and heal share (V(healthy), V(degraded), V(suspect),
          V(stuck), V(corrupt)); with O(validate=true) it is validation's, which also
          counts checksum errors. C(healthy) is C(status) == V(healthy) (with
          O(validate=true) it also requires C(valid)); both null when the block could not
          be diagnosed (see C(error)) or with O(diagnose=false) and O(validate=false).
        - C(stuck_slots), C(suspect_slots), C(findings), C(dead_consumers) and C(slots)
          (the stuck and suspect slots explained as RV(pylabhub.recovery.datablock_diagnose#module:diagnosis.slots)
          explains them - C(index), C(state), C(write_lock), C(reader_count), C(reason),
          C(action), C(next) and more) come from the diagnosis; C(valid) and
          C(validation_findings) from the validation (null without O(validate=true));
          C(error) is C(code)/C(message) of the first error met, or null.
      type: dict
      sample: {"healthy": false, "status": "stuck", "stuck_slots": [0], "suspect_slots": [],
               "dead_consumers": 0, "slots": [{"index": 0, "state": "WRITING", "is_stuck": true,
                                               "reason": "write lock held by dead pid 16709 (WRITING)",
                                               "action": "release_writer"}],
               "findings": [{"code": "dead-producer", "severity": "info",
                             "message": "producer pid 16709 is dead: committed data stays readable; a new producer may attach"}],
               "valid": null, "validation_findings": null, "error": null}
  sample: [{"address": "my_datablock", "kind": "shm", "path": "/dev/shm/my_datablock",
            "name": "my_datablock", "size": 24576, "inode": 2476, "owner_uid": 1000,
            "mode": "0600", "status": "ok", "problems": [], "holders": null,
            "capacity": 4, "stride": 4096, "flex_size": 0, "policy": "RING_BUFFER",
            "consumer_sync": "LATEST_ONLY", "checksum_policy": "ENFORCED",
            "hub_name": "", "hub_uid": "", "producer_name": "", "producer_uid": "",
            "has_evidence": true, "producer_pid": 16709,
            "producer_verdict": {"pid": 16709, "state": "dead",
                                 "evidence": ["kill(16709, 0): ESRCH (no such process)"]},
            "producer_alive": false,
            "health": {"healthy": false, "status": "stuck", "stuck_slots": [0],
                       "suspect_slots": [], "slots": [],
                       "dead_consumers": 0, "findings": [], "valid": null,
                       "validation_findings": null, "error": null}}]
unreadable:
  description:
    - What the listing could not read - C(count), C(by_reason) (reason to count, for example
      V(permission denied)) and C(entries) (C(path) and C(reason) each) - C(/dev/shm)
      entries and other users' C(/proc/<pid>/fd) tables. Blocks there are not in
      RV(blocks); run as root (C(become)) or as their owner to see them.
  returned: always
  type: dict
  sample: {"count": 1, "by_reason": {"permission denied": 1},
           "entries": [{"path": "/dev/shm/private_block", "reason": "permission denied"}]}
atomics:
  description: Whether this host can change blocks atomically (C(available)) and which library provides it, or why none does (C(provider)).
  returned: always
  type: dict
  sample: {"available": true, "provider": "libatomic.so.1"}
'''

from ansible_collections.pylabhub.recovery.plugins.module_utils.ansible_adapter import (
    DataBlockModule, argument_spec,
)


def main():
    m = DataBlockModule(argument_spec("pattern", "max_bytes",
                                      diagnose=dict(type="bool", default=True),
                                      validate=dict(type="bool", default=False)))
    found = m.call(m.engine.scan, m.params["pattern"])
    for entry in found["blocks"]:
        entry["health"] = m.call(m.engine.examine, entry["address"],
                                 diagnosis=m.params["diagnose"],
                                 validation=m.params["validate"])
    m.exit(changed=False, blocks=found["blocks"], unreadable=found["unreadable"],
           atomics=m.engine.atomics())


if __name__ == "__main__":
    main()
