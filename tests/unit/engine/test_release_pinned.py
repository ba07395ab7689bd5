"""The release rules pinned where mutation testing found them unpinned
(docs/reliability.md section 8, target ``release``: ``_recover``'s decisions).

Real blocks left in the states a dead or live process leaves (a crash actor, or the
words a killed process leaves, written by hand where no process can be paused there);
each test fails on at least one mutant of the rule it names. The reader decisions that
need a complete kernel scan run on a fleet-lab-like namespace host (at the end)."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
from ansible_collections.pylabhub.recovery.plugins.module_utils import _layout as L

from .helpers import (COMMITTED, DRAINING, FREE, WRITING, assert_untouched, committed_snapshot,
                      complete_scope, file_bytes, image, poke, poke_header, poke_slot, reaped_pid,
                      writer_program)
from .readers_host import run

U64 = (1 << 64) - 1
RECOVERIES = L.HEADER["recovery_actions_count"].offset
NEEDS_NAMESPACES = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                      reason="needs root and unshare(1)")


def targets(result: dict) -> list:
    return [c["target"] for c in result["changes"]]


# -- what a slot becomes: a state word that is no state stays what it is ---------------------
def test_a_state_word_that_is_no_state_is_never_blessed(lab):
    """A dead writer's lock on a slot whose state word reads 7 (no SlotState), and a stray
    writer_waiting on one that reads 9: the lock and the flag are released, the words stay
    7 and 9 -- never COMMITTED (that would make unknown bytes readable) nor FREE -- and
    validate still reports both as errors."""
    name = lab.create(capacity=4, commits=4)
    dead = reaped_pid()
    poke_slot(name, 1, lock=dead, state=7)
    poke_slot(name, 2, state=9, waiting=1)
    for s, state in ((1, 7), (2, 9)):
        out = E.recover(name, s, "release_writer")
        assert out["result"] == "SUCCESS", out
        assert out["outcomes"][0]["message"] == "slot %d: released %s (the slot stays UNKNOWN(%d))" % (
            s, "the write lock of dead pid %d" % dead if s == 1 else "the stray writer_waiting flag",
            state), out
        assert "slot[%d].slot_state" % s not in targets(out), out
        words = image(name).slot(s)
        assert (words["lock"], words["waiting"], words["state"]) == (0, 0, state)
    found = E.validate(name)
    assert not found["valid"]
    assert {f.get("slot") for f in found["findings"] if f["severity"] == "error"} >= {1, 2}


@pytest.mark.parametrize("state", [FREE, COMMITTED], ids=["FREE", "COMMITTED"])
def test_a_stray_writer_waiting_is_cleared_and_the_slot_kept(lab, state):
    """writer_waiting set on an unlocked FREE or COMMITTED slot (a producer killed while
    waiting to drain, after the reader left): release_writer clears the flag alone; the
    state, the data and the checksum stay (a COMMITTED slot stays readable)."""
    name = lab.create(capacity=4, commits=4)
    before = committed_snapshot(name)
    poke_slot(name, 1, state=state, waiting=1)
    out = E.recover(name, 1, "release_writer")
    assert out["result"] == "SUCCESS" and out["changed"], out
    assert "slot[1].writer_waiting" in targets(out), out
    assert "slot[1].slot_state" not in targets(out) and "slot[1].data" not in targets(out), out
    assert out["outcomes"][0]["message"] == (
        "slot 1: released the stray writer_waiting flag (the slot stays %s)"
        % ("FREE" if state == FREE else "COMMITTED")), out
    words = image(name).slot(1)
    assert (words["lock"], words["waiting"], words["state"]) == (0, 0, state)
    assert_untouched(name, before, skip=() if state == COMMITTED else (1,))
    again = E.recover(name, 1, "release_writer")
    assert again["result"] == "NOT_STUCK" and not again["changed"], again


@pytest.mark.parametrize("state,after", [(WRITING, FREE), (DRAINING, COMMITTED)],
                         ids=["WRITING", "DRAINING"])
def test_an_orphaned_slot_with_no_waiter_is_released(lab, state, after):
    """WRITING or DRAINING with no lock and no writer_waiting (the lock was released and
    the process died before its state store): no live writer can move it on, so
    release_writer does (WRITING -> FREE, DRAINING -> COMMITTED, its data kept)."""
    name = lab.create(capacity=4, commits=4)
    before = committed_snapshot(name)
    poke_slot(name, 1, state=state)
    out = E.recover(name, 1, "release_writer")
    assert out["result"] == "SUCCESS", out
    assert out["outcomes"][0]["message"].startswith("slot 1: released the orphaned slot"), out
    assert image(name).slot(1)["state"] == after
    if after == COMMITTED:
        assert_untouched(name, before)


# -- the write_index a dead writer claimed: rolled back only when it is this slot's ----------
@pytest.mark.parametrize("capacity,commit_index", [(4, 1000), (4, U64 - 1), (4, U64), (300, 2058)],
                         ids=["ids-above-256", "commit-before-wrap", "no-commit-yet",
                              "slot-above-256"])
def test_the_claimed_id_is_rolled_back_by_value_and_modulo_2_64(lab, capacity, commit_index):
    """A dead writer holding the slot of the one id claimed after the last commit:
    write_index goes back to commit_index + 1 (mod 2**64) -- with ids and a slot index
    above CPython's cached ints (compared by value, not identity), and across the 2**64
    wrap."""
    name = lab.create(capacity=capacity, commits=4)
    following = (commit_index + 1) & U64
    s = following % capacity
    poke_header(name, write_index=(following + 1) & U64, commit_index=commit_index)
    poke_slot(name, s, lock=reaped_pid(), state=WRITING)
    out = E.recover(name, s, "release_writer")
    assert out["result"] == "SUCCESS", out
    assert "header.write_index" in targets(out), out
    img = image(name)
    assert (img.write_index, img.commit_index) == (following, commit_index)
    assert img.slot(s)["state"] == FREE and img.slot(s)["lock"] == 0


@pytest.mark.parametrize("locked,write_index", [(0, 1002), (3, 1002), (1, 1003), (1, 1000)],
                         ids=["id-of-a-higher-slot", "id-of-a-lower-slot", "two-ids-claimed",
                              "index-behind-the-commit"])
def test_a_claim_that_is_not_this_slots_is_left_alone(lab, locked, write_index):
    """commit_index 1000 (slot 0), so the next id (1001) is slot 1's. A dead writer's
    lock on slot 0 or 3 (the claimed id is another slot's: a live producer may hold it),
    two ids claimed, or a write_index behind the last commit: release_writer releases the
    lock and leaves write_index alone (heal gives ids back by the producer's verdict)."""
    name = lab.create(capacity=4, commits=4)
    poke_header(name, write_index=write_index, commit_index=1000)
    poke_slot(name, locked, lock=reaped_pid(), state=WRITING)
    out = E.recover(name, locked, "release_writer")
    assert out["result"] == "SUCCESS", out
    assert "header.write_index" not in targets(out), out
    assert (image(name).write_index, image(name).slot(locked)["lock"]) == (write_index, 0)


# -- torn bytes: scrubbed only when torn, only when their writer is gone ---------------------
def test_scrub_is_reported_only_when_the_torn_bytes_were_scrubbed(lab):
    """A dead writer killed mid-write (torn bytes): the release scrubs them and says so.
    One killed after its checksum (bytes and checksum agree) or before writing (the old
    bytes under their old checksum): nothing is scrubbed, the bytes stay as they were,
    and the message says nothing of a scrub -- though write_index is rolled back."""
    torn = lab.crashed("mid_write")
    out = E.recover(torn.name, torn.slot, "release_writer")
    assert "slot[%d].data" % torn.slot in targets(out), out
    assert "scrubbed the torn bytes to zeros" in out["outcomes"][0]["message"], out
    for point in ("mid_commit", "acquired"):
        crash = lab.crashed(point)
        s = crash.slot
        img = image(crash.name)
        data, checksum = img.slot_data(s), img.checksum(s)
        out = E.recover(crash.name, s, "release_writer")
        assert out["result"] == "SUCCESS", out
        assert "header.write_index" in targets(out), out
        assert "slot[%d].data" % s not in targets(out), (point, out)
        assert "scrub" not in out["outcomes"][0]["message"], (point, out)
        img = image(crash.name)
        assert (img.slot_data(s), img.checksum(s)) == (data, checksum), point


def test_a_writer_dead_before_writing_a_never_written_slot_leaves_it_as_it_was(lab):
    """A producer killed after its lock CAS on a slot never written (FREE, zeros, no
    checksum: the ring has not wrapped), before it stored WRITING: the lock is released
    and its claimed id given back; the slot's bytes and its (empty) checksum entry are not
    touched -- there is nothing torn in a slot no writer has entered."""
    name = lab.create(capacity=4, commits=1)
    img = image(name)
    entry = img.geo["checksums"] + 33
    assert img.slot(1)["state"] == FREE and not any(img.data[entry:entry + 33])
    poke_header(name, write_index=2, commit_index=0)
    poke_slot(name, 1, lock=reaped_pid())
    before = file_bytes(name)
    out = E.recover(name, 1, "release_writer")
    assert out["result"] == "SUCCESS", out
    assert targets(out)[:3] == ["slot[1].write_lock", "header.write_index",
                                "slot[1].write_lock"], out
    after = file_bytes(name)
    assert after[entry:entry + 33] == before[entry:entry + 33]
    assert image(name).write_index == 1 and image(name).slot(1)["lock"] == 0


@pytest.mark.parametrize("policy", [0, 1], ids=["None", "Manual"])
def test_a_dead_drainer_never_costs_the_committed_data(lab, policy):
    """A writer killed while DRAINING (its slot's reader killed too) under a policy that
    stamps no checksum: the slot holds committed data with no checksum to vouch for it.
    release_writer returns it to COMMITTED with every byte kept -- DRAINING data was
    never touched, so it is never scrubbed."""
    crash = lab.crashed("deadlock")
    name, s = crash.name, crash.slot
    poke_header(name, checksum_policy=policy)
    img = image(name)
    poke(name, img.geo["checksums"] + 33 * s, bytes(33))      # no producer stamped it
    data = image(name).slot_data(s)
    assert any(data) and image(name).slot(s)["state"] == DRAINING
    out = E.recover(name, s, "release_writer")
    assert out["result"] == "SUCCESS", out
    assert "slot[%d].data" % s not in targets(out), out
    img = image(name)
    assert img.slot(s)["state"] == COMMITTED and img.slot_data(s) == data


def test_a_forced_release_leaves_a_live_writers_bytes_to_it(lab):
    """A live producer half-way through writing, its lock released by force: the slot
    becomes FREE but its bytes are not scrubbed (the writer may still be writing them;
    they are its own)."""
    name = lab.create(capacity=4, commits=5)
    w = lab.child(writer_program, name, 0, "mid_write")
    s = w.recv()["index"]
    img = image(name)
    data = img.slot_data(s)
    out = E.recover(name, s, "release_writer", force=True)
    assert out["result"] == "SUCCESS" and out["warnings"], out
    assert "slot[%d].data" % s not in targets(out), out
    assert image(name).slot_data(s) == data
    w.kill()


def test_an_unknown_checksum_policy_leaves_the_checksum_to_the_producer(lab):
    """A dead writer's torn bytes under a checksum_policy word that names no policy (3):
    the bytes are scrubbed, the checksum entry is left as it is -- as under Manual; only
    Enforced has a checksum recovery may write."""
    crash = lab.crashed("mid_write")
    poke_header(crash.name, checksum_policy=3)
    s = crash.slot
    checksum = image(crash.name).checksum(s)
    out = E.recover(crash.name, s, "release_writer")
    assert "slot[%d].data" % s in targets(out), out
    assert "slot[%d].checksum" % s not in targets(out), out
    img = image(crash.name)
    assert img.slot_data(s) == bytes(img.stride) and img.checksum(s) == checksum


# -- upstream bookkeeping: one recovery action per slot released ----------------------------
def test_a_release_counts_one_recovery_action_and_a_dry_run_none(lab):
    crash = lab.crashed("mid_write")
    counted = int.from_bytes(file_bytes(crash.name)[RECOVERIES:RECOVERIES + 8], "little")
    dry = E.recover(crash.name, crash.slot, "release_writer", dry_run=True)
    changes = {c["target"]: c for c in dry["changes"]}
    assert changes["header.recovery_actions_count"]["after"] == counted + 1, dry
    assert image(crash.name).u(RECOVERIES, 8) == counted
    out = E.recover(crash.name, crash.slot, "release_writer")
    assert out["result"] == "SUCCESS", out
    assert image(crash.name).u(RECOVERIES, 8) == counted + 1


# -- refusals say who may be inside, in what scope -----------------------------------------
def test_a_refusal_in_a_partial_scope_says_an_unseen_process_may_be_inside(lab):
    """Readers that no evidence explains: in a partial scope (not root, or a process
    unreadable) nothing is provably gone, and the refusal names the unseen processes; in
    a complete one, only the live openers are named."""
    name = lab.create(capacity=4, commits=4)
    w = lab.child(writer_program, name, 0, "idle")      # a live opener: it could be inside
    w.recv()
    poke_slot(name, 1, readers=2)
    out = E.recover(name, 1, "release_readers")
    assert out["result"] == "UNSAFE", out
    message = out["refused"][0]["message"]
    assert "pid %d (alive)" % w.pid in message, message
    unseen = "any process this partial scan cannot see" in message
    assert unseen == (not complete_scope(name)), message
    w.kill()


@pytest.mark.parametrize("state,waiting,says", [
    (DRAINING, 1, True), (DRAINING, 0, False), (COMMITTED, 1, False), (5, 1, False)],
    ids=["draining-waiting", "draining-not-waiting", "committed-waiting", "no-state"])
def test_a_refusal_says_the_writer_waits_only_when_it_drains(lab, state, waiting, says):
    """Readers refused while a live process holds the slot's lock: "writer pid N waits
    for them" only when the slot is DRAINING and its writer_waiting flag is set."""
    name = lab.create(capacity=4, commits=4)
    w = lab.child(writer_program, name, 0, "idle")      # a live opener: it could be inside
    w.recv()
    poke_slot(name, 1, lock=w.pid, state=state, waiting=waiting, readers=1)
    out = E.recover(name, 1, "release_readers")
    assert out["result"] == "UNSAFE", out
    message = out["refused"][0]["message"]
    assert message.startswith("slot 1: 1 reader, 0 provably gone" if not says else
                              "slot 1: 1 reader, writer pid %d waits for them, 0 provably "
                              "gone" % w.pid), message
    w.kill()


SCENE = """
import subprocess, sys
p = A.Actor(name, [("producer",), ("publish", 2)]).start()
p.wait_point()                        # ids 0 and 1 committed, in slots 0 and 1
p.resume()
p.wait_exit()                         # no producer: only the readers could be inside
live = A.Actor(name, [("consumer", "live"), ("read", 1)], pause="inside").start()
live.wait_point()                     # a live reader of ours inside slot 1 (its evidence) ...
killed_inside("dead", 1, style="cpp")  # ... and a dead one: 2 counted, 1 provably gone
out["live"] = live.pid
out["before"] = words(1)
cli = [sys.executable, "-m", "pylabhub.recovery.cli", "--json", "recover", name,
       "--slot", "1", "--action", "force_reset"]
done = subprocess.run(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
out["cli"] = [done.returncode, done.stdout, done.stderr]
out["after_cli"] = words(1)
out["release"] = E.recover(name, 1, "release_readers")
out["after"] = words(1)
p = A.Actor(name, [("producer",), ("publish", 2)]).start()
blocked_draining(1)                   # commits id 2 (slot 0), then waits on slot 1
out["p"] = p.pid
out["refused"] = E.recover(name, 1, "release_readers")["refused"]
live.kill()
out["heal"] = brief(E.heal(name))     # the last reader released: the producer goes on
p.wait_point()
p.kill()
idle = A.Actor(name, [("consumer", "idle")]).start()
idle.wait_point()                     # a live consumer of ours reading nothing
for key, action, force in (("reset", "force_reset", False),
                           ("forced", "release_readers", True)):
    with R.attach(name) as w:         # 300 readers counted, none of them inside
        w.set(S["reader_count"], 300, b.geo.slot_entry(1))
    out[key] = E.recover(name, 1, action, force=force)
    out["after_" + key] = words(1)
idle.kill()
print(json.dumps(out))
"""


@NEEDS_NAMESPACES
def test_readers_decisions_in_a_complete_scope():
    """On a namespace host (complete scope), slot 1 of a 2-slot ring: a live reader of
    ours inside (its evidence says so: it accounts for one read) and a dead C++-style
    one (2 counted, 1 provably gone).
    - force_reset without force, run as an operator runs it (the CLI: its action string
      is no interned literal), is refused -- it would leave a live reader counted in a
      reset slot -- and changes nothing;
    - release_readers releases the one provably gone (2 -> 1); with the producer now
      waiting on the slot, the next is refused, naming the live reader alone as possibly
      inside (the waiting writer contributes nothing) and the writer as waiting;
    - 300 readers (above CPython's cached ints) and one live consumer that reads nothing:
      force_reset releases them all without force (all provably gone), and a forced
      release of 300 provably gone readers carries no FORCED warning."""
    out = run(SCENE)
    assert out["before"]["reader_count"] == 2, out
    code, stdout, dummy = out["cli"]
    assert code != 0 and '"UNSAFE"' in stdout, out["cli"]
    assert out["after_cli"] == out["before"], out
    assert out["release"]["result"] == "SUCCESS", out["release"]
    assert "reader_count 2 → 1" in out["release"]["outcomes"][0]["message"], out["release"]
    assert out["after"]["reader_count"] == 1, out
    (refused,) = out["refused"]
    assert refused["message"] == (
        "slot 1: 1 reader, writer pid %d waits for them, 0 provably gone; may still be "
        "inside: pid %d (alive) [our trusted evidence: reads this slot]; releasing them "
        "needs force" % (out["p"], out["live"])), refused
    assert out["reset"]["result"] == "SUCCESS", out["reset"]
    assert out["after_reset"]["reader_count"] == 0, out
    assert out["forced"]["result"] == "SUCCESS" and not out["forced"]["warnings"], out["forced"]
    assert out["after_forced"]["reader_count"] == 0, out
