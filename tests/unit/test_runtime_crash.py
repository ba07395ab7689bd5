"""Real processes SIGKILLed at each protocol point leave exactly the bytes the protocol
(spec section 4) and our evidence (docs/architecture.md) say -- read with plh_spec, not
through the core -- and _liveness then judges the dead holder dead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _layout as L, _liveness, _procinfo, _runtime as R)

import plh_spec as spec
from plh_spec import COMMITTED, DRAINING, WRITING, Image

N, S = 2, 256
OLD = [bytes([0xA0 + i]) * 50 for i in range(N)]     # committed by the parent first

CHILD = textwrap.dedent("""
    import os, sys, time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
    name, what = sys.argv[1], sys.argv[2]
    b = R.attach(name)
    stride = b.geo.stride

    def ready(extra=""):
        sys.stdout.write("ready %s\\n" % extra)
        sys.stdout.flush()

    if what == "locked":
        p = R.Producer(b); ws = p.acquire(); ready(ws.index)
    elif what == "midwrite":
        p = R.Producer(b); ws = p.acquire(); p.write(ws, b"\\xab" * 100); ready(ws.index)
    elif what == "precommit":
        p = R.Producer(b); ws = p.acquire()
        p.write(ws, bytes(i % 251 for i in range(stride))); ready(ws.index)
    elif what == "reading":
        c = R.Consumer(b, name="rdr", uid="UID-R"); rs = c.acquire(); ready(rs.index)
    elif what == "registered":
        c = R.Consumer(b, name="cons-x", uid="UID-C"); ready(c.index)
    elif what == "draining":
        p = R.Producer(b); ready(); p.acquire(timeout=None)
    elif what == "everything":
        p = R.Producer(b); p.publish(b"z" * 10)
        c = R.Consumer(b, name="c", uid="u"); rs = c.acquire()
        ws = p.acquire(); p.write(ws, b"w" * 10); ready(ws.index)
    time.sleep(600)
""")


def shm(name):
    return os.path.join("/dev/shm", name)


@pytest.fixture
def children():
    """Start child processes; SIGKILL and reap whatever is left afterwards."""
    procs = []

    def start(name, what):
        p = subprocess.Popen([sys.executable, "-c", CHILD, name, what],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()


def wait_ready(p, timeout=20.0):
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        p.kill()
        pytest.fail("child never became ready: %s" % p.stderr.read().decode())
    line = p.stdout.readline().decode()
    if not line.startswith("ready"):
        p.wait()
        pytest.fail("child failed: %r %s" % (line, p.stderr.read().decode()))
    rest = line.split()[1:]
    return int(rest[0]) if rest else None


def kill(p):
    """SIGKILL and reap: afterwards the pid has no process."""
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL


@pytest.fixture
def ring(shm_name):
    """A block (evidence on) with slots 0 and 1 committed by this process."""
    blk = R.create(shm_name, capacity=N, stride=S)
    p = R.Producer(blk)
    for data in OLD:
        p.publish(data)
    yield shm_name, blk
    blk.close()


def writer_scenario(ring, children, what):
    name = ring[0]
    before = Image.read(shm(name))
    t0 = time.monotonic_ns()
    p = children(name, what)
    index = wait_ready(p)
    t1 = time.monotonic_ns()
    start = spec.start_ticks(p.pid)
    alive = Image.read(shm(name))
    ev = alive.slot(index)
    v = _liveness.judge(p.pid, recorded_start_ticks=ev["ev_start"],
                        recorded_boot_id=alive.ev_boot_id, since_ns=ev["ev_locked_ns"])
    assert v.state == _liveness.ALIVE, v          # the same judgement must flip on death
    kill(p)
    after = Image.read(shm(name))
    assert after.data == alive.data, "a SIGKILLed child cannot have written more"
    assert index == 0                              # slot id 2 wraps onto slot 0
    sl = after.slot(0)
    assert sl["lock"] == p.pid and sl["state"] == WRITING and sl["readers"] == 0
    assert sl["waiting"] == 0
    assert sl["generation"] == before.slot(0)["generation"] == 1          # no commit
    assert after.write_index == before.write_index + 1 == 3
    assert after.commit_index == before.commit_index == 1
    assert after.total_slots_written == 2
    assert after.checksum(0) == before.checksum(0)                        # not rewritten
    assert after.slot(1) == before.slot(1) and after.slot_data(1) == before.slot_data(1)
    # evidence: who locked, which incarnation, when
    assert sl["ev_pid"] == p.pid and sl["ev_start"] == start
    assert t0 <= sl["ev_locked_ns"] <= t1 and sl["ev_locked_ns"] <= sl["ev_changed_ns"] <= t1
    assert after.ev_producer_pid == p.pid and after.ev_producer_start == start
    assert after.producer_pid == p.pid and t0 <= after.producer_ns <= t1
    assert after.ev_boot_id == _procinfo.boot_id()
    v = _liveness.judge(p.pid, recorded_start_ticks=sl["ev_start"],
                        recorded_boot_id=after.ev_boot_id, since_ns=sl["ev_locked_ns"])
    assert v.is_dead, v
    v = _liveness.judge(after.producer_pid, heartbeat_ns=after.producer_ns,
                        recorded_start_ticks=after.ev_producer_start)
    assert v.is_dead, v
    return before, after


def test_killed_holding_the_write_lock_before_writing(ring, children):
    before, after = writer_scenario(ring, children, "locked")
    assert after.slot_data(0) == before.slot_data(0)                      # nothing written
    assert after.checksum_valid(0)                                        # old data, old sum


def test_killed_mid_write(ring, children):
    before, after = writer_scenario(ring, children, "midwrite")
    assert after.slot_data(0) == b"\xab" * 100 + before.slot_data(0)[100:]   # partial
    assert not after.checksum_valid(0)            # stale checksum: now detectably torn


def test_killed_before_commit(ring, children):
    before, after = writer_scenario(ring, children, "precommit")
    assert after.slot_data(0) == bytes(i % 251 for i in range(S))        # all written
    assert after.checksum(0)[0] == spec.blake(before.slot_data(0))       # not yet summed
    assert after.checksum(0)[0] != spec.blake(after.slot_data(0))


def test_killed_reader_inside_a_slot(ring, children):
    name = ring[0]
    before = Image.read(shm(name))
    p = children(name, "reading")
    index = wait_ready(p)
    start = spec.start_ticks(p.pid)
    kill(p)
    after = Image.read(shm(name))
    assert index == 1                                   # the latest commit (slot id 1)
    sl = after.slot(1)
    assert (sl["readers"], sl["state"], sl["lock"]) == (1, COMMITTED, 0)
    assert after.slot(0) == before.slot(0)
    entry = after.consumer(0)
    assert (entry["pid"], entry["name"], entry["uid"]) == (p.pid, "rdr", "UID-R")
    assert after.active_consumers == 1
    ev = after.consumer_evidence(0)
    assert ev == {"pid": p.pid, "start": start, "reading": 1 + 1}         # slot id + 1
    assert _liveness.judge(ev["pid"], recorded_start_ticks=ev["start"],
                           recorded_boot_id=after.ev_boot_id,
                           heartbeat_ns=entry["heartbeat_ns"]).is_dead


def test_killed_registered_consumer(ring, children):
    name = ring[0]
    t0 = time.monotonic_ns()
    p = children(name, "registered")
    k = wait_ready(p)
    t1 = time.monotonic_ns()
    start = spec.start_ticks(p.pid)
    v = _liveness.judge(p.pid, recorded_start_ticks=start)
    assert v.state == _liveness.ALIVE, v
    kill(p)
    after = Image.read(shm(name))
    assert k == 0
    entry = after.consumer(0)
    assert (entry["pid"], entry["name"], entry["uid"]) == (p.pid, "cons-x", "UID-C")
    assert t0 <= entry["heartbeat_ns"] <= t1
    assert after.active_consumers == 1 and after.consumer(1)["pid"] == 0
    assert after.consumer_evidence(0) == {"pid": p.pid, "start": start, "reading": 0}
    assert all(after.slot(i)["readers"] == 0 for i in range(N))
    v = _liveness.judge(entry["pid"], recorded_start_ticks=start,
                        recorded_boot_id=after.ev_boot_id, heartbeat_ns=entry["heartbeat_ns"])
    assert v.is_dead, v


def test_killed_writer_waiting_for_a_reader_to_drain(ring, children):
    name, blk = ring
    reader = R.Consumer(blk, name="parent")
    rs = reader.acquire(0)                            # this process reads slot 0
    assert rs is not None
    before = Image.read(shm(name))
    p = children(name, "draining")
    wait_ready(p)
    deadline = time.monotonic() + 20
    while True:                                        # the writer blocks inside acquire
        now = Image.read(shm(name))
        if now.slot(0)["state"] == DRAINING and now.slot(0)["lock"] == p.pid:
            break
        assert time.monotonic() < deadline, now.slot(0)
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.01)
    time.sleep(0.05)                                   # still waiting: readers never drain
    start = spec.start_ticks(p.pid)
    kill(p)
    after = Image.read(shm(name))
    sl = after.slot(0)
    assert (sl["state"], sl["waiting"], sl["lock"], sl["readers"]) == (DRAINING, 1, p.pid, 1)
    assert sl["generation"] == 1 and after.slot_data(0) == before.slot_data(0)
    assert after.checksum_valid(0)
    assert (after.write_index, after.commit_index) == (3, 1)
    assert sl["ev_pid"] == p.pid and sl["ev_start"] == start
    assert after.consumer_evidence(0)["reading"] == 1                   # our reader, slot 0
    assert _liveness.judge(p.pid, recorded_start_ticks=start,
                           since_ns=sl["ev_locked_ns"]).is_dead
    reader.release(rs)
    assert Image.read(shm(name)).slot(0)["readers"] == 0


def test_no_evidence_bytes_without_evidence(shm_name, children):
    blk = R.create(shm_name, capacity=N, stride=S, evidence=False)
    try:
        assert not blk.has_evidence
        p = children(shm_name, "everything")
        index = wait_ready(p)
        kill(p)
        img = Image.read(shm(shm_name))
        # the protocol words are all there ...
        assert img.slot(index)["lock"] == p.pid and img.slot(index)["state"] == WRITING
        assert img.consumer(0)["pid"] == p.pid and img.active_consumers == 1
        assert img.slot(0)["readers"] == 1 and img.producer_pid == p.pid
        # ... and none of ours, like a block of the C++ library
        assert not any(img.evidence_area), "header 2640..4095 must stay zero"
        for i in range(N):
            assert img.slot(i)["tail"] == bytes(40), "slot %d +24..+63 must stay zero" % i
        # without evidence liveness still sees the death (plain kill(pid, 0))
        assert _liveness.judge(p.pid).is_dead
    finally:
        blk.close()


def test_runtime_records_evidence_for_itself(ring):
    """The counterpart of the test above, in-process: evidence is written when enabled."""
    name, blk = ring
    img = Image.read(shm(name))
    assert img.ev_marker_bytes == b"PLRE" and img.ev_version == 1
    assert img.ev_producer_pid == os.getpid()
    assert img.slot(0)["ev_pid"] == os.getpid()
    assert img.slot(0)["ev_start"] == spec.start_ticks(os.getpid())
    assert blk.get("ev_marker") == L.EVIDENCE_MARKER
