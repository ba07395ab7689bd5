"""Recovery that can be killed (issue 10, D8 and item 4): a kill-point sweep.

For every mutating operation (recover with each action, cleanup, heal, validate --repair)
on each crash state that exercises it, the operation runs in a real child process that
SIGKILLs itself right after its k-th store to the block, for k = 1, 2, ... until the
operation completes without reaching k. (The child counts stores by wrapping the Block
methods that write -- successful CAS, store, fetch-add, byte writes: test code; nothing
in the product knows.) After each kill ``heal`` runs normally, and the block must be:

* healthy by the one rule (diagnose, validate and heal agree), and heal run again changes
  nothing (a killed repair is finished by ``heal --repair``: plain heal never re-blesses);
* accepted by pylabhub's own validate_integrity (the test-side oracle);
* intact: no slot committed at the crash changed or was lost (a slot whose checksum
  ``validate --repair`` re-blessed keeps its bytes and gets the checksum of them);
* in step: ``write_index == commit_index + 1`` (0 before the first commit), every
  reader_count 0, ``active_consumer_count`` equal to the registered entries (none);
* usable: a new producer commits and a new consumer reads that commit back.

The crash states are built once by real processes SIGKILLed at protocol points; each
kill point starts from a byte-exact copy of that state (its holders are dead, so the copy
is the same crash). Capacities 1 and 2 check that a rollback of write_index is never done
twice by a run that finishes a killed one. The figures go to docs/reliability.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "unit"
if str(UNIT) not in sys.path:
    sys.path.insert(0, str(UNIT))

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _engine as E)
from ansible_collections.pylabhub.recovery.tests.support import run_killed_after  # noqa: E402

from engine.helpers import (  # noqa: E402
    COMMITTED, DRAINING, ScratchBlocks, consumer_program, corrupt, image, index_ahead, payload,
    publish_in_child, read_latest, torn_free)

import plh_spec as spec  # noqa: E402

SHM = "/dev/shm"
MAX_STORES = 400          # a sanity bound: no operation here stores that often


# -- crash states -----------------------------------------------------------------------------
def _writer(point, capacity=4):
    return lambda lab: lab.crashed(point, capacity=capacity).name


def _reader_and_consumer(lab):
    """A dead consumer inside a slot (our evidence names it) and another dead one idle."""
    name = lab.crashed("reader").name
    c = lab.child(consumer_program, name)
    c.recv()
    c.kill()
    return name


STATES = {
    "mid_write": _writer("mid_write"),
    "mid_write_cap1": _writer("mid_write", 1),
    "mid_write_cap2": _writer("mid_write", 2),
    "acquired_cap2": _writer("acquired", 2),
    "locked": _writer("locked"),
    "mid_commit": _writer("mid_commit"),
    "deadlock": lambda lab: lab.crashed("deadlock").name,
    "deadlock_cap1": lambda lab: lab.crashed("deadlock", capacity=1).name,
    "reader": lambda lab: lab.crashed("reader").name,
    "consumers": _reader_and_consumer,
    "torn_free": torn_free,
    "index_ahead": index_ahead,
    "corrupt": lambda lab: corrupt(lab, (1, 3)),
}

SLOT_OF = {}              # state -> the slot a slot action targets


def _slot(name):
    """The slot a slot action targets: the one a dead holder blocks."""
    d = E.diagnose(name)
    return d["stuck_slots"][0] if d["stuck_slots"] else 0


OPERATIONS = {
    "recover release_writer": (lambda n, s: E.recover(n, s, "release_writer"),
                               ["mid_write", "mid_write_cap1", "mid_write_cap2",
                                "acquired_cap2", "locked", "mid_commit", "deadlock"]),
    "recover release_readers": (lambda n, s: E.recover(n, s, "release_readers"), ["reader"]),
    "recover force_reset": (lambda n, s: E.recover(n, s, "force_reset"),
                            ["deadlock", "deadlock_cap1", "mid_write"]),
    "recover all force_reset": (lambda n, s: E.recover(n, "all", "force_reset"), ["deadlock"]),
    "cleanup": (lambda n, s: E.cleanup(n), ["reader", "consumers"]),
    "heal": (lambda n, s: E.heal(n),
             ["mid_write", "mid_write_cap1", "mid_write_cap2", "locked", "deadlock",
              "deadlock_cap1", "consumers", "torn_free", "index_ahead"]),
    "heal --repair": (lambda n, s: E.heal(n, repair=True), ["corrupt", "mid_write"]),
    "validate --repair": (lambda n, s: E.validate(n, repair=True), ["corrupt"]),
}
REPAIRS = {"heal --repair", "validate --repair"}
# operations whose step meets a concurrent change at that word and is rolled back:
# every store of the rollback is a kill point too
ROLLED_BACK = {"recover release_writer, rolled back at slot_state": "slot_state",
               "recover force_reset, rolled back at reader_count": "reader_count"}
OPERATIONS["recover release_writer, rolled back at slot_state"] = (
    lambda n, s: E.recover(n, s, "release_writer"), ["mid_write", "deadlock"])
OPERATIONS["recover force_reset, rolled back at reader_count"] = (
    lambda n, s: E.recover(n, s, "force_reset"), ["deadlock"])
PAIRS = [(op, st) for op, (dummy, states) in OPERATIONS.items() for st in states]


# -- the checks after the recovering heal -----------------------------------------------------
def committed_at_crash(img):
    return {i: (img.slot(i)["generation"], img.slot_data(i), img.checksum(i)[0])
            for i in range(img.capacity) if img.slot(i)["state"] in (COMMITTED, DRAINING)}


def check_recovered(lab, name, before, repaired):
    """The block after a killed operation and one normal heal: see the module doc. A
    killed repair is finished by ``heal --repair`` (the same consent): heal without it
    never re-blesses corrupt data, so it could not finish one."""
    problems = []
    healed = E.heal(name, repair=repaired)
    d, v = E.diagnose(name), E.validate(name)
    for what, r in (("heal", healed["after"]), ("diagnose", d), ("validate", v)):
        if r["health"] != "healthy":
            problems.append("%s says %s: stuck %s suspect %s findings %s" % (
                what, r["health"], r["stuck_slots"], r["suspect_slots"],
                [f["code"] for f in r.get("findings", [])]))
    if not healed["healthy"] or not healed["ok"]:
        problems.append("heal not healthy/ok: refused %s" % healed["refused"])
    again = E.heal(name, repair=repaired)
    if again["changed"]:
        problems.append("a second heal still changed %s" % again["changes"])
    img = image(name)
    verdict = spec.upstream_validate_integrity(img)
    if verdict[0] != "SUCCESS":
        problems.append("pylabhub's validate_integrity: %s" % (verdict,))
    for i, (gen, data, digest) in before.items():
        s = img.slot(i)
        if s["state"] != COMMITTED or s["generation"] != gen or img.slot_data(i) != data:
            problems.append("committed slot %d changed or lost" % i)
        elif img.checksum(i)[0] != digest and not (repaired and img.checksum_valid(i)):
            problems.append("committed slot %d checksum changed" % i)
    following = 0 if img.commit_index == spec.NO_COMMIT else img.commit_index + 1
    if img.write_index != following:
        problems.append("write_index %d, commit_index %d: out of step"
                        % (img.write_index, img.commit_index))
    counts = [img.slot(i)["readers"] for i in range(img.capacity)]
    registered = sum(1 for k in range(8) if img.consumer(k)["pid"])
    if any(counts) or img.active_consumers != registered or registered:
        problems.append("readers %s, active_consumer_count %d, %d registered"
                        % (counts, img.active_consumers, registered))
    if not problems:
        ids = publish_in_child(lab, name, 1)
        slot_id, data = read_latest(name)
        if slot_id != ids[-1] or data != payload(ids[-1], img.stride):
            problems.append("a new commit does not read back")
    return problems


@pytest.fixture(scope="module")
def states(request):
    """state -> (bytes of the crash state, committed slots then, target slot); built once
    by real processes SIGKILLed at protocol points."""
    lab = ScratchBlocks(lambda: request.getfixturevalue("fixtures_dir"))
    built = {}
    try:
        for state, make in STATES.items():
            name = make(lab)
            with open(os.path.join(SHM, name), "rb") as f:
                raw = f.read()
            built[state] = (raw, committed_at_crash(image(name)), _slot(name))
        yield built
    finally:
        lab.close()


def test_every_kill_point_is_finished_by_the_next_heal(states, fixtures_dir, figures):
    lab = ScratchBlocks(lambda: fixtures_dir)
    tally = {}
    failures = []
    try:
        name = lab.name()
        for op, state in PAIRS:
            raw, before, slot = states[state]
            call = OPERATIONS[op][0]
            k = 1
            while True:
                assert k < MAX_STORES, "%s on %s: no end in sight" % (op, state)
                with open(os.path.join(SHM, name), "wb") as f:
                    f.write(raw)
                os.chmod(os.path.join(SHM, name), 0o600)
                if not run_killed_after(k, lambda: call(name, slot), ROLLED_BACK.get(op)):
                    break                          # finished before its k-th store
                problems = check_recovered(lab, name, before, op in REPAIRS)
                if problems:
                    failures.append("%s on %s, killed after store %d: %s"
                                    % (op, state, k, "; ".join(problems)))
                k += 1
            tally[(op, state)] = k - 1
            # and the uninterrupted run (k stores were not reached) ends healthy too
            problems = check_recovered(lab, name, before, op in REPAIRS)
            if problems:
                failures.append("%s on %s, not killed: %s" % (op, state, "; ".join(problems)))
    finally:
        lab.close()
    points = sum(tally.values())
    figures["kill-point sweep"] = (
        "%d operation/state pairs, %d kill points (one per store), %d survived%s" % (
            len(tally), points, points - len(failures),
            "" if not failures else "; FAILED: %d" % len(failures)))
    assert all(n > 0 for n in tally.values()), tally     # every pair stores something
    assert not failures, "\n".join(failures[:10])


@pytest.mark.parametrize("repair_index", [False, True], ids=["as_before", "index_repair"])
def test_the_sweep_catches_a_release_that_rolls_back_after_the_state(monkeypatch, states,
                                                                     fixtures_dir,
                                                                     repair_index):
    """Sabotage: the order the issue found (state CAS before the write_index rollback, so
    a kill between them leaves FREE with write_index one ahead). Without heal's index
    repair (the code before this change) the sweep must fail; with it, heal gives the id
    back (the producer is dead), so even that order would be finished by the next run."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _heal, _recover
    if not repair_index:
        monkeypatch.setattr(_heal, "index_step", lambda plan: None)
    real_apply = _recover._apply

    def state_first(scene, view, writer, new_readers):
        if not writer:
            return real_apply(scene, view, writer, new_readers)
        plan, i = scene.plan, view.index
        base = scene.block.geo.slot_entry(i)
        plan.begin()
        plan.cas("slot[%d].write_lock" % i, _recover.SLOT["write_lock"], base,
                 view.write_lock, plan.pid)
        plan.cas("slot[%d].slot_state" % i, _recover.SLOT["slot_state"], base, view.state,
                 _recover._after_writer(view.state))
        _old_rollback(scene, i, view.state)
        plan.cas("slot[%d].writer_waiting" % i, _recover.SLOT["writer_waiting"], base,
                 view.writer_waiting, 0)
        plan.cas("slot[%d].write_lock" % i, _recover.SLOT["write_lock"], base, plan.pid, 0)

    def _old_rollback(scene, index, state):   # today's rule: only while WRITING/DRAINING
        plan = scene.plan
        if state not in (1, 3):
            return
        w, c = plan.hdr("write_index"), plan.hdr("commit_index")
        if w and (w - 1) % scene.block.geo.capacity == index and (
                c == spec.NO_COMMIT or c < w - 1):
            plan.cas("header.write_index", _recover.L.HEADER["write_index"], 0, w, w - 1)
    monkeypatch.setattr(_recover, "_apply", state_first)
    lab = ScratchBlocks(lambda: fixtures_dir)
    try:
        name = lab.name()
        raw, before, slot = states["mid_write"]
        found = []
        for k in range(1, 8):
            with open(os.path.join(SHM, name), "wb") as f:
                f.write(raw)
            if not run_killed_after(k, lambda: E.recover(name, slot, "release_writer")):
                break
            found += check_recovered(lab, name, before, False)
        if repair_index:
            assert not found, found
        else:
            assert any("out of step" in p for p in found), found
    finally:
        lab.close()
