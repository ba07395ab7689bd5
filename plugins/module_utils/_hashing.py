# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hash many committed slots fast: BLAKE2b-256 of each slot's stride, over both cores.

validate's hot path. Decisions (issue 14; docs/performance.md has the figures):

* **pread into a reused buffer, not a mapping.** Each worker thread owns one buffer of
  :data:`HASH_WINDOW` bytes and fills it with one ``preadv`` (one kernel copy), then
  hashes slices of it in place (``memoryview``: no Python copy). The buffer is sized to
  stay in the core's cache: measured, the kernel's copy into a 1 MiB buffer costs about
  three times the system time of a copy into 64-128 KiB, and the hash then reads from
  memory instead of cache. A read-only mapping of
  the extents ``SEEK_DATA`` calls allocated would save that copy, but a hole punched
  (or the file truncated) between the extent check and the access faults a page in,
  or kills us with SIGBUS, in a block we must not change; the copy costs a few per cent
  of hashing a window that then sits in the cache.
* **batches of consecutive slots**, each read with its state entries and checksum
  entries (one ``pread`` each) *before* its data is hashed, so the words a mismatch is
  settled against (``_validate._settle_slot``) are the ones seen before hashing. Only
  slots whose checksum is missing or does not match come back; a match costs a digest
  and a comparison, no object.
* **holes stay holes**: a batch whose data is not all allocated is hashed slot by slot
  through :meth:`_block.Block.digest` (zeros hashed without being read).
* ``hashlib`` releases the GIL while hashing more than 2 KiB, so two threads hash on two
  cores; the Python work per slot is one constructor, one digest, one comparison.
"""

from __future__ import annotations

import bisect
import os

from . import _layout as L

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable, List, Optional, Sequence, Tuple
    #: (slot, (write_lock, write_generation, slot_state) before hashing, stored hash, digest)
    Odd = Tuple[int, Tuple[int, int, int], bytes, bytes]
    Progress = Optional[Callable[[int, int], None]]

_E = L.SLOT_ENTRY_SIZE
_C = L.CHECKSUM_ENTRY_SIZE
#: Bytes read per ``pread`` when hashing: small enough to stay in a core's L2 cache
#: (copy in, hash from cache), large enough that the calls cost nothing.
HASH_WINDOW = 64 << 10
#: Data bytes per batch (many windows): few enough batches that scheduling costs
#: nothing, enough of them that both threads stay busy to the end.
BATCH_BYTES = 4 << 20


def _u64(raw: bytes, at: int) -> int:
    return int.from_bytes(raw[at:at + 8], "little")


def batches(ranges: Sequence[Tuple[int, int]], stride: int) -> List[Tuple[int, int]]:
    """``(first, count)`` runs of consecutive slots, each at most :data:`BATCH_BYTES` of
    data (at least one slot), from sorted, disjoint ``(first, stop)`` ranges."""
    per = max(1, BATCH_BYTES // stride)
    out: List[Tuple[int, int]] = []
    for first, stop in ranges:
        for a in range(first, stop, per):
            out.append((a, min(per, stop - a)))
    return out


class _Hasher:
    def __init__(self, block, first: int, stop: int) -> None:
        import threading        # validate only: not at start-up
        self.block = block
        self.local = threading.local()
        # The allocated extents of the data of slots first..stop, found once: SEEK_HOLE
        # on tmpfs walks the pages up to the next hole, so asking per batch would walk
        # the rest of a fully allocated ring again for every batch.
        geo = block.geo
        ranges = list(block.data_extents(geo.slot_data(first), (stop - first) * geo.stride))
        self.starts = [a for a, dummy in ranges]
        self.ends = [b for dummy, b in ranges]

    def _allocated(self, start: int, size: int) -> bool:
        """Whether ``start .. start+size`` lies in one allocated extent."""
        k = bisect.bisect_right(self.starts, start) - 1
        return k >= 0 and self.ends[k] >= start + size

    def _buffer(self) -> memoryview:
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = memoryview(bytearray(HASH_WINDOW))
        return buf

    def digests(self, first: int, n: int) -> List[bytes]:
        """Digests of slots ``first .. first+n`` (their data read after the caller read
        their entries)."""
        block, geo = self.block, self.block.geo
        stride, start = geo.stride, geo.slot_data(first)
        if not self._allocated(start, n * stride):      # holes: never read them
            return [block.digest(geo.slot_data(first + j), stride) for j in range(n)]
        buf = self._buffer()
        blake = L.blake2b()
        out: List[bytes] = []
        if stride <= HASH_WINDOW:
            per = HASH_WINDOW // stride
            for k in range(0, n, per):
                m = min(per, n - k)
                view = buf[:m * stride]
                block.pread_into(view, start + k * stride)
                out.extend(blake(view[j * stride:(j + 1) * stride],
                                 digest_size=L.HASH_SIZE).digest() for j in range(m))
            return out
        for j in range(n):
            h = blake(digest_size=L.HASH_SIZE)
            pos, end = start + j * stride, start + (j + 1) * stride
            while pos < end:
                view = buf[:min(HASH_WINDOW, end - pos)]
                block.pread_into(view, pos)
                h.update(view)
                pos += len(view)
            out.append(h.digest())
        return out

    def batch(self, run: Tuple[int, int]) -> List[Odd]:
        first, n = run
        geo = self.block.geo
        entries = self.block.read(geo.slot_entry(first), n * _E)
        sums = self.block.read(geo.checksum_entry(first), n * _C)
        digests = self.digests(first, n)
        odd = [j for j in range(n) if digests[j] != sums[j * _C:j * _C + L.HASH_SIZE]]
        return [(first + j, (_u64(entries, j * _E), _u64(entries, j * _E + 16),
                             entries[j * _E + 12]),
                 sums[j * _C:j * _C + L.HASH_SIZE], digests[j]) for j in odd]


def hash_slots(block, ranges: Sequence[Tuple[int, int]], progress: Progress = None
               ) -> List[Odd]:
    """Hash every slot of ``ranges`` (sorted, disjoint ``(first, stop)``) and return the
    odd ones: a stored checksum that is missing (all zero) or does not match, each with
    the words read before its data was hashed. ``progress(done_bytes, total_bytes)`` per
    batch."""
    stride = block.geo.stride
    runs = batches(ranges, stride)
    if not runs:
        return []
    total, done = sum(n for dummy, n in runs) * stride, 0
    workers = min(len(runs), os.cpu_count() or 1, 4)
    from concurrent.futures import ThreadPoolExecutor   # validate only: not at start-up
    hasher = _Hasher(block, runs[0][0], runs[-1][0] + runs[-1][1])
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    results = pool.map(hasher.batch, runs) if pool else map(hasher.batch, runs)
    odd: List[Odd] = []
    try:
        for run, found in zip(runs, results):
            odd.extend(found)
            done += run[1] * stride
            if progress:
                progress(done, total)
    finally:
        if pool:
            pool.shutdown()
    return odd
