"""Issue 14: the slot-state table is scanned in bulk and only slots that are not plain are
explained; ``--slot N`` costs one slot. Real blocks in /dev/shm, reads counted in a child
process that records every ``pread`` of the block. Nothing here is timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _engine as E, _layout as L, _runtime as R, _scan)

from ansible_collections.pylabhub.recovery.tests.support import kernel_extents

from .helpers import DEAD_PID, payload

SHM = "/dev/shm"
FREE, WRITING, COMMITTED, DRAINING = 0, 1, 2, 3


def _entry(lock=0, readers=0, state=FREE, waiting=0, generation=0) -> bytes:
    return (lock.to_bytes(8, "little") + readers.to_bytes(4, "little")
            + bytes([state, waiting, 0, 0]) + generation.to_bytes(8, "little") + bytes(40))


def _committed_block(name: str, capacity: int, committed: int, stride: int = 4096,
                     wrapped: bool = False) -> R.Block:
    """A block whose first ``committed`` slots hold checksummed data (slots 0..n-1),
    the rest FREE and never written (holes)."""
    block = R.create(name, capacity=capacity, stride=stride)
    geo = block.geo
    table, sums = bytearray(), bytearray()
    for i in range(committed):
        data = payload(i, stride)
        block.write(geo.slot_data(i), data)
        table += _entry(state=COMMITTED, generation=1)
        sums += L.blake2b256(data) + b"\0"
    if committed:
        block.write(geo.slot_table, bytes(table))
        block.write(geo.checksum_table, bytes(sums))
        block.set("write_index", committed)
        block.set("commit_index", committed - 1)
        block.set("total_slots_written", capacity if wrapped else committed)
    return block


def _by_index(diag: dict) -> dict:
    return {s["index"]: s for s in diag["slots"]}


def test_healthy_65536_slot_block_json_stays_small(shm_name):
    """The issue's geometry: 65,536 slots x 4 KiB, 100 committed. The answer lists no slot
    (all plain), counts them all, and its JSON is a few KiB, not megabytes."""
    _committed_block(shm_name, 65536, 100).close()
    diag = E.diagnose(shm_name)
    text = json.dumps(diag)
    assert diag["healthy"] and diag["slots"] == [] and diag["slots_listed"] == "not_plain"
    assert diag["slot_counts"] == {"total": 65536, "plain": 65536, "listed": 0, "FREE": 65436,
                                   "WRITING": 0, "COMMITTED": 100, "DRAINING": 0,
                                   "UNKNOWN": 0}
    assert len(text) < 8192, len(text)
    # one stuck slot: it alone is listed, and the JSON stays small
    with B.open_block(shm_name, writable=True) as block:
        base = block.geo.slot_entry(70)
        block.set(L.SLOT["write_lock"], DEAD_PID, base)
        block.set(L.SLOT["slot_state"], WRITING, base)
    diag = E.diagnose(shm_name)
    assert diag["stuck_slots"] == [70] and [s["index"] for s in diag["slots"]] == [70]
    assert diag["slot_counts"]["plain"] == 65535 and diag["slot_counts"]["listed"] == 1
    assert len(json.dumps(diag)) < 8192
    # heal and validate judge it the same way (the one rule), from the same bulk scan
    assert E.validate(shm_name)["stuck_slots"] == [70]
    assert E.heal(shm_name, dry_run=True)["health"] == "healthy"


def test_all_slots_lists_every_slot(shm_name):
    _committed_block(shm_name, 16, 3).close()
    diag = E.diagnose(shm_name, all_slots=True)
    assert [s["state"] for s in diag["slots"]] == ["COMMITTED"] * 3 + ["FREE"] * 13
    assert diag["slots_listed"] == "all" and diag["slot_counts"]["listed"] == 16
    assert E.diagnose(shm_name)["slots"] == []


# Entries that are not plain, each by one byte only (the high byte of a lock or a count
# too), placed at window edges (a window holds WINDOW // 64 = 16384 entries).
ODD = {
    0: _entry(lock=1 << 56, state=COMMITTED, generation=3),
    16383: _entry(readers=1 << 24, state=COMMITTED),
    16384: _entry(state=WRITING),
    16385: _entry(state=DRAINING, lock=5),
    40000: _entry(waiting=1, state=COMMITTED),
    50000: _entry(state=7),
    65535: _entry(state=FREE, readers=1),
}


def _runs_one_by_one(states, state):
    """The runs ``(first, stop)`` of ``state``, slot by slot."""
    runs = []
    for i, s in enumerate(states):
        if s != state:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def test_bulk_scan_finds_every_slot_that_is_not_plain(shm_name):
    """A fully allocated 65,536-entry table (four windows): the bulk scan names exactly
    the entries a slot-by-slot reading calls not plain, and counts every state."""
    block = R.create(shm_name, capacity=65536, stride=64)
    try:
        table = bytearray(_entry(state=COMMITTED, generation=9) * 65536)
        for i in range(0, 65536, 3):
            table[i * 64 + 12] = FREE              # plain FREE slots among them
        for i, raw in ODD.items():
            table[i * 64:(i + 1) * 64] = raw
        block.write(block.geo.slot_table, bytes(table))
    finally:
        block.close()
    with B.open_block(shm_name) as block:
        scan = _scan.scan_slots(block)
    assert scan.interesting == sorted(ODD)
    states = [table[i * 64 + 12] for i in range(65536)]
    assert scan.counts == {"FREE": states.count(FREE), "WRITING": 1, "COMMITTED":
                           states.count(COMMITTED), "DRAINING": 1, "UNKNOWN": 1}
    assert scan.allocated == 65536
    assert list(scan.in_runs(DRAINING)) == [16385]
    for state in _scan.RUN_STATES:                 # runs joined across the four windows
        assert scan.runs[state] == _runs_one_by_one(states, state), state
    diag = E.diagnose(shm_name)
    assert sorted(_by_index(diag)) == sorted(ODD)
    assert {f["slot"] for f in diag["findings"] if f.get("slot") is not None} <= set(ODD)


_READS = r"""
import json, os, sys
path, slot = sys.argv[1], sys.argv[2]
reads = []
real_pread, real_preadv = os.pread, os.preadv


def _mine(fd):
    try:
        return os.readlink("/proc/self/fd/%d" % fd) == path
    except OSError:
        return False


def pread(fd, n, off):
    if _mine(fd):
        reads.append((off, n))
    return real_pread(fd, n, off)


def preadv(fd, bufs, off):
    if _mine(fd):
        reads.append((off, sum(len(b) for b in bufs)))
    return real_preadv(fd, bufs, off)


os.pread, os.preadv = pread, preadv
from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
result = E.diagnose(os.path.basename(path), slot=None if slot == "-" else int(slot))
print(json.dumps({"reads": reads, "stuck": result["stuck_slots"],
                  "codes": sorted(f["code"] for f in result["findings"])}))
"""


def _reads(name: str, slot) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", _READS, os.path.join(SHM, name),
                          "-" if slot is None else str(slot)],
                         capture_output=True, text=True, env=env, check=True, timeout=120)
    return json.loads(out.stdout)


def _data_slots(geo: L.Geometry, reads) -> set:
    """The slots whose data bytes a list of (offset, size) reads touched."""
    touched = set()
    for off, size in reads:
        lo, hi = max(off, geo.ring_offset), min(off + size, geo.ring_offset
                                                + geo.capacity * geo.stride)
        if lo < hi:
            touched.update(range((lo - geo.ring_offset) // geo.stride,
                                 (hi - 1 - geo.ring_offset) // geo.stride + 1))
    return touched


@pytest.mark.parametrize("slot", [5, 2])
def test_one_slot_reads_no_other_slots_data(shm_name, slot):
    """``diagnose --slot N`` reads the header, the state table (the bulk scan), checksums
    and slot N's data: never another slot's data, although the whole-block diagnosis must
    hash the FREE slots of a wrapped ring (pylabhub's check covers them). The control run
    proves the counting sees those reads."""
    block = _committed_block(shm_name, 16, 16, wrapped=True)
    geo = block.geo
    try:
        for i in (4, 5, 6, 9):                     # FREE, torn, with a stale checksum
            block.set(L.SLOT["slot_state"], FREE, geo.slot_entry(i))
            block.write(geo.slot_data(i) + 100, b"torn")
        base = geo.slot_entry(2)                   # a dead writer holds slot 2
        block.set(L.SLOT["write_lock"], DEAD_PID, base)
        block.set(L.SLOT["slot_state"], WRITING, base)
    finally:
        block.close()
    whole = _reads(shm_name, None)
    assert _data_slots(geo, whole["reads"]) >= {4, 5, 6, 9}
    assert whole["codes"].count("uncommitted-checksum-mismatch") == 4
    one = _reads(shm_name, slot)
    assert _data_slots(geo, one["reads"]) <= {slot}
    assert one["stuck"] == [2] == whole["stuck"]         # the jam elsewhere is still named
    assert "uncommitted-not-hashed" in one["codes"]


_PEAK = r"""
import json, sys
from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
name = sys.argv[1]
E.diagnose(name)                         # both imported and warmed before the baseline
E.validate(name, max_bytes=1 << 30)


def hwm():
    with open("/proc/self/status") as f:
        return int([l.split()[1] for l in f if l.startswith("VmHWM:")][0])


base = hwm()
out = {}
for op in ("diagnose", "validate"):
    for arg in sys.argv[2:]:
        if op == "diagnose":
            E.diagnose(arg)
        else:
            E.validate(arg, max_bytes=1 << 30)
    out[op] = hwm() - base
print(json.dumps(out))
"""


def test_peak_memory_does_not_grow_with_the_block(shm_name):
    """Peak RSS of diagnose and validate over a 65,536-slot block holding 256 MiB of
    committed data (its whole slot table allocated) stays within the slot-state table
    (4 MiB) plus a fixed window of what the same calls need for a 4-slot block."""
    small = shm_name + "_small"
    _committed_block(small, 4, 4, wrapped=True).close()
    try:
        _committed_block(shm_name, 65536, 65536, wrapped=True).close()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        out = subprocess.run([sys.executable, "-c", _PEAK, small, shm_name], env=env,
                             capture_output=True, text=True, check=True, timeout=600)
        grown = json.loads(out.stdout)
        table_kib = 65536 * L.SLOT_ENTRY_SIZE // 1024
        for op, kib in grown.items():
            assert kib <= table_kib + 8 * 1024, (op, kib)    # not 256 MiB
    finally:
        os.unlink(os.path.join(SHM, small))


def test_budget_counts_the_slots_that_are_not_plain(shm_name):
    """A table whose every slot needs a look costs 4 KiB a slot, counted once the bulk
    scan found them: over ``max_bytes`` diagnose refuses and says why; a plain block of
    the same geometry is within the same budget."""
    block = R.create(shm_name, capacity=64, stride=64)
    try:
        block.write(block.geo.slot_table, _entry(lock=DEAD_PID, state=WRITING) * 64)
    finally:
        block.close()
    with pytest.raises(E.OverBudget) as err:
        E.diagnose(shm_name, max_bytes=128 << 10)
    assert "64 slots are not plain" in str(err.value) and "\n" not in str(err.value)
    assert E.diagnose(shm_name, max_bytes=512 << 10)["stuck_slots"] == list(range(64))
    with B.open_block(shm_name, writable=True) as block:
        block.write(block.geo.slot_table, _entry(state=COMMITTED, generation=1) * 64)
    assert E.diagnose(shm_name, max_bytes=128 << 10)["slot_counts"]["plain"] == 64


def test_extents_of_a_block_with_and_without_holes(shm_name):
    """A block without a hole is one extent, found without walking it (issue 14: tmpfs
    answers SEEK_HOLE by walking every page to the next hole); one page left a hole
    anywhere is still found. The kernel's own walk is the reference."""
    block = _committed_block(shm_name, 64, 32)        # slots 32..63 never written
    path = os.path.join(SHM, shm_name)
    size = os.stat(path).st_size
    geo = block.geo
    ranges = [(0, size), (geo.slot_table, 64 * L.SLOT_ENTRY_SIZE), (geo.ring_offset, 64 * 4096),
              (geo.slot_data(5), 4096 + 100)]
    with B.open_block(shm_name) as ro:
        sparse = [list(ro.data_extents(*r)) for r in ranges]
    assert sparse == [kernel_extents(path, *r) for r in ranges]
    assert sparse[0] != [(0, size)]               # the check can fail: it has holes
    for page in range(0, size, L.PAGE):            # every page allocated: no hole left
        block.write(page, block.read(page, 1))
    last = geo.slot_data(63) + 4096 - L.PAGE
    with B.open_block(shm_name) as ro:
        assert [list(ro.data_extents(*r)) for r in ranges] == [[(o, o + n)] for o, n in ranges]
        assert list(ro.data_extents(0, 0)) == []
    block.close()
    # the ring's last page made a hole again: the extents end before it
    fd = os.open(path, os.O_RDWR)
    try:
        _punch(fd, last, L.PAGE)
    finally:
        os.close(fd)
    with B.open_block(shm_name) as ro:
        got = [list(ro.data_extents(*r)) for r in ranges]
    assert got == [kernel_extents(path, *r) for r in ranges]
    assert got[0] == [(0, last), (last + L.PAGE, size)] if last + L.PAGE < size else [(0, last)]


def _punch(fd: int, offset: int, size: int) -> None:
    """fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): the page becomes a hole."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, 0x02 | 0x01, offset, size) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")
