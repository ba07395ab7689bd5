# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""datablock_undo after datablock_recover action=heal (issue 16): check mode predicts
and writes nothing, the diff names the words, the real run gives back every byte, the
results carry the audit lines, and a word changed since fails the task naming it."""

from __future__ import annotations

from ansible_collections.pylabhub.recovery.plugins.modules import (
    datablock_recover, datablock_undo)
from ansible_collections.pylabhub.recovery.tests.crashlab import path_of


def _bytes(name):
    with open(path_of(name), "rb") as f:
        return f.read()


def test_heal_then_undo_check_mode_and_real(run, lab, name, tmp_path):
    lab.stuck_writer(name)
    original = _bytes(name)
    record = {"snapshot_dir": str(tmp_path / "s"), "audit_log": str(tmp_path / "a.jsonl")}
    healed = run(datablock_recover, dict(name=name, action="heal", **record))
    assert not healed.failed and healed["changed"], healed
    snap = healed["recovery"]["snapshot"]["id"]
    assert healed["audit"][0]["snapshot"] == snap and healed["audit"][0]["operation"] == "heal"
    after_heal = _bytes(name)

    checked = run(datablock_undo, dict(snapshot_id=snap, **record), check_mode=True, diff=True)
    assert not checked.failed and checked["changed"] and "would restore" in checked["msg"]
    assert "write_lock" in checked["diff"]["before"] + checked["diff"]["after"]
    assert _bytes(name) == after_heal and "audit" not in checked.result

    undone = run(datablock_undo, dict(snapshot_id=snap, **record), diff=True)
    assert not undone.failed and undone["changed"] and "restored" in undone["msg"], undone
    assert undone["diff"] == checked["diff"]
    assert _bytes(name) == original
    assert undone["audit"][0]["undo_of"] == snap

    again = run(datablock_undo, dict(snapshot_id=snap, **record))
    assert again.failed and again["code"] == "undo-refused", again
    assert _bytes(name) == original


def test_snapshot_false_writes_none(run, lab, name, tmp_path):
    lab.stuck_writer(name)
    out = run(datablock_recover, dict(name=name, action="heal", snapshot=False,
                                      snapshot_dir=str(tmp_path / "s")))
    assert not out.failed and out["changed"] and out["recovery"]["snapshot"] is None
    assert not (tmp_path / "s").exists()
