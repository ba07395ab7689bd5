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
  cores; the Python work per slot is one constructor, one digest, one comparison. The
  threads are the caller's and plain helpers (:func:`hash_slots`), one per CPU the
  process may use, and only for slots of :data:`PARALLEL_MIN_STRIDE` or more.
"""

from __future__ import annotations

import bisect
import os

from . import _layout as L

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
    #: (slot, (write_lock, write_generation, slot_state) before hashing, stored hash, digest)
    Odd = Tuple[int, Tuple[int, int, int], bytes, bytes]
    Progress = Optional[Callable[[int, int], None]]

_E = L.SLOT_ENTRY_SIZE
_C = L.CHECKSUM_ENTRY_SIZE
#: Bytes read per ``pread`` when hashing: small enough to stay in a core's L2 cache
#: (copy in, hash from cache), large enough that the calls cost nothing.
HASH_WINDOW = 64 << 10
#: The smallest slot hashed by more than one thread. ``hashlib`` lets go of the GIL for
#: each slot's hash and takes it back after; with small slots the threads spend their
#: time handing the GIL to each other. Measured on 256 MiB (2 cores, docs/performance.md):
#: 4 KiB slots hashed by two threads took 5 % less wall time than one thread for 43 % more
#: CPU, 8 KiB slots 11 % less for 40 % more, 16 KiB slots 32 % less for 15 % more.
PARALLEL_MIN_STRIDE = 16 << 10
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
        self.block = block
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

    def digests(self, first: int, n: int, buf: memoryview) -> List[bytes]:
        """Digests of slots ``first .. first+n`` (their data read after the caller read
        their entries), read through ``buf`` (the calling thread's, HASH_WINDOW bytes)."""
        block, geo = self.block, self.block.geo
        stride, start = geo.stride, geo.slot_data(first)
        if not self._allocated(start, n * stride):      # holes: never read them
            return [block.digest(geo.slot_data(first + j), stride) for j in range(n)]
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

    def batch(self, run: Tuple[int, int], buf: memoryview) -> List[Odd]:
        first, n = run
        geo = self.block.geo
        entries = self.block.read(geo.slot_entry(first), n * _E)
        sums = self.block.read(geo.checksum_entry(first), n * _C)
        digests = self.digests(first, n, buf)
        odd = [j for j in range(n) if digests[j] != sums[j * _C:j * _C + L.HASH_SIZE]]
        return [(first + j, (_u64(entries, j * _E), _u64(entries, j * _E + 16),
                             entries[j * _E + 12]),
                 sums[j * _C:j * _C + L.HASH_SIZE], digests[j]) for j in odd]


def workers_for(runs: int, stride: int) -> int:
    """Threads that hash: one per CPU this process may run on (its affinity, not the
    machine's count: a pinned process gains nothing from a second thread), at most 4,
    at most one per batch - and one alone for slots under :data:`PARALLEL_MIN_STRIDE`."""
    if stride < PARALLEL_MIN_STRIDE:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # pragma: no cover - Linux has it
        cpus = os.cpu_count() or 1
    return max(1, min(runs, cpus, 4))


def hash_slots(block, ranges: Sequence[Tuple[int, int]], progress: Progress = None
               ) -> List[Odd]:
    """Hash every slot of ``ranges`` (sorted, disjoint ``(first, stop)``) and return the
    odd ones, in slot order: a stored checksum that is missing (all zero) or does not
    match, each with the words read before its data was hashed. ``progress(done_bytes,
    total_bytes)`` is called in this thread as batches finish.

    This thread hashes too, beside :func:`workers_for` - 1 helper threads taking the next
    batch from a shared counter (a thread pool would load ``concurrent.futures`` and
    ``logging``: about a third of validate's start-up, issue 14). An error in any thread
    stops the others taking batches and is raised here; so is Ctrl-C, after the helpers
    finish the batch they hold (at most :data:`BATCH_BYTES` each)."""
    stride = block.geo.stride
    runs = batches(ranges, stride)
    if not runs:
        return []
    hasher = _Hasher(block, runs[0][0], runs[-1][0] + runs[-1][1])
    results = [None] * len(runs)    # type: List[Optional[List[Odd]]]
    total = sum(n for dummy, n in runs) * stride
    import threading        # validate only: not at start-up
    lock = threading.Lock()
    shared = {"next": 0, "done": 0, "stop": False}  # type: Dict[str, Any]
    errors = []             # type: List[BaseException]

    def work(report: Progress) -> None:
        buf = memoryview(bytearray(HASH_WINDOW))     # this thread's own
        while True:
            with lock:
                k = shared["next"]
                if shared["stop"] or k >= len(runs):
                    return
                shared["next"] = k + 1
            try:
                results[k] = hasher.batch(runs[k], buf)
            except BaseException as exc:    # pylint: disable=broad-except
                with lock:
                    shared["stop"] = True
                    errors.append(exc)
                return
            with lock:
                shared["done"] += runs[k][1] * stride
                done = shared["done"]
            if report:
                report(done, total)

    helpers = [threading.Thread(target=work, args=(None,), name="plh-hash-%d" % n,
                                daemon=True)
               for n in range(workers_for(len(runs), stride) - 1)]
    try:
        for helper in helpers:
            try:
                helper.start()
            except RuntimeError:    # no thread to be had (a limit): fewer helpers, same result
                break
        work(progress)
    finally:
        with lock:
            shared["stop"] = True       # no new batch; a helper finishes the one it holds
        for helper in helpers:
            if helper.ident is not None:
                helper.join()
    if errors:
        raise errors[0]
    if progress and helpers:
        progress(total, total)          # the helpers may have finished the last batches
    return [odd for found in results for odd in found or ()]
