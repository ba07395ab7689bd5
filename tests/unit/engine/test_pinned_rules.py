"""Safety rules the issue's hand-made mutants showed unpinned (issue 10, "How it is
proven"): each test fails on one of them. Real processes (crash actors), real blocks; the
readers' own rules (release_readers, releasable readers, count reconciliation) are pinned
by their own work, not here."""

from __future__ import annotations

import os
import signal
import time

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _engine as E, _runtime as R, _validate)

from .helpers import DRAINING, InterruptedPlan, file_bytes, image, poke, poke_slot, slot_store, stored


def test_rebless_refused_when_the_slot_leaves_committed_under_our_lock(lab):
    """Repair takes the slot's lock, then finds it no longer COMMITTED (a drain began):
    nothing re-blessed, the lock given back, the checksum as it was."""
    name = lab.create(capacity=4, commits=3)
    poke(name, image(name).data_offset(1) + 9, b"\xAA")
    store = slot_store(1, "state", DRAINING)
    before = file_bytes(name)
    with B.open_block(name, writable=True, strict=False) as block:
        plan = InterruptedPlan(block, lab, ("cas", "slot[1].write_lock", "after"), [[store]])
        body = _validate.validate(plan, repair=True)
        assert plan.fired == 1
    assert body["reblessed"] == [], body["reblessed"]
    (f,) = [f for f in body["findings"] if f.get("slot") == 1]
    assert "no longer COMMITTED" in f["message"], f
    assert file_bytes(name) == stored(before, [store])
    assert image(name).slot(1)["lock"] == 0


def _consumer_kept(name, pid):
    for run in (E.cleanup, E.heal):
        out = run(name)
        assert not [c for c in out["changes"] if c["target"].startswith("consumer[")], out
        assert image(name).consumer(0)["pid"] == pid


def test_cleanup_keeps_a_suspect_hung_consumer(shm_name, actors):
    R.create(shm_name, capacity=2).close()
    c = actors(shm_name, [("consumer", "paused")])
    c.wait_point()
    c.stop()
    (entry,) = E.diagnose(shm_name)["consumers"]
    assert entry["verdict"]["state"] == "suspect-hung", entry
    _consumer_kept(shm_name, c.pid)
    c.cont()


def test_cleanup_keeps_a_live_consumer_with_a_stale_heartbeat(shm_name, actors):
    R.create(shm_name, capacity=2).close()
    c = actors(shm_name, [("consumer", "idle")])
    c.wait_point()
    # an hour without a heartbeat, or since boot on a machine up for less (the word is
    # unsigned: a machine booted minutes ago cannot hold a time an hour before it)
    old = max(1, time.monotonic_ns() - 3600 * 10**9)
    poke(shm_name, 496 + 8, old.to_bytes(8, "little"))
    (entry,) = E.diagnose(shm_name)["consumers"]
    assert entry["verdict"]["state"] == "alive", entry
    assert any("stale after" in e for e in entry["verdict"]["evidence"]), entry
    _consumer_kept(shm_name, c.pid)


def test_cleanup_keeps_a_consumer_of_another_pid_namespace(shm_name, actors):
    R.create(shm_name, capacity=2).close()
    c = actors(shm_name, [("consumer", "nested")],
               wrap=["unshare", "--pid", "--fork", "--kill-child"])
    at = c.wait_point()
    assert c.ns_pid == 1 and image(shm_name).consumer(at["consumer"])["pid"] == 1
    _consumer_kept(shm_name, 1)
    os.kill(c.pid, signal.SIGKILL)


def test_a_draining_slot_with_no_lock_is_stuck_orphaned(lab):
    """DRAINING with no write lock: no writer can ever move it on (only WRITING was
    pinned): stuck, and release_writer is the step."""
    name = lab.create(capacity=4, commits=3)
    poke_slot(name, 1, state=DRAINING)
    assert image(name).slot(1)["lock"] == 0
    (s,) = E.diagnose(name, 1)["slots"]
    assert s["is_stuck"], s
    assert "DRAINING with no write lock: orphaned" in s["reason"], s
