# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """The lists of forced actions an operator enables on the slots a heal refused.

    ``pylabhub.recovery.force.refused``: ``force_refused`` of
    ``pylabhub.recovery.datablock_recover`` (this host's entries).
    ``pylabhub.recovery.force.fleet``: ``force`` of the ``pylabhub.recovery.datablock_heal``
    action (entries for the whole fleet, each optionally naming its host).

    The entry's fields are written in both (a fragment is a literal string) and must read
    the same: tests/unit/plugins/test_force_options.py holds them to each other and to
    the spec, ``FORCE_ENTRY`` in plugins/module_utils/ansible_options.py.
    """

    DOCUMENTATION = r'''
options: {}
'''

    REFUSED = r'''
options:
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
        description:
          - Why the operator forces it; copied into the list of forced actions of the
            result (RV(pylabhub.recovery.datablock_recover#module:recovery.forced)) and of
            the report.
        type: str
        default: ""
'''

    FLEET = r'''
options:
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
        description:
          - Why the operator forces it; copied into the list of forced actions of the
            result (RV(pylabhub.recovery.datablock_recover#module:recovery.forced)) and of
            the report.
        type: str
        default: ""
      host:
        description: Only on this inventory host (C(inventory_hostname)); every host when omitted.
        type: str
'''
