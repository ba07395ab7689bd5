"""validate's slot hasher (``_hashing.hash_slots``) on real blocks in /dev/shm, with the
threads it really starts: every slot of the ranges hashed once, the odd ones (a checksum
missing or not matching) returned in slot order with the words read before hashing,
holes hashed as zeros, progress reported in the calling thread up to the total, and an
error in any thread raised in the caller after every helper has stopped. Nothing is
timed (docs/performance.md has the figures that chose the threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _hashing as H, _layout as L, _runtime as R)

from .helpers import payload

COMMITTED = 2


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _block(name: str, capacity: int, stride: int, written: int, bad: dict) -> R.Block:
    """Slots 0..written-1 COMMITTED with their data and checksums, the rest COMMITTED but
    never written (holes: their data reads as zeros); ``bad`` maps a slot to what is
    wrong with it: "data" (a byte of its data changed after its checksum was stored),
    "missing" (no checksum stored) or "zeros" (a hole's slot given the checksum of zeros:
    it matches)."""
    block = R.create(name, capacity=capacity, stride=stride)
    geo = block.geo
    table, sums = bytearray(), bytearray()
    for i in range(capacity):
        data = payload(i, stride) if i < written else bytes(stride)
        if i < written:
            block.write(geo.slot_data(i), data)
        table += ((i % 3).to_bytes(8, "little") + bytes(4) + bytes([COMMITTED, 0, 0, 0])
                  + (i + 1).to_bytes(8, "little") + bytes(40))
        stored = L.blake2b256(data)
        if i >= written and bad.get(i) != "zeros":
            stored = L.blake2b256(payload(i, stride))      # a hole: it cannot match
        if bad.get(i) == "missing":
            stored = bytes(32)
        sums += stored + b"\0"
        if bad.get(i) == "data":
            block.write(geo.slot_data(i) + stride // 2, b"\xff")
    block.write(geo.slot_table, bytes(table))
    block.write(geo.checksum_table, bytes(sums))
    return block


def _expected(block: R.Block, first: int, stop: int) -> list:
    geo, out = block.geo, []
    for i in range(first, stop):
        data = block.read(geo.slot_data(i), geo.stride)
        stored = block.read(geo.checksum_entry(i), 32)
        if L.blake2b256(data) != stored:
            out.append((i, (i % 3, i + 1, COMMITTED), stored, L.blake2b256(data)))
    return out


@pytest.fixture
def hashed_batches(monkeypatch):
    """Per batch hashed, the thread that hashed it and the buffer it was read through
    (the real hasher, only its callers recorded; buffers kept, so no id is reused)."""
    seen = []
    real = H._Hasher.batch                 # pylint: disable=protected-access

    def batch(self, run, buf):
        seen.append((threading.get_ident(), buf.obj))
        return real(self, run, buf)
    monkeypatch.setattr(H._Hasher, "batch", batch)   # pylint: disable=protected-access
    return seen


@pytest.mark.parametrize("capacity,stride", [(4096, 4096), (192, 64 << 10), (24, 1 << 20)],
                         ids=["4KiB-one-thread", "64KiB-threads", "1MiB-windows"])
def test_every_slot_hashed_and_the_odd_ones_returned_in_order(shm_name, hashed_batches,
                                                              capacity, stride):
    per = max(1, H.BATCH_BYTES // stride)
    # odd slots in several batches, the first and last slots among them; the last batch
    # holds holes (never written): one of them carries the checksum of zeros (it matches)
    written = capacity - per // 2 - 1
    bad = {0: "data", per + 1: "missing", 2 * per: "data", written - 1: "missing",
           written: "zeros", capacity - 1: "data"}
    block = _block(shm_name, capacity, stride, written, bad)
    try:
        ranges = [(0, 3), (3, capacity)]                # adjacent ranges: batches restart
        with B.open_block(shm_name) as ro:
            progress = []
            got = H.hash_slots(ro, ranges, lambda done, total: progress.append(
                (done, total, threading.get_ident())))
        want = _expected(block, 0, capacity)
    finally:
        block.close()
    assert got == want
    # every hole but the one given the zeros' checksum is odd, and so is every bad slot
    assert [odd[0] for odd in got] == sorted(
        {i for i in bad if bad[i] != "zeros"} | set(range(written + 1, capacity)))
    total = capacity * stride
    assert progress[-1][:2] == (total, total)
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    assert {p[2] for p in progress} == {threading.get_ident()}
    batches = len(H.batches(ranges, stride))
    seen_threads = [thread for thread, dummy in hashed_batches]
    assert len(seen_threads) == batches > 2
    threads = H.workers_for(batches, stride)
    assert threads == (1 if stride < H.PARALLEL_MIN_STRIDE else min(_cpus(), 4))
    if threads > 1:         # the helpers took batches (the check can fail: one thread)
        assert len(set(seen_threads)) > 1, seen_threads
    else:
        assert set(seen_threads) == {threading.get_ident()}
    # each thread reads every batch it takes through one buffer of its own
    per_thread = {}
    for thread, buf in hashed_batches:
        per_thread.setdefault(thread, []).append(buf)
    own = [bufs[0] for bufs in per_thread.values()]
    assert all(all(b is bufs[0] for b in bufs) for bufs in per_thread.values())
    assert len({id(b) for b in own}) == len(own)
    assert all(len(b) == H.HASH_WINDOW for b in own)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for helpers")
@pytest.mark.parametrize("where", ["helper", "caller"])
def test_an_error_in_any_thread_is_raised_after_the_helpers_stop(shm_name, monkeypatch,
                                                                 where):
    """A batch that fails in a helper thread, or Ctrl-C in the caller's progress call:
    the error comes out of hash_slots, no hashing thread is left, no batch is started
    after it."""
    stride, capacity = 64 << 10, 1024                  # 16 batches
    block = _block(shm_name, capacity, stride, capacity, {})
    block.close()
    caller = threading.get_ident()
    started = []
    failed = threading.Event()
    real = H._Hasher.batch                 # pylint: disable=protected-access

    def batch(self, run, buf):
        started.append(run[0])
        if where == "helper":
            if threading.get_ident() != caller:
                failed.set()
                raise OSError(5, "injected read error")
            failed.wait(30)         # the caller's first batch ends after the failure
        return real(self, run, buf)
    monkeypatch.setattr(H._Hasher, "batch", batch)   # pylint: disable=protected-access

    def progress(done, total):
        if where == "caller":
            raise KeyboardInterrupt
    expected = OSError if where == "helper" else KeyboardInterrupt
    with B.open_block(shm_name) as ro, pytest.raises(expected):
        H.hash_slots(ro, [(0, capacity)], progress)
    assert not [t for t in threading.enumerate() if t.name.startswith("plh-hash")]
    runs = len(H.batches([(0, capacity)], stride))
    assert len(started) < runs, (started, runs)     # stopped before the end
    assert len(started) == len(set(started))


_AFFINITY = """
import os, sys
from ansible_collections.pylabhub.recovery.plugins.module_utils import _hashing as H
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
print(H.workers_for(100, 1 << 20), H.workers_for(100, 4096), H.workers_for(1, 1 << 20))
"""


def test_threads_follow_the_cpus_this_process_may_use():
    """Pinned to one CPU: one thread, whatever the machine has; small slots and a single
    batch: one thread anyway."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", _AFFINITY], capture_output=True, text=True,
                         env=env, check=True, timeout=60).stdout.split()
    assert out == ["1", "1", "1"]
    assert H.workers_for(100, 4096) == 1 and H.workers_for(1, 1 << 20) == 1
    assert H.workers_for(100, 1 << 20) == min(_cpus(), 4)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs for helpers")
def test_no_helper_thread_to_be_had_hashes_everything_in_the_callers(shm_name, monkeypatch,
                                                                     hashed_batches):
    """Where no thread can be started (a process or memory limit: ``Thread.start`` raises
    RuntimeError, as here), the calling thread hashes every batch: the same result."""
    stride, capacity = 64 << 10, 256
    block = _block(shm_name, capacity, stride, capacity, {5: "data", 200: "missing"})
    want = _expected(block, 0, capacity)
    block.close()

    def refuse(self):
        raise RuntimeError("can't start new thread")
    monkeypatch.setattr(threading.Thread, "start", refuse)
    with B.open_block(shm_name) as ro:
        got = H.hash_slots(ro, [(0, capacity)])
    assert got == want and [odd[0] for odd in got] == [5, 200]
    assert {thread for thread, dummy in hashed_batches} == {threading.get_ident()}
    assert len(hashed_batches) == len(H.batches([(0, capacity)], stride)) > 1
