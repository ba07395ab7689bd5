"""Live and stopped holders are refused (bytes untouched) unless forced; readers are
released only as far as they are provably dead."""

from __future__ import annotations

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E

from .helpers import (COMMITTED, FREE, WRITING, complete_scope, file_bytes, image,
                      prove_works, reader_program, writer_program)


def live_writer(lab, evidence=True, stopped=False):
    """A block whose slot is WRITING under a live (or SIGSTOPped) producer child."""
    name = lab.create(capacity=4, evidence=evidence, commits=5)
    w = lab.child(writer_program, name, 0, "acquired")
    slot = w.recv()["index"]
    if stopped:
        w.stop()
    return name, slot, w


@pytest.mark.parametrize("evidence", [True, False], ids=["evidence", "plain"])
@pytest.mark.parametrize("stopped", [False, True], ids=["live", "sigstopped"])
def test_holder_refused_bytes_identical(lab, stopped, evidence):
    name, s, w = live_writer(lab, evidence, stopped)
    verdict = "suspect-hung" if stopped else "alive"
    assert image(name).slot(s)["lock"] == w.pid
    before = file_bytes(name)
    for action in ("release_writer", "force_reset"):
        for dry_run in (False, True):
            result = E.recover(name, s, action, dry_run=dry_run)
            assert result["result"] == "UNSAFE" and result["ok"] is False
            assert result["changed"] is False and result["changes"] == []
            (refused,) = result["refused"]
            assert refused["holder"]["pid"] == w.pid and refused["holder"]["state"] == verdict
            assert "verdict %s" % verdict in refused["message"]
    result = E.recover(name, "all", "release_writer")
    assert not result["ok"] and [o["slot"] for o in result["refused"]] == [s]
    healed = E.heal(name)
    assert healed["changed"] is False
    if stopped:       # a hung holder is reported for an operator to decide
        assert [o["slot"] for o in healed["refused"]] == [s] and healed["ok"] is False
        assert not healed["healthy"]
        assert E.diagnose(name)["suspect_slots"] == [s]
    else:             # a live holder is simply not stuck
        assert healed["ok"] and not healed["refused"]
    assert E.cleanup(name)["changed"] is False
    assert file_bytes(name) == before


@pytest.mark.parametrize("stopped", [False, True], ids=["live", "sigstopped"])
def test_forced_release_of_live_holder_warns(lab, stopped):
    name, s, w = live_writer(lab, True, stopped)
    result = E.recover(name, s, "release_writer", force=True)
    assert result["ok"] and result["result"] == "SUCCESS" and result["changed"]
    assert len(result["warnings"]) == 1
    assert result["warnings"][0].startswith("FORCED") and str(w.pid) in result["warnings"][0]
    assert result["outcomes"][0]["warnings"] == result["warnings"]
    slot = image(name).slot(s)
    assert (slot["lock"], slot["state"]) == (0, FREE)
    w.kill()
    prove_works(lab, name, 4)


# -- release_readers ----------------------------------------------------------------------
def block_with_readers(lab, evidence, dead=2, live=0, producer_alive=True, slot=2):
    """4-slot block, ``dead`` killed readers and ``live`` live readers inside ``slot``."""
    name = lab.create(capacity=4, evidence=evidence, commits=4)
    producer = None
    if producer_alive:
        producer = lab.child(writer_program, name, 0, "idle")
        producer.recv()
    readers = []
    for dummy in range(dead + live):
        r = lab.child(reader_program, name, slot)
        assert r.recv()["index"] == slot
        readers.append(r)
    for r in readers[:dead]:
        r.kill()
    assert image(name).slot(slot)["readers"] == dead + live
    return name, producer, readers[dead:]


def test_release_readers_of_dead_consumers_without_force(lab):
    """Readers of dead consumers next to a live producer that is not waiting on the slot.
    The reader rule (issue 10 item 2) cannot tell that producer from an unregistered
    reader, so nothing is released without force while it lives (before: the dead
    consumers' "reading" attribution released them). Once it is gone, nobody else has
    the block open and both readers are released without force."""
    name, producer, unused_readers = block_with_readers(lab, True, dead=2, producer_alive=True)
    result = E.recover(name, 2, "release_readers")
    assert result["result"] == "UNSAFE" and not result["changed"], result
    assert "pid %d (alive)" % producer.pid in result["refused"][0]["message"]
    assert image(name).slot(2)["readers"] == 2
    producer.kill()
    result = E.recover(name, 2, "release_readers")
    assert result["ok"] and result["result"] == "SUCCESS" and not result["warnings"]
    img = image(name)
    assert img.slot(2)["readers"] == 0 and img.slot(2)["state"] == COMMITTED
    assert E.recover(name, 2, "release_readers")["result"] == "NOT_STUCK"


def test_release_readers_keeps_live_share(lab):
    name, producer, (live,) = block_with_readers(lab, True, dead=1, live=1)
    # The live producer (not waiting on slot 2, no consumer entry) could be a reader
    # itself: nothing is released without force while it lives (the reader rule).
    result = E.recover(name, 2, "release_readers")
    assert result["result"] == "UNSAFE" and not result["changed"], result
    assert "pid %d (alive)" % producer.pid in result["refused"][0]["message"]
    producer.kill()
    if not complete_scope(name):
        # partial scope: an unseen process could be inside, nothing is released without
        # force; the live reader's trusted evidence still explains one of the two
        result = E.recover(name, 2, "release_readers")
        assert result["result"] == "UNSAFE" and not result["changed"], result
        assert "pid %d (alive)" % live.pid in result["refused"][0]["message"]
        live.kill()
        result = E.recover(name, 2, "release_readers")      # nobody else: all released
        assert result["ok"] and image(name).slot(2)["readers"] == 0
        return
    diag = E.diagnose(name, 2)["slots"][0]
    assert diag["readers"]["provably_dead"] == 1 and diag["readers"]["may_be_live"] == 1
    result = E.recover(name, 2, "release_readers")
    assert result["ok"] and result["result"] == "SUCCESS"
    assert "1 reader may be live and stays counted" in result["outcomes"][0]["message"]
    assert image(name).slot(2)["readers"] == 1
    # nothing more can be proved dead: refused, and the live reader's count survives
    for action in ("release_readers", "force_reset"):
        again = E.recover(name, 2, action)
        assert again["result"] == "UNSAFE" and not again["changed"]
        assert "pid %d" % live.pid in again["refused"][0]["message"]
    assert image(name).slot(2)["readers"] == 1
    healed = E.heal(name)
    assert image(name).slot(2)["readers"] == 1 and healed["ok"]
    live.kill()
    result = E.recover(name, 2, "release_readers")
    assert result["ok"] and image(name).slot(2)["readers"] == 0


def test_release_readers_no_evidence_live_producer_refused(lab):
    name, producer, unused_readers = block_with_readers(lab, False, dead=2, producer_alive=True)
    before = file_bytes(name)
    result = E.recover(name, 2, "release_readers")
    assert result["result"] == "UNSAFE" and not result["ok"] and not result["changed"]
    assert "pid %d (alive)" % producer.pid in result["refused"][0]["message"]
    assert file_bytes(name) == before
    forced = E.recover(name, 2, "release_readers", force=True)
    assert forced["ok"] and forced["warnings"] and image(name).slot(2)["readers"] == 0


@pytest.mark.parametrize("evidence", [True, False], ids=["evidence", "plain"])
def test_release_readers_nobody_alive(lab, evidence):
    name, unused_producer, unused_readers = block_with_readers(lab, evidence, dead=3, producer_alive=False)
    result = E.recover(name, 2, "release_readers")
    assert result["ok"] and result["result"] == "SUCCESS" and not result["warnings"]
    assert image(name).slot(2)["readers"] == 0 and image(name).slot(2)["state"] == COMMITTED


def test_live_writer_blocks_nothing_else(lab):
    """A refusal on one slot does not stop 'all' from releasing another slot's dead writer."""
    name, s, w = live_writer(lab, True)
    other = (s + 1) % 4
    fd_path = "/dev/shm/" + name
    with open(fd_path, "r+b") as f:
        f.seek(4096 + 64 * other)
        f.write((2147483647).to_bytes(8, "little"))
        f.seek(4096 + 64 * other + 12)
        f.write(bytes([WRITING]))
    result = E.recover(name, "all", "release_writer")
    by_slot = {o["slot"]: o["result"] for o in result["outcomes"]}
    assert by_slot[s] == "UNSAFE" and by_slot[other] == "SUCCESS"
    assert result["result"] == "UNSAFE" and not result["ok"] and result["changed"]
    assert image(name).slot(s)["lock"] == w.pid and image(name).slot(other)["lock"] == 0
