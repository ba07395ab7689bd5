"""Recovery racing live processes: a producer publishing and two consumers reading (with
checksum checks) while every engine operation loops, unforced, for a few seconds. Nothing
is dead, so recovery must change nothing a live process owns."""

from __future__ import annotations

import os
import time

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _layout as L, _runtime as R)

from .helpers import WRITING, image, payload, payload_ok

DURATION = 3.0
MAX_LIFE = 120.0        # children stop when told (the stop file); this only bounds a lost test
MIN_RUNS = 24
CAPACITY = 4
STRIDE = 4096


def _running(stop: str, started: float) -> bool:
    """A child goes on until the test creates ``stop``: every holder stays alive for as
    long as recovery loops, however slow a loaded machine makes the loop."""
    return not os.path.exists(stop) and time.monotonic() - started < MAX_LIFE


def race_producer(report, name, stop):
    b = R.attach(name)
    p = R.Producer(b)
    report({"pid": os.getpid()})
    stats = {"commits": 0, "stolen": 0, "bad_state": 0}
    started = time.monotonic()
    while _running(stop, started):
        ws = p.acquire(timeout=10.0)
        base = b.geo.slot_entry(ws.index)
        if b.get(L.SLOT["write_lock"], base) != p.pid:
            stats["stolen"] += 1
        if b.get(L.SLOT["slot_state"], base) != WRITING:
            stats["bad_state"] += 1
        p.write(ws, payload(ws.slot_id, STRIDE))
        if b.get(L.SLOT["write_lock"], base) != p.pid:
            stats["stolen"] += 1
        if b.get(L.SLOT["slot_state"], base) != WRITING:
            stats["bad_state"] += 1
        p.commit(ws)
        stats["commits"] += 1
    report(stats)


def race_consumer(report, name, stop):
    b = R.attach(name)
    c = R.Consumer(b, name="race-%d" % os.getpid())
    report({"pid": os.getpid()})
    stats = {"reads": 0, "checksum_failures": 0, "torn": 0, "bad_count": 0}
    geo = b.geo
    started = time.monotonic()
    while _running(stop, started):
        rs = c.acquire()
        if rs is None:
            continue
        count = b.get(L.SLOT["reader_count"], geo.slot_entry(rs.index))
        if not 1 <= count <= 2:
            stats["bad_count"] += 1
        data = c.read(rs, verify=False)
        stored = b.read(geo.checksum_entry(rs.index), L.HASH_SIZE)
        if L.blake2b256(data) != stored:
            stats["checksum_failures"] += 1
        if not payload_ok(data):
            stats["torn"] += 1
        c.release(rs)
        stats["reads"] += 1
    c.unregister()
    report(stats)


def test_recovery_never_disturbs_live_processes(lab, tmp_path):
    name = lab.create(capacity=CAPACITY, stride=STRIDE, evidence=True, commits=CAPACITY)
    # the children outlive the recovery loop: every holder is alive while recovery runs
    stop = str(tmp_path / "stop")
    producer = lab.child(race_producer, name, stop, linger=False)
    consumers = [lab.child(race_consumer, name, stop, linger=False)
                 for dummy in range(2)]
    for c in [producer] + consumers:
        c.recv()
    ops = {
        "diagnose": lambda: E.diagnose(name),
        "release_writer": lambda: E.recover(name, "all", "release_writer"),
        "release_readers": lambda: E.recover(name, "all", "release_readers"),
        "force_reset": lambda: E.recover(name, "all", "force_reset"),
        "cleanup": lambda: E.cleanup(name),
        "heal": lambda: E.heal(name),
        "validate": lambda: E.validate(name),
        "validate_repair": lambda: E.validate(name, repair=True),
        "heal_repair": lambda: E.heal(name, repair=True),
    }
    runs = {k: 0 for k in ops}
    results = {}                   # outcome result -> count
    changed, bad_counts, failures, unhealthy = [], [], [], []
    deadline = time.monotonic() + DURATION
    while time.monotonic() < deadline or min(runs.values()) < 3:
        for op, fn in ops.items():
            out = fn()
            runs[op] += 1
            if op == "diagnose":
                if out["stuck_slots"] or out["suspect_slots"] or not out["healthy"]:
                    unhealthy.append((op, out["stuck_slots"], out["findings"]))
            elif op.startswith("validate"):
                if [f for f in out["findings"] if f["severity"] != "info"] or not out["ok"]:
                    unhealthy.append((op, out["findings"]))
            elif op.startswith("heal") and not (out["healthy"] and out["ok"]):
                unhealthy.append((op, out["after"], out["refused"]))
            if out.get("changed"):
                changed.append((op, out["changes"]))
            outcomes = out.get("outcomes", [])
            if op.startswith("heal"):
                outcomes = outcomes + out["cleanup"]["outcomes"]
            for o in outcomes:
                results[o["result"]] = results.get(o["result"], 0) + 1
                if o["result"] in ("SUCCESS", "FAILED"):
                    failures.append((op, o))
            img = image(name)
            counts = [img.slot(i)["readers"] for i in range(CAPACITY)]
            if any(c > 2 for c in counts) or img.active_consumers != 2:
                bad_counts.append((op, counts, img.active_consumers))
    open(stop, "w").close()
    pstats = producer.recv(15)
    cstats = [c.recv(15) for c in consumers]
    assert producer.reap() == 0 and all(c.reap() == 0 for c in consumers)

    assert pstats["commits"] > 50 and pstats["stolen"] == 0 and pstats["bad_state"] == 0
    for s in cstats:
        assert s["reads"] > 50, cstats
        assert s["checksum_failures"] == 0 and s["torn"] == 0 and s["bad_count"] == 0, cstats
    assert all(n >= 3 for n in runs.values()), runs
    assert not changed, changed[:3]
    assert not failures, failures[:3]
    assert results.get("NOT_STUCK") and set(results) <= {"NOT_STUCK", "UNSAFE"}, results
    assert not unhealthy, unhealthy[:3]
    assert not bad_counts, bad_counts[:3]
    img = image(name)
    assert all(img.slot(i)["readers"] == 0 and img.slot(i)["lock"] == 0
               for i in range(CAPACITY))
    final = E.validate(name)
    assert final["ok"] and not final["findings"], final["findings"]


def churn_consumer(report, name, stop):
    """Register, read once, unregister, again and again, until the file ``stop`` exists."""
    b = R.attach(name)
    report({"pid": os.getpid()})
    cycles = 0
    while not os.path.exists(stop):
        c = R.Consumer(b, name="churn")
        rs = c.acquire()
        if rs is not None:
            c.read(rs)
            c.release(rs)
        c.unregister()
        cycles += 1
    report({"cycles": cycles})


def test_cleanup_never_corrupts_consumer_count_of_churning_consumers(lab, tmp_path):
    """Consumers registering and unregistering (the count moves a moment after the entry)
    while cleanup and heal loop: the count never underflows or drifts. At least
    MIN_RUNS recovery calls, however slow the host (each one walks /proc: the block's
    producer is gone and the churners keep it open), and at least DURATION seconds."""
    name = lab.create(capacity=CAPACITY, stride=STRIDE, evidence=True, commits=CAPACITY)
    stop = str(tmp_path / "stop")
    churners = [lab.child(churn_consumer, name, stop, linger=False) for dummy in range(2)]
    for c in churners:
        c.recv()
    seen, runs = set(), 0
    deadline = time.monotonic() + DURATION
    while runs < MIN_RUNS or time.monotonic() < deadline:
        for out in (E.cleanup(name), E.heal(name)):
            assert not out["changed"], out["changes"]
            runs += 1
        seen.add(image(name).active_consumers)
    open(stop, "w").close()
    stats = [c.recv(60) for c in churners]
    assert all(c.reap() == 0 for c in churners)
    assert all(s["cycles"] > 20 for s in stats), (runs, stats)
    assert max(seen) <= 2, sorted(seen)
    img = image(name)
    assert img.active_consumers == 0 and all(img.consumer(k)["pid"] == 0 for k in range(8))
