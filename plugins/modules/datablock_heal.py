#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: datablock_heal
short_description: Heal every pylabhub DataBlock on a host by policy, and report
version_added: 0.2.0
description:
  - The work of the role C(pylabhub.recovery.datablock_recovery) as one task - one module
    call per host - M(pylabhub.recovery.datablock_recover) with
    O(pylabhub.recovery.datablock_recover#module:all=true) and
    O(pylabhub.recovery.datablock_recover#module:action=heal) on the managed host, the
    forced actions O(force) enables for this host included, and the host's recovery
    report built on the controller (the filter P(pylabhub.recovery.recovery_report#filter)).
  - The task returns the report, so C(register) keeps it - also when the host fails. A
    refusal, corruption left unrepaired or a step that failed is in the report, not a
    failure; a block that could not be healed (an engine error) fails the task after the
    report is built.
  - An action plugin (it runs on the controller and calls the module), so use its full
    name; the short-name setup (C(datablock-admin ansible-setup)) covers the modules only.
author:
  - pylabhub maintainers (!UNKNOWN)
options:
  pattern:
    description:
      - Shell-style pattern (C(fnmatch)) on the block's name or address; only the matching
        blocks are healed. Every block when omitted.
    type: str
  repair:
    description:
      - Re-bless the checksum of C(COMMITTED) slots whose stored checksum does not match
        their data (see O(pylabhub.recovery.datablock_recover#module:repair)).
    type: bool
    default: false
  force:
    description:
      - The forced actions an operator enables, per block and slot (and optionally host).
        Those for this host become
        O(pylabhub.recovery.datablock_recover#module:force_refused) - used only for a slot
        heal refused on this host.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The block's address, as reported.
        type: str
        required: true
      slot:
        description: The slot index, or V(all) for every refused slot of the block.
        type: raw
        required: true
      action:
        description: The forced action (V(release_writer), V(release_readers), V(force_reset)).
        type: str
        required: true
      host:
        description: Only on this inventory host (C(inventory_hostname)); every host when omitted.
        type: str
      reason:
        description: Why the operator forces it; copied into the report.
        type: str
extends_documentation_fragment:
  - pylabhub.recovery.common
  - pylabhub.recovery.dependencies
attributes:
  action:
    description: Runs on the controller, and M(pylabhub.recovery.datablock_recover) on the host.
    support: full
  check_mode:
    description: The module's exact dry run; the report says what a real run would do.
    support: full
  diff_mode:
    description: Each touched slot, consumer entry and header field, before and after.
    support: full
seealso:
  - module: pylabhub.recovery.datablock_recover
'''

EXAMPLES = r'''
- name: Heal every block of every host, forcing one slot an operator checked
  pylabhub.recovery.datablock_heal:
    repair: false
    force:
      - {name: sensor_block, slot: 3, action: release_writer, host: lab-02, reason: "INC-123"}
  register: report

- name: What is left
  ansible.builtin.debug:
    msg: "{{ report.unhealthy }}"
'''

RETURN = r'''
audit:
  description:
    - The audit line of each real run on a block (as M(pylabhub.recovery.datablock_recover)
      returns them), for the controller (the P(pylabhub.recovery.fleet_summary#callback)
      report file lists them); see docs/audit-and-undo.md.
  returned: when a real run (not check mode) acted on a block
  type: list
  elements: dict
  sample: [{"operation": "heal", "snapshot": "20261201T031200.000000Z-heal-4242-0a1b2c3d"}]
host:
  description: The inventory host.
  returned: always
  type: str
  sample: lab-01
check_mode:
  description: Whether the heal ran in check mode.
  returned: always
  type: bool
  sample: false
allow_repair:
  description: O(repair), as given.
  returned: always
  type: bool
  sample: false
healthy:
  description: Every block healthy afterwards - nothing refused, no corruption left, no step failed, no error.
  returned: always
  type: bool
  sample: true
unhealthy:
  description: The addresses of the blocks not healthy.
  returned: always
  type: list
  elements: str
  sample: []
changed_blocks:
  description: The addresses of the blocks that changed (or would, in check mode).
  returned: always
  type: list
  elements: str
  sample: [sensor_block]
errors:
  description: The addresses of the blocks that could not be healed.
  returned: always
  type: list
  elements: str
  sample: []
blocks:
  description:
    - One entry per block, as the role C(pylabhub.recovery.datablock_recovery) documents
      its report - C(address), C(changed), C(healthy), C(released), C(cleaned),
      C(reblessed), C(refused), C(unrepaired), C(failed), C(forced), C(error), C(skipped),
      C(after) - and C(recovery), the engine's heal result for the block (as
      RV(pylabhub.recovery.datablock_recover#module:recovery)).
  returned: always
  type: list
  elements: dict
  sample: [{"address": "sensor_block", "changed": true, "healthy": true,
            "released": ["slot 3: released the write lock of dead pid 4242 (WRITING → FREE)"],
            "cleaned": 0, "reblessed": [], "refused": [], "unrepaired": [], "failed": [],
            "forced": [], "error": null, "skipped": null}]
'''
