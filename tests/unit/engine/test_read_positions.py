"""Read positions (issue 12): Sequential_sync's per-consumer positions and read_index.

A dead consumer's position pins read_index (pylabhub recomputes it only when a registered
consumer releases a slot), so the producer waits for ever. diagnose shows the positions
and finds it; cleanup/heal clear the dead entry's position and raise read_index to the
slowest live position by CAS, whatever the heartbeat traffic, but not past the latest
commit (a consumer still joining shows its entry's previous position). Real C++ segment
(fixture h) with live stand-ins for the processes alive at capture; real consumers paused
inside their registration."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _layout as L, _runtime as R)
from ansible_collections.pylabhub.recovery.tests.support import stand_in

from .helpers import image


def put(path, offset, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(value.to_bytes(8, "little"))


def test_fixture_h_dead_position_found_and_read_index_raised_under_heartbeats(lab):
    """Fixture h: entry 0 (killed idle) at position 5 pins read_index 5; write_index 9 -
    5 = capacity 4, the producer waits. With entry 1 (position 9) and the producer alive
    (stand-ins) and entry 1 heartbeating every 2 ms while heal runs: diagnose shows both
    positions and the finding (block not healthy, next step heal); heal clears entry 0's
    position and raises read_index to 8, the latest commit (the survivor's position 9 is
    one past it: an entry's position may still be its previous occupant's); the finding
    is gone and the producer can go on (write_index 9 - 8 < capacity)."""
    name = lab.fixture("h_sequential_sync_dead_reader.bin")
    path = os.path.join("/dev/shm", name)
    survivor, producer = stand_in(name), stand_in(name)
    stop = threading.Event()
    try:
        put(path, 496 + 128 * 1, survivor.pid)
        put(path, 2624, producer.pid)
        d = E.diagnose(name)
        rp = d["read_positions"]
        assert (rp["policy"], rp["read_index"], rp["write_index"]) == ("SEQUENTIAL_SYNC", 5, 9)
        assert [(p["consumer"], p["position"], p["verdict"]) for p in rp["positions"]] == [
            (0, 5, "dead"), (1, 9, "alive")], rp
        (f,) = [f for f in d["findings"] if f["code"] == "read-index-held-by-dead-consumer"]
        assert f["severity"] == "warning" and not d["healthy"], d["findings"]
        assert {"operation": "heal"} in d["next_steps"] or {"operation": "cleanup"} in \
            d["next_steps"], d["next_steps"]

        def beat():                       # the survivor heartbeats every 2 ms meanwhile
            with R.attach(name) as b:
                base = L.consumer_entry(1)
                while not stop.is_set():
                    b.set(L.CONSUMER["last_heartbeat_ns"], time.monotonic_ns(), base)
                    time.sleep(0.002)
        t = threading.Thread(target=beat)
        t.start()
        healed = E.heal(name)
        stop.set()
        t.join()
        img = image(name)
        assert img.commit_index == 8 and img.read_index == 8, healed["cleanup"]["reconciled"]
        assert img.u(L.read_position(0), 8) == 0 and img.u(L.read_position(1), 8) == 9
        assert img.consumer(0)["pid"] == 0 and img.consumer(1)["pid"] == survivor.pid
        assert {"field": "read_index", "before": 5, "after": 8} in \
            healed["cleanup"]["reconciled"], healed["cleanup"]["reconciled"]
        after = E.diagnose(name)
        assert "read-index-held-by-dead-consumer" not in [f["code"] for f in after["findings"]]
        assert not E.heal(name)["changes"] or img.read_index == image(name).read_index
    finally:
        stop.set()
        for p in (survivor, producer):
            p.kill()
            p.wait()


@pytest.mark.parametrize("capacity,style,point", [
    (4, "ours", "pid-cased"), (4, "cpp", "heartbeat"), (1, "ours", "pid-cased")],
    ids=["ring-ours-pid-cased", "ring-cpp-heartbeat", "one-slot"])
def test_a_joining_consumers_stale_position_does_not_raise_read_index(lab, actors, capacity,
                                                                      style, point):
    """An entry's position is its consumer's only once it has joined: pylabhub's consumer
    stores its join position (the latest commit) after its pid CAS, counting itself and
    its first heartbeat. Commit 0; consumer D registers (position 0) and is killed; a
    predecessor reads id 0 (position 1) and leaves the C++ way (its position stays); a
    new consumer takes that entry and is paused right after its pid CAS (ours) or after
    counting itself and its first heartbeat (C++ order: registered in full, not joined
    yet): the entry shows position 1, one past the latest commit. cleanup clears D and must not raise
    read_index to 1 -- the joiner will store 0 and read id 0, which the producer could
    then overwrite -- so read_index stays at the latest commit, 0, and is never above the
    joiner's position once it has joined. A ring of one slot is the exception: there the
    producer would wait for ever behind consumers that have read everything, so read_index
    goes to the slowest position, 1 (the residual risk the rule accepts)."""
    name = lab.name()
    R.create(name, capacity=capacity, sync=L.ConsumerSync.SEQUENTIAL_SYNC).close()
    assert actors(name, [("producer",), ("publish", 1)]).wait_point()["event"] == "done"
    dead = actors(name, [("consumer", "dead")])
    dead.wait_point()
    before = actors(name, [("consumer", "before"), ("read", None), ("release",),
                           ("unregister", "cpp")])
    before.wait_point()                     # done: read id 0, left; its position stays 1
    img = image(name)
    assert (img.commit_index, img.read_index, img.consumer(1)["pid"]) == (0, 0, 0), img
    assert img.u(L.read_position(1), 8) == 1
    dead.kill()
    joiner = actors(name, [("consumer", "joiner")], pause=point, style=style)
    at = joiner.wait_point()
    assert at["consumer"] == 1 and image(name).u(L.read_position(1), 8) == 1, at
    out = E.cleanup(name)
    assert out["cleaned"] == 1, out
    raised = [r for r in out["reconciled"] if r["field"] == "read_index"]
    if capacity == 1:
        assert raised == [{"field": "read_index", "before": 0, "after": 1}], out
    else:
        assert raised == [] and image(name).read_index == 0, out
    joiner.resume()
    assert joiner.wait_point()["event"] == "done"
    img = image(name)
    assert img.consumer(1)["pid"] == joiner.pid and img.u(L.read_position(1), 8) == 0
    assert (img.read_index <= 0) == (capacity > 1), img.read_index


def test_sequential_keeps_its_shared_read_index(lab):
    """Sequential (shared read_index): a dead consumer's entry is cleared but read_index
    is not moved, whatever the positions say -- the next consumer resumes where the dead
    one stopped."""
    from .helpers import reaped_pid
    name = lab.name()
    with R.create(name, sync=L.ConsumerSync.SEQUENTIAL) as b:
        b.set("read_index", 3)
        b.set("write_index", 4)
        b.set(L.CONSUMER["consumer_pid"], reaped_pid(), L.consumer_entry(0))
        b.set("active_consumer_count", 1)
        b.set(L.READ_POSITION, 1, L.read_position(0))
        b.set(L.READ_POSITION, 7, L.read_position(1))
    d = E.diagnose(name)
    assert d["read_positions"]["policy"] == "SEQUENTIAL"
    assert d["read_positions"]["read_index"] == 3 and "positions" not in d["read_positions"]
    healed = E.heal(name)
    assert healed["cleanup"]["cleaned"] == 1
    assert image(name).read_index == 3


READER = """
import sys, threading, time
from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
b = R.attach(sys.argv[1])
c = R.Consumer(b, name="sync-reader")
print(c.index, flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
read = 0
while not stop.is_set():
    rs = c.acquire()
    if rs is not None:
        c.read(rs)
        c.release(rs)
        read += 1
    c.pulse()                 # a heartbeat every 2 ms, reading or not
    time.sleep(0.002)
c.unregister()
print(read, flush=True)
"""


def test_our_sequential_sync_producer_resumes_after_heal_under_heartbeats(lab, actors):
    """Our own Sequential_sync peers: consumer A registers and is killed idle (its
    position pins read_index at 0), consumer B reads everything in order and heartbeats
    every 2 ms, the producer blocks after `capacity` ids. heal (while B heartbeats)
    clears A and raises read_index toward B's position 4, to the latest commit 3: the
    producer goes on by itself and B reads every commit."""
    name = lab.name()
    R.create(name, capacity=4, sync=L.ConsumerSync.SEQUENTIAL_SYNC).close()
    idle = actors(name, [("consumer", "idle")])
    idle.wait_point()
    b_proc = subprocess.Popen([sys.executable, "-c", READER, name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        kb = int(b_proc.stdout.readline())
        prod = actors(name, [("producer",), ("publish", 8)])
        deadline = time.monotonic() + 30
        while image(name).write_index < 4 or image(name).commit_index != 3:
            assert time.monotonic() < deadline, "the producer never filled the ring"
            time.sleep(0.01)
        idle.kill()
        time.sleep(0.05)
        img = image(name)
        assert (img.write_index, img.read_index) == (4, 0), (img.write_index, img.read_index)
        d = E.diagnose(name)
        assert "read-index-held-by-dead-consumer" in [f["code"] for f in d["findings"]]
        healed = E.heal(name)
        assert {"field": "read_index", "before": 0, "after": 3} in \
            healed["cleanup"]["reconciled"], healed["cleanup"]      # the latest commit
        assert image(name).read_index >= 3                       # (B reads on meanwhile)
        assert prod.wait_point(30)["event"] == "done"        # went on by itself
        assert image(name).commit_index == 7
        deadline = time.monotonic() + 30
        while image(name).u(L.read_position(kb), 8) != 8:      # B catches up
            assert time.monotonic() < deadline, "B never read the last commit"
            time.sleep(0.01)
    finally:
        b_proc.stdin.write(b"\n")
        b_proc.stdin.flush()
        read = b_proc.stdout.readline()
        b_proc.wait(30)
    assert int(read) == 8, read
