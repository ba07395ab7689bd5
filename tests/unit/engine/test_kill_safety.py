"""Recovery that can be killed, in small (issue 10, D8 and item 4); the full sweep over
every store of every operation is tests/reliability/test_kill_points.py.

* The half-done release the issue found: write_index one ahead of commit_index with no
  writer holding the claimed id. validate flags it ("index-out-of-step"): an error when
  the producer is dead (heal gives the id back by CAS), a warning while a live producer
  could be the one between its claim and its lock (heal leaves it).
* The rollback test is idempotent: a release killed after rolling write_index back and
  finished by the next run never rolls back twice (capacity 1 and 2, where the slot ids
  before and after the rollback map to the same or to neighbouring slots).
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _runtime as R)

from .helpers import WRITING, image, poke, prove_works, reaped_pid

import plh_spec as spec


def u64(value):
    return value.to_bytes(8, "little")


def claimer_program(report, name):
    """A live producer stopped between its write_index += 1 and its lock CAS."""
    b = R.attach(name)
    p = R.Producer(b)                  # the producer heartbeat now names this process
    slot_id = b.add("write_index", 1)
    report({"pid": os.getpid(), "slot_id": slot_id})
    return b, p                        # kept mapped while it lingers (a live producer)


def test_index_ahead_with_a_live_producer_is_a_warning_heal_leaves(lab):
    name = lab.create(capacity=4, commits=3)
    w = lab.child(claimer_program, name)
    assert w.recv()["slot_id"] == 3
    found = E.validate(name)
    (f,) = found["findings"]
    assert (f["code"], f["severity"], f["field"]) == ("index-out-of-step", "warning",
                                                      "write_index")
    assert found["valid"] and found["health"] == "degraded" and not found["healthy"]
    assert E.diagnose(name)["health"] == "degraded"
    healed = E.heal(name)
    assert healed["indexes"] == [] and image(name).write_index == 4
    assert not healed["healthy"] and healed["health"] == "degraded"
    # the producer dies there: now nothing could explain the claim -> error, heal repairs
    w.kill()
    found = E.validate(name)
    (f,) = found["findings"]
    assert (f["code"], f["severity"]) == ("index-out-of-step", "error")
    assert not found["valid"] and found["health"] == "corrupt"
    assert {"operation": "heal"} in found["next_steps"]
    dry = E.heal(name, dry_run=True)
    assert image(name).write_index == 4 and dry["healthy"]
    healed = E.heal(name)
    assert healed["healthy"] and healed["indexes"] == [dict(
        field="write_index", result="SUCCESS", before=4, after=3,
        message=healed["indexes"][0]["message"])]
    assert image(name).write_index == 3 and image(name).commit_index == 2
    assert not E.heal(name)["changed"]
    prove_works(lab, name, 2)


def unstamped_claimer_program(report, name, dead_pid):
    """A re-attaching producer (C++-like) between its first claim and its first lock that
    has not stamped the producer heartbeat yet: the heartbeat still names the dead
    previous producer."""
    b = R.attach(name)
    slot_id = b.add("write_index", 1)
    b.set("producer_heartbeat_pid", dead_pid)
    report({"pid": os.getpid(), "slot_id": slot_id})
    return b


def test_index_ahead_with_an_unstamped_live_claimer_is_left_to_it(lab):
    """The producer heartbeat's pid is dead, but a live process with the block mapped
    writable may be the one between claim and lock: heal gives nothing back (the kernel
    scan, or an exclusive lease, must show nobody who could be claiming), validate calls
    it a warning. Once that process is gone too, heal gives the id back. (Before: "the
    heartbeat pid is dead" alone let heal roll write_index back under the live claimer.)"""
    name = lab.create(capacity=4, commits=3)
    w = lab.child(unstamped_claimer_program, name, reaped_pid())
    assert w.recv()["slot_id"] == 3
    found = E.validate(name)
    (f,) = found["findings"]
    assert (f["code"], f["severity"]) == ("index-out-of-step", "warning"), f
    healed = E.heal(name)
    assert healed["indexes"] == [] and image(name).write_index == 4, healed["indexes"]
    assert not healed["healthy"]
    w.kill()
    healed = E.heal(name)
    assert [i["after"] for i in healed["indexes"]] == [3] and healed["healthy"], healed
    assert image(name).write_index == 3


def test_index_ahead_before_the_first_commit(lab):
    """Nothing committed (commit_index all ones): the id after it is 0."""
    name = lab.create(capacity=2, commits=0)
    poke(name, 184, u64(1))
    found = E.validate(name)
    assert [f["code"] for f in found["findings"]] == ["index-out-of-step"]
    assert E.heal(name)["healthy"] and image(name).write_index == 0


def test_a_held_claim_is_not_out_of_step(lab):
    """write_index one ahead because a writer holds the slot of the claimed id (alive, or
    dead: then the slot is stuck, which is another finding): no index finding."""
    crash = lab.crashed("mid_write")
    found = E.validate(crash.name)
    assert "index-out-of-step" not in [f["code"] for f in found["findings"]]
    assert found["health"] == "stuck"


@pytest.mark.parametrize("capacity", [1, 2, 4])
@pytest.mark.parametrize("point", ["mid_write", "acquired"])
def test_finishing_a_killed_release_never_rolls_back_twice(lab, capacity, point):
    """The release's first stores were made (lock -> the recovering pid, write_index
    rolled back) and then it was SIGKILLed: the slot is still WRITING, locked by a dead
    pid, write_index already at the id after the last commit. The next run finishes the
    release and leaves write_index where it is."""
    crash = lab.crashed(point, capacity=capacity)
    name, s = crash.name, crash.slot
    img = image(name)
    assert img.write_index == crash.last_good + 2 and img.slot(s)["state"] == WRITING
    poke(name, 4096 + 64 * s, u64(reaped_pid()))          # 1. the claim (a dead recovery)
    poke(name, 184, u64(crash.last_good + 1))             # 2. the rollback, done
    healed = E.heal(name)
    assert healed["healthy"], healed["after"]
    img = image(name)
    assert img.write_index == crash.last_good + 1 and img.commit_index == crash.last_good
    assert not [c for c in healed["changes"] if c["target"] == "header.write_index"]
    assert spec.upstream_validate_integrity(img)[0] == "SUCCESS"


@pytest.mark.parametrize("capacity", [1, 2])
def test_rollback_of_a_fresh_claim_once(lab, capacity):
    """The same through recover: release_writer twice on a dead writer's slot (the second
    run finds nothing to do) leaves write_index = commit_index + 1."""
    crash = lab.crashed("mid_write", capacity=capacity)
    first = E.recover(crash.name, crash.slot, "release_writer")
    assert first["result"] == "SUCCESS"
    assert [c for c in first["changes"] if c["target"] == "header.write_index"] == [
        {"target": "header.write_index", "before": crash.last_good + 2,
         "after": crash.last_good + 1}]
    second = E.recover(crash.name, crash.slot, "release_writer")
    assert second["result"] == "NOT_STUCK" and not second["changed"]
    assert image(crash.name).write_index == crash.last_good + 1


def test_sequential_sync_fixture_keeps_its_indexes(lab):
    """Fixture h (real C++ segment, Sequential_sync): write_index 9, commit_index 8, the
    producer waiting for read_index 5. Nothing is out of step there: validate finds no
    index problem and heal moves neither write_index nor commit_index (read_index is
    cleanup's, reconciled from the surviving read positions)."""
    name = lab.fixture("h_sequential_sync_dead_reader.bin")
    img = image(name)
    assert (img.write_index, img.commit_index, img.read_index) == (9, 8, 5)
    found = E.validate(name)
    assert not [f for f in found["findings"] if f["code"].startswith("index-")]
    healed = E.heal(name)
    assert not [c for c in healed["changes"] if c["target"] in ("header.write_index",
                                                                "header.commit_index")]
    img = image(name)
    assert (img.write_index, img.commit_index) == (9, 8)
    assert spec.upstream_validate_integrity(img)[0] == "SUCCESS"
