"""A word changes under a step (another real process writes it between two of our CAS):
the step is rolled back, nothing is left half-done, the outcome is FAILED and says so."""

from __future__ import annotations

import os

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _cleanup, _engine as E, _observe as O, _plan as P,
    _recover, _runtime as R, _validate)

from .helpers import (COMMITTED, DRAINING, FREE, InterruptedPlan, file_bytes, image, slot_store,
                      stored, stores_in_child)

import plh_spec as spec


def reclaim_program(report, name, index):
    """A producer taking over a slot's lock the way the protocol lets it: CAS from a
    holder it judges dead."""
    b = R.attach(name)
    p = R.Producer(b)
    p._lock(b.geo.slot_entry(index), 5.0)
    report({"pid": os.getpid()})
    return b, p


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
def test_release_writer_step_rolled_back(lab, dry_run):
    """After we claim the dead writer's lock, another process changes the slot state: the
    state CAS fails and the lock goes back to the dead writer."""
    crash = lab.crashed("mid_write")
    name, s = crash.name, crash.slot
    dead = image(name).slot(s)["lock"]
    store = slot_store(s, "state", COMMITTED)
    before = file_bytes(name)
    with B.open_block(name, writable=not dry_run) as block:
        plan = InterruptedPlan(block, lab, ("cas", "slot[%d].write_lock" % s, "after"), [[store]],
                               dry_run=dry_run)
        out = _recover.plan_slot(O.Scene(plan), s, "release_writer")
        assert plan.fired == 1
        assert plan.changes == [] and not plan.changed
    assert out["result"] == "FAILED"
    assert "changed under us" in out["message"] and "nothing changed" in out["message"]
    assert "slot[%d].slot_state" % s in out["message"]
    assert file_bytes(name) == stored(before, [store])
    assert image(name).slot(s)["lock"] == dead


def test_force_reset_long_step_rolled_back(lab):
    """Deadlock: lock, writer_waiting, state and write_index are already changed when
    another process moves reader_count: every one of them is restored."""
    crash = lab.crashed("deadlock")
    name, s = crash.name, crash.slot
    img0 = image(name)
    assert img0.slot(s)["state"] == DRAINING and img0.slot(s)["waiting"] == 1
    store = slot_store(s, "readers", 5)
    before = file_bytes(name)
    with B.open_block(name, writable=True) as block:
        plan = InterruptedPlan(block, lab, ("cas", "header.write_index", "after"), [[store]])
        out = _recover.plan_slot(O.Scene(plan), s, "force_reset")
        assert plan.fired == 1 and plan.changes == []
    assert out["result"] == "FAILED" and "slot[%d].reader_count" % s in out["message"]
    assert file_bytes(name) == stored(before, [store])
    # and the next run, observing afresh, succeeds
    result = E.recover(name, s, "force_reset")
    assert result["ok"] and image(name).slot(s)["readers"] == 0


def test_engine_reports_failed_and_not_ok(lab):
    """Through the front door: a FAILED step makes the result FAILED, ok False, changed
    False (the real recover function, with the interfering plan swapped in)."""
    crash = lab.crashed("mid_write")
    name, s = crash.name, crash.slot
    original = E.Plan

    def plan_factory(block, dry_run, journal=None):
        return InterruptedPlan(block, lab, ("cas", "slot[%d].write_lock" % s, "after"),
                               [[slot_store(s, "state", FREE)]], dry_run=dry_run, journal=journal)
    E.Plan = plan_factory
    try:
        result = E.recover(name, s, "release_writer")
    finally:
        E.Plan = original
    assert result["result"] == "FAILED" and result["ok"] is False
    assert result["changed"] is False and result["changes"] == []
    assert image(name).u(368, 8) == 0          # no recovery action counted


def test_cleanup_entry_rolled_back_when_scene_is_stale(lab):
    """The Scene saw consumer 0 dead; before cleanup acts, another process stamps its
    heartbeat: the entry claim is undone, the entry is left exactly as the other process
    left it, and the outcome is FAILED."""
    crash = lab.crashed("consumer")
    name = crash.name
    off, size = spec.CONSUMER_WORDS["heartbeat_ns"]
    heartbeat = (spec.consumer_entry(0) + off, (12345).to_bytes(size, "little"))
    before = file_bytes(name)
    with B.open_block(name, writable=True) as block:
        plan = P.Plan(block, False)
        scene = O.Scene(plan)                        # observed now
        assert [c.dead for c in scene.consumers] == [True]
        stores_in_child(lab, name, [heartbeat])      # ... changed afterwards
        body = _cleanup.cleanup(scene)
    (o,) = body["outcomes"]
    assert o["result"] == "FAILED" and "changed under us" in o["message"]
    assert body["cleaned"] == 0
    assert file_bytes(name) == stored(before, [heartbeat])


def test_stale_scene_sees_new_lock_holder(lab):
    """plan_slot on a Scene observed before a new producer reclaimed the dead lock looks
    at the slot again: the live holder is refused and nothing changes."""
    crash = lab.crashed("mid_write")
    name, s = crash.name, crash.slot
    with B.open_block(name, writable=True) as block:
        plan = P.Plan(block, False)
        scene = O.Scene(plan)
        # a new producer reclaims the dead writer's lock (its own protocol) and holds it
        w = lab.child(reclaim_program, name, s)
        w.recv()
        assert image(name).slot(s)["lock"] == w.pid
        before = file_bytes(name)
        out = _recover.plan_slot(scene, s, "release_writer")
        assert plan.changes == []
    assert out["result"] == "UNSAFE" and out["holder"]["pid"] == w.pid
    assert file_bytes(name) == before


def test_rebless_refused_when_writer_takes_the_slot(lab):
    """Between finding a bad checksum and re-blessing it, a writer takes the slot's lock:
    nothing is written and the finding says why."""
    name = lab.create(capacity=4, commits=3)
    off = image(name).data_offset(1) + 9
    with open("/dev/shm/" + name, "r+b") as f:
        f.seek(off)
        f.write(b"\xAA")
    store = slot_store(1, "lock", os.getpid())
    before = file_bytes(name)
    with B.open_block(name, writable=True, strict=False) as block:
        plan = InterruptedPlan(block, lab, ("cas", "slot[1].write_lock", "before"), [[store]])
        body = _validate.validate(plan, repair=True)
        assert plan.fired == 1 and plan.changes == []
    assert body["reblessed"] == [] and not body["valid"]
    (f,) = body["findings"]
    assert f["code"] == "checksum-mismatch" and "repair cannot re-bless it" in f["message"]
    assert file_bytes(name) == stored(before, [store])
