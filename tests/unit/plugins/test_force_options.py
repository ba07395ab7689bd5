# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lists of forced actions: one spec (plugins/module_utils/ansible_options.py), one
documentation (the doc fragment ``pylabhub.recovery.force``), and the role's argument
spec, which is YAML and cannot share either, agree on every entry's fields.

validate-modules compares ``datablock_recover``'s documentation with its spec; the
``datablock_heal`` module file is documentation only (the action plugin runs), so
validate-modules does not, and this test does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.pylabhub.recovery.plugins.action import datablock_heal
from ansible_collections.pylabhub.recovery.plugins.doc_fragments.force import ModuleDocFragment
from ansible_collections.pylabhub.recovery.plugins.module_utils import _contract
from ansible_collections.pylabhub.recovery.plugins.module_utils.ansible_options import (
    FORCE_ENTRY, force_list)

COLLECTION = Path(__file__).resolve().parents[3]
ROLE_SPEC = COLLECTION / "roles" / "datablock_recovery" / "meta" / "argument_specs.yml"


def _fields(options):
    """What a spec or a documentation says of each field that validation uses."""
    return {name: {key: o[key] for key in ("type", "required", "choices", "default")
                   if o.get(key) not in (None, False)}
            for name, o in options.items()}


def _documented(fragment, option):
    return yaml.safe_load(getattr(ModuleDocFragment, fragment))["options"][option]


def test_the_action_takes_the_shared_spec():
    assert datablock_heal.ARGUMENT_SPEC["force"] == force_list(for_fleet=True)
    assert set(force_list(for_fleet=True)["options"]) == set(FORCE_ENTRY) | {"host"}
    assert set(force_list()["options"]) == set(FORCE_ENTRY)


def test_the_actions_offered_are_the_engines():
    assert FORCE_ENTRY["action"]["choices"] == list(_contract.SLOT_ACTIONS)


def test_each_call_gets_its_own_copy():
    spec = force_list()
    spec["options"]["action"]["choices"].append("x")
    spec["options"]["name"]["required"] = False
    assert FORCE_ENTRY["name"]["required"] is True
    assert force_list() != spec


@pytest.mark.parametrize("fragment, option, fleet", [
    ("REFUSED", "force_refused", False), ("FLEET", "force", True)])
def test_the_fragment_documents_the_spec(fragment, option, fleet):
    doc, spec = _documented(fragment, option), force_list(for_fleet=fleet)
    assert _fields({option: doc}) == _fields({option: spec})
    assert doc["elements"] == spec["elements"]
    assert _fields(doc["suboptions"]) == _fields(spec["options"])


def test_both_fragments_document_an_entry_in_the_same_words():
    refused = _documented("REFUSED", "force_refused")["suboptions"]
    fleet = _documented("FLEET", "force")["suboptions"]
    assert fleet.pop("host")["type"] == "str"
    assert fleet == refused


def test_the_role_states_the_same_entry():
    role = yaml.safe_load(ROLE_SPEC.read_text())["argument_specs"]["main"]["options"]
    option = role["datablock_recovery_force"]
    spec = force_list(for_fleet=True)
    assert (option["type"], option["elements"], option["default"]) == (
        spec["type"], spec["elements"], spec["default"])
    assert _fields(option["options"]) == _fields(spec["options"])
