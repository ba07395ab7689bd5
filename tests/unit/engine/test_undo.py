"""Before-images and undo (issue 16): every recovery kind, recovered then undone, gives
back the block byte for byte (whole-file bytes compared); undo after a live change is
refused naming the field and changes nothing; a recovery SIGKILLed mid-way (after a
store, or between its journal line and its store) leaves a journal undo handles; undo
is journaled itself (undo of an undo); dry runs write nothing; a snapshot that cannot be
written refuses the mutation and changes nothing."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _engine as E, _errors as X, _layout as L, _snapshot as S)

from ansible_collections.pylabhub.recovery.tests.support import run_killed_after, stand_in

from .helpers import (
    corrupt, file_bytes, image, poke, publish_in_child, torn_free, wrapped_count)


@pytest.fixture
def snapdir(tmp_path, monkeypatch):
    path = tmp_path / "snapshots"
    monkeypatch.setenv(S.ENV_DIR, str(path))
    monkeypatch.delenv(S.ENV_ENABLED, raising=False)
    return path


KINDS = {
    "release_writer": (lambda lab: lab.crashed("mid_write"),
                       lambda c: E.recover(c.name, c.slot, "release_writer")),
    "release_writer_locked": (lambda lab: lab.crashed("locked"),
                              lambda c: E.recover(c.name, c.slot, "release_writer")),
    "release_readers": (lambda lab: lab.crashed("reader"),
                        lambda c: E.recover(c.name, c.slot, "release_readers")),
    "force_reset": (lambda lab: lab.crashed("deadlock"),
                    lambda c: E.recover(c.name, c.slot, "force_reset")),
    "cleanup": (lambda lab: lab.crashed("consumer"), lambda c: E.cleanup(c.name)),
    "heal_scrub": (lambda lab: lab.crashed("mid_write"), lambda c: E.heal(c.name)),
    "heal_torn_free": (torn_free, E.heal),
    "heal_repair": (corrupt, lambda name: E.heal(name, repair=True)),
}


def _setup(lab, kind):
    make, run = KINDS[kind]
    made = make(lab)
    name = made if isinstance(made, str) else made.name
    return name, (lambda: run(made))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_recover_then_undo_restores_every_byte(lab, snapdir, kind):
    name, run = _setup(lab, kind)
    original = file_bytes(name)
    result = run()
    assert result["changed"], result
    assert file_bytes(name) != original
    snap = result["snapshot"]
    assert snap and os.path.exists(snap["path"])
    assert stat.S_IMODE(os.stat(snap["path"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(snapdir)).st_mode) == 0o700
    loaded = S.load(snap["path"])
    assert loaded["complete"] and loaded["head"]["block"]["address"] == name
    assert loaded["end"]["verdicts"], "the verdicts that justified the run are kept"

    preview = E.undo(snap["id"], dry_run=True)
    assert preview["changed"] and file_bytes(name) != original   # a dry run writes nothing
    undone = E.undo(snap["id"])
    assert undone["changed"] and undone["undo_of"] == snap["id"]
    assert file_bytes(name) == original, "undo gives back the block byte for byte"
    assert [c["target"] for c in preview["changes"]] == [c["target"] for c in undone["changes"]]

    # undo is journaled: undoing the undo puts the recovery's result back
    again = E.undo(undone["snapshot"]["id"])
    assert again["changed"]
    healed_bytes = file_bytes(name)
    E.undo(again["snapshot"]["id"])
    assert file_bytes(name) == original
    assert healed_bytes != original


def test_dry_run_and_nothing_to_do_write_no_snapshot(lab, snapdir):
    crash = lab.crashed("mid_write")
    dry = E.recover(crash.name, crash.slot, "release_writer", dry_run=True)
    assert dry["changed"] and dry["snapshot"] is None and dry["audit"] is None
    assert not snapdir.exists() or not os.listdir(str(snapdir))
    E.recover(crash.name, crash.slot, "release_writer")
    second = E.recover(crash.name, crash.slot, "release_writer")
    assert not second["changed"] and second["snapshot"] is None
    assert len(os.listdir(str(snapdir))) == 1
    assert E.snapshots()["snapshots"][0]["operation"] == "recover"


def test_undo_refused_after_a_live_process_wrote(lab, snapdir):
    """A real producer of ours commits after the release: the slot words the release
    wrote moved; the whole undo is refused, naming a field, and nothing changes."""
    crash = lab.crashed("mid_write")
    result = E.recover(crash.name, crash.slot, "release_writer")
    publish_in_child(lab, crash.name, count=4)
    now = file_bytes(crash.name)
    with pytest.raises(X.UndoRefused) as err:
        E.undo(result["snapshot"]["id"])
    assert "changed since" in err.value.message and "slot[" in err.value.message
    assert err.value.exit_code == 6
    assert file_bytes(crash.name) == now


def test_undo_refused_after_a_direct_cas(lab, snapdir):
    crash = lab.crashed("reader")
    result = E.recover(crash.name, crash.slot, "release_readers")
    block = B.open_block(crash.name, writable=True)
    try:
        fld = B.L.SLOT["reader_count"]
        base = block.slot_base(crash.slot)
        assert block.cas(fld, 0, 1, base)[0]          # a reader came in since
    finally:
        block.close()
    now = file_bytes(crash.name)
    with pytest.raises(X.UndoRefused) as err:
        E.undo(result["snapshot"]["id"])
    assert "slot[%d].reader_count" % crash.slot in err.value.message
    assert file_bytes(crash.name) == now


def test_undo_of_a_recreated_block_is_refused(lab, snapdir):
    crash = lab.crashed("mid_write")
    result = E.recover(crash.name, crash.slot, "release_writer")
    data = file_bytes(crash.name)
    path = os.path.join("/dev/shm", crash.name)
    os.unlink(path)
    with open(path, "wb") as f:                       # same bytes, another inode
        f.write(data)
    with pytest.raises(X.SnapshotMismatch) as err:
        E.undo(result["snapshot"]["id"])
    assert "re-created" in err.value.message and err.value.exit_code == 4
    assert file_bytes(crash.name) == data


def test_snapshot_failure_refuses_the_mutation(lab, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(S.ENV_DIR, str(blocker / "snapshots"))
    crash = lab.crashed("mid_write")
    original = file_bytes(crash.name)
    with pytest.raises(X.SnapshotError) as err:
        E.recover(crash.name, crash.slot, "release_writer")
    assert err.value.exit_code == 8 and "nothing was changed" in err.value.message
    assert file_bytes(crash.name) == original


def test_unsafe_snapshot_directory_is_refused(lab, tmp_path, monkeypatch):
    unsafe = tmp_path / "open"
    unsafe.mkdir()
    os.chmod(str(unsafe), 0o777)
    monkeypatch.setenv(S.ENV_DIR, str(unsafe))
    crash = lab.crashed("mid_write")
    original = file_bytes(crash.name)
    with pytest.raises(X.SnapshotError) as err:
        E.recover(crash.name, crash.slot, "release_writer")
    assert "not safe" in err.value.message
    assert file_bytes(crash.name) == original
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    monkeypatch.setenv(S.ENV_DIR, str(link))
    with pytest.raises(X.SnapshotError):
        E.recover(crash.name, crash.slot, "release_writer")
    assert file_bytes(crash.name) == original


def test_no_snapshot_opt_out(lab, snapdir):
    crash = lab.crashed("mid_write")
    result = E.recover(crash.name, crash.slot, "release_writer", snapshot=False)
    assert result["changed"] and result["snapshot"] is None
    assert not snapdir.exists()


def test_retention_keeps_the_newest(lab, snapdir, monkeypatch):
    monkeypatch.setenv(S.ENV_KEEP, "3")
    ids = []
    for dummy in range(5):
        crash = lab.crashed("locked")
        ids.append(E.recover(crash.name, crash.slot, "release_writer")["snapshot"]["id"])
        time.sleep(0.01)             # distinct mtimes order the files
    kept = sorted(n[:-6] for n in os.listdir(str(snapdir)))
    assert kept == sorted(ids[-3:])


# -- killed mid-way ---------------------------------------------------------------------------
@pytest.mark.parametrize("between", [False, True], ids=["after_store", "before_store"])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_killed_recovery_leaves_a_journal_undo_handles(lab, snapdir, k, between):
    crash = lab.crashed("mid_write")
    original = file_bytes(crash.name)
    assert run_killed_after(k, lambda: E.heal(crash.name), between=between)
    names = os.listdir(str(snapdir))
    assert len(names) == 1
    path = os.path.join(str(snapdir), names[0])
    snap = S.load(path)
    assert not snap["complete"]
    undone = E.undo(path)
    assert undone["complete"] is False
    assert file_bytes(crash.name) == original, "k=%d" % k


def test_journal_lines_are_json_with_identity(lab, snapdir):
    crash = lab.crashed("mid_write")
    result = E.recover(crash.name, crash.slot, "release_writer")
    with open(result["snapshot"]["path"]) as f:
        lines = [json.loads(line) for line in f]
    head = lines[0]
    st = os.stat(os.path.join("/dev/shm", crash.name))
    assert head["block"]["inode"] == st.st_ino and head["block"]["size"] == st.st_size
    assert len(head["block"]["header_digest"]) == 64
    kinds = {line.get("kind") for line in lines[1:-1]}
    assert "word" in kinds and "pages" in kinds
    assert "end" in lines[-1]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_killed_undo_is_undone_by_its_own_journal(lab, snapdir, k):
    """An undo SIGKILLed after its k-th store leaves its own journal: undoing that gives
    back the recovered block byte for byte, and the first snapshot can then be undone."""
    crash = lab.crashed("mid_write")
    original = file_bytes(crash.name)
    first = E.heal(crash.name)["snapshot"]
    recovered = file_bytes(crash.name)
    assert run_killed_after(k, lambda: E.undo(first["id"]))
    partial = [n for n in os.listdir(str(snapdir)) if "-undo-" in n]
    assert len(partial) == 1
    assert not S.load(os.path.join(str(snapdir), partial[0]))["complete"]
    E.undo(partial[0][:-6])
    assert file_bytes(crash.name) == recovered
    E.undo(first["id"])
    assert file_bytes(crash.name) == original


def test_heal_with_forced_actions_is_undone_run_by_run(lab, snapdir):
    """heal with force_refused is several runs (heal, the forced release, heal again),
    each with its before-image: undone newest first, the block is back byte for byte.
    The live writer draining behind the dead reader is paused (SIGSTOP) so that it stores
    nothing meanwhile."""
    crash = lab.crashed("draining_live_writer", evidence=False)
    crash.writer.stop()
    original = file_bytes(crash.name)
    enable = {"name": crash.name, "slot": crash.slot, "action": "release_readers",
              "reason": "test"}
    result = E.heal(crash.name, force_refused=[enable])
    assert result["forced"] and result["forced"][0]["snapshot"], result["forced"]
    assert len(result["snapshots"]) >= 2 and result["forced"][0]["snapshot"] in result[
        "snapshots"]
    assert [a["snapshot"] for a in result["audits"] if a["snapshot"]] == result["snapshots"]
    assert any(a["forced"] for a in result["audits"])
    for snap in reversed(result["snapshots"]):
        E.undo(snap)
    assert file_bytes(crash.name) == original


def test_count_reconcile_undone_byte_for_byte(lab, snapdir):
    """The count reconciliation's store (issue 10 item 3) is journaled like every other:
    a wrapped count set to the registered consumers (0), undone byte for byte. (No
    holder verdict justifies it -- the survey of the entries does -- so the run's end
    line carries none.)"""
    name = wrapped_count(lab)
    original = file_bytes(name)
    result = E.cleanup(name)
    assert result["changed"] and image(name).active_consumers == 0, result["reconciled"]
    snap = S.load(result["snapshot"]["path"])
    assert snap["complete"] and "header.active_consumer_count" in [
        e["target"] for e in snap["entries"]]
    undone = E.undo(result["snapshot"]["id"])
    assert undone["changed"] and file_bytes(name) == original
    assert image(name).active_consumers == 0xFFFFFFFF


def test_read_index_reconcile_and_dead_position_undone_byte_for_byte(lab, snapdir):
    """The read-position stores (issue 12) go through the same before-images: fixture h
    (Sequential_sync) with live stand-ins for the survivor (entry 1) and the producer:
    heal clears dead entry 0 and its read position and raises read_index 5 -> 9 by CAS;
    undo gives the block back byte for byte, and undoing the undo heals it again."""
    name = lab.fixture("h_sequential_sync_dead_reader.bin")
    procs = []
    try:
        for dummy in range(2):
            procs.append(stand_in(name))
        survivor, producer = procs
        poke(name, L.consumer_entry(1) + L.CONSUMER["consumer_pid"].offset,
             survivor.pid.to_bytes(8, "little"))
        poke(name, L.HEADER["producer_heartbeat_pid"].offset, producer.pid.to_bytes(8, "little"))
        original = file_bytes(name)
        healed = E.heal(name)
        assert {"field": "read_index", "before": 5, "after": 8} in \
            healed["cleanup"]["reconciled"], healed["cleanup"]["reconciled"]
        assert image(name).read_index == 8 and image(name).consumer(0)["pid"] == 0
        targets = [e["target"] for e in S.load(healed["snapshot"]["path"])["entries"]]
        assert "header.read_index" in targets and "consumer[0].read_position" in targets
        undone = E.undo(healed["snapshot"]["id"])
        assert undone["changed"] and file_bytes(name) == original
        again = E.undo(undone["snapshot"]["id"])
        assert again["changed"] and image(name).read_index == 8
    finally:
        for p in procs:
            p.kill()
            p.wait()
