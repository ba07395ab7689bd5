"""The API's before-images and undo (issue 16): ``heal`` returns its snapshot id,
``undo`` puts the block back byte for byte, ``snapshots`` lists, and a field changed
since raises :class:`UndoRefused` with nothing changed."""

from __future__ import annotations

import os

import pytest

from pylabhub import recovery


def _bytes(name):
    with open(os.path.join("/dev/shm", name), "rb") as f:
        return f.read()


def test_heal_then_undo(crashes, names, tmp_path):
    name = names()
    crashes.zombie_readers(name)
    original = _bytes(name)
    r = recovery.heal(name, snapshot_dir=str(tmp_path))
    assert r["changed"] and r["snapshot"]["id"] and r["audit"]["snapshot"] == r["snapshot"]["id"]
    assert [s["id"] for s in recovery.snapshots(str(tmp_path))["snapshots"]] == [
        r["snapshot"]["id"]]
    undone = recovery.undo(r["snapshot"]["id"], snapshot_dir=str(tmp_path))
    assert undone["changed"] and _bytes(name) == original
    assert undone["snapshot"]["id"] in {s["id"] for s in
                                        recovery.snapshots(str(tmp_path))["snapshots"]}


def test_undo_refused_when_a_word_moved(crashes, names, tmp_path):
    name = names()
    crashes.stuck_writer(name)
    r = recovery.recover(name, 0, "release_writer", snapshot_dir=str(tmp_path))
    block = recovery.open_block(name, writable=True)
    try:                                   # the recovery counter moved since (a direct CAS)
        from ansible_collections.pylabhub.recovery.plugins.module_utils import _layout as L
        fld = L.HEADER["recovery_actions_count"]
        seen = block.get(fld)
        assert block.cas(fld, seen, seen + 1)[0]
    finally:
        block.close()
    now = _bytes(name)
    with pytest.raises(recovery.UndoRefused) as err:
        recovery.undo(r["snapshot"]["id"], snapshot_dir=str(tmp_path))
    assert "header.recovery_actions_count" in str(err.value)
    assert err.value.exit_code == recovery.EXIT_CONCURRENT
    assert _bytes(name) == now
