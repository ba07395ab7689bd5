# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by a module and the controller-side action plugin, written once.

Here, not in :mod:`ansible_adapter`, because the ``datablock_heal`` action plugin reads
them on the controller, in one worker process per host per task: this file imports
nothing but ``_contract`` (which imports nothing), where ``ansible_adapter`` loads the
whole engine. The options' documentation is its twin, the doc fragment
``pylabhub.recovery.force`` (plugins/doc_fragments/force.py); the role
``datablock_recovery`` states the same entry in its meta/argument_specs.yml (a test
compares them).
"""

from __future__ import annotations

from copy import deepcopy

from ansible_collections.pylabhub.recovery.plugins.module_utils._contract import SLOT_ACTIONS

#: One forced action an operator enables: the block (its address as reported), the slot
#: (an index, or ``all`` for every refused slot of the block), the action, and why.
FORCE_ENTRY = dict(
    name=dict(type="str", required=True),
    slot=dict(type="raw", required=True),
    action=dict(type="str", required=True, choices=list(SLOT_ACTIONS)),
    reason=dict(type="str", default=""),
)

#: What an entry of a fleet-wide list adds: the one inventory host it is for.
FORCE_HOST = dict(host=dict(type="str"))


def force_list(for_fleet: bool = False) -> dict:
    """The spec of a list of forced actions: ``force_refused`` of ``datablock_recover``
    (one host's), or with ``for_fleet`` the ``force`` of the ``datablock_heal`` action,
    whose entries may name a host. A deep copy each call: Ansible fills specs in place."""
    options = deepcopy(FORCE_ENTRY)
    if for_fleet:
        options.update(deepcopy(FORCE_HOST))
    return dict(type="list", elements="dict", default=[], options=options)
