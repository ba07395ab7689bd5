# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The slot-state table read in bulk: which slots are *plain*, which need a look.

A block of 65,536 slots is almost all plain slots: FREE or COMMITTED, no write lock, no
reader, no writer waiting. Such a slot carries nothing to explain, release or report
(the one rule, ``_status.judge_slot``, gives it no verdict; validation's state checks find
nothing in it), so it is counted, not turned into objects. This module reads the table
in hole-aware windows (:data:`_block.WINDOW` bytes, one ``pread`` each, a part of the
table that is a hole reads as FREE and idle without being read) and finds the other
slots with bulk operations of the standard library: the bytes of one field of every
entry in a window are one strided slice, OR-ed together as big integers, and the
non-zero bytes of the result are the slots to look at.

Why a bulk look is enough to skip a slot: a slot nobody is changing reads the same in
any look, and a slot a live process is changing at this moment is a transient that any
single look could miss anyway. A window is one ``pread`` (a copy by the kernel), so a
slot changing under it may read torn: a torn read either makes a slot look not plain
(it is then looked at one by one, and ``Scene.slot`` re-reads until two looks agree) or
shows one of the two plain values it passed between. Every slot acted on is re-read
on its own first (the stable-look rule); nothing is ever written from a bulk look.

A dry run's plan may already hold planned values for some entries (heal's earlier
steps): those slots are read through the plan, one by one, and counted as the plan
leaves them.
"""

from __future__ import annotations

from . import _layout as L
from ._block import WINDOW

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, Iterable, Iterator, List, Optional, Tuple

_E = L.SLOT_ENTRY_SIZE
_S = L.SlotState
#: Bytes of an entry that are zero in a plain slot: write_lock (0..7), reader_count
#: (8..11) and writer_waiting (13). slot_state (12) is FREE or COMMITTED; 14..15 are
#: padding and 16.. hold the generation and our evidence, which say nothing about it.
_ZERO_BYTES = tuple(range(0, 12)) + (13,)
_STATE = L.SLOT["slot_state"].offset
#: slot_state byte -> 0 when FREE or COMMITTED, else 1 (a state byte to look at)
_NOT_PLAIN_STATE = bytes(0 if b in (_S.FREE, _S.COMMITTED) else 1 for b in range(256))
STATE_NAMES = tuple(L.enum_name(_S, s) for s in sorted(_S))


class SlotScan:
    """One bulk look at a block's slot-state table.

    ``interesting``: sorted indexes of the slots that are not plain (see the module doc);
    ``counts``: slots per state name (``FREE``, ``WRITING``, ``COMMITTED``, ``DRAINING``,
    ``UNKNOWN`` for a state byte outside the format), slots in holes counted FREE;
    ``allocated``: slots whose entry lies in an allocated part of the table (the others
    were never written). ``runs`` maps each state of ``runs_of`` to its runs of
    consecutive allocated slots (``(first, stop)``), plain or not."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: Dict[str, int] = dict.fromkeys(STATE_NAMES + ("UNKNOWN",), 0)
        self.interesting: List[int] = []
        self.allocated = 0
        self.runs: Dict[int, List[Tuple[int, int]]] = {}

    @property
    def plain(self) -> int:
        return self.capacity - len(self.interesting)

    def slot_counts(self, listed: int) -> Dict[str, int]:
        """The ``slot_counts`` of a diagnosis: ``total``, ``plain``, ``listed`` (entries
        in ``slots``) and the count of each state."""
        out = {"total": self.capacity, "plain": self.plain, "listed": listed}
        out.update(self.counts)
        return out

    def in_runs(self, state: int, first: int = 0, stop: Optional[int] = None
                ) -> Iterator[int]:
        """Allocated slots in ``state`` (from ``runs``) within ``first .. stop``."""
        stop = self.capacity if stop is None else stop
        for a, b in self.runs.get(state, ()):
            yield from range(max(a, first), min(b, stop))


def _entry_windows(block, table: int, capacity: int) -> Iterator[Tuple[int, int]]:
    """``(first slot, slot count)`` of each window of allocated table entries, in order,
    at most ``WINDOW`` bytes each; an entry partly allocated is read whole."""
    per = WINDOW // _E
    done = 0                          # slots below this index are already covered
    for start, stop in block.data_extents(table, capacity * _E):
        first = max((start - table) // _E, done)
        end = min(capacity, -(-(stop - table) // _E))
        while first < end:
            n = min(per, end - first)
            yield first, n
            first += n
        done = max(done, end)


def not_plain(window: bytearray, n: int) -> List[int]:
    """Positions (0 .. n-1) of the first ``n`` entries of ``window`` that are not plain:
    a strided slice per field byte (a C loop), OR-ed as one big integer per window.
    ``window`` is a bytearray (its strided slices are fast; a memoryview's are not)."""
    end = n * _E
    acc = 0
    for off in _ZERO_BYTES:
        acc |= int.from_bytes(window[off:end:_E], "little")
    acc |= int.from_bytes(window[_STATE:end:_E].translate(_NOT_PLAIN_STATE), "little")
    if not acc:
        return []
    return positions_not(acc.to_bytes(n, "little"), 0)


def _add_runs(runs: Dict[int, List[Tuple[int, int]]], states: bytes, first: int) -> None:
    """Each state's runs in one window's state bytes, joined to the run before across
    windows: the bytes marked 1 where the state is (``translate``), and each run found
    by two ``find`` calls (C loops), so the cost is per run, not per slot (a regular
    expression per state tried every position: a millisecond per window of 16,384)."""
    for state, found in runs.items():
        marks = states.translate(_table(state, True))
        start = marks.find(1)
        while start >= 0:
            stop = marks.find(0, start)
            stop = len(marks) if stop < 0 else stop
            a, b = first + start, first + stop
            if found and found[-1][1] == a:
                found[-1] = (found[-1][0], b)
            else:
                found.append((a, b))
            start = marks.find(1, stop)


def positions_not(data: bytes, value: int) -> List[int]:
    """Indexes of the bytes of ``data`` that are not ``value``: one ``translate`` and a
    ``find`` per hit (C loops; what a regular expression did, without importing ``re``,
    which costs a small command milliseconds)."""
    marks = data.translate(_table(value, False))
    out = []
    at = marks.find(1)
    while at >= 0:
        out.append(at)
        at = marks.find(1, at + 1)
    return out


_MARKS: Dict[Tuple[int, bool], bytes] = {}


def _table(value: int, equal: bool) -> bytes:
    """The ``translate`` table marking (1) the bytes that are ``value`` (``equal``) or
    that are not; the other bytes 0."""
    key = (value, equal)
    if key not in _MARKS:
        _MARKS[key] = bytes(int((b == value) == equal) for b in range(256))
    return _MARKS[key]


#: The states whose runs a scan records: FREE (FREE slots pylabhub's check may fail),
#: COMMITTED and DRAINING (the slots validate hashes).
RUN_STATES = (_S.FREE, _S.COMMITTED, _S.DRAINING)


def scan_slots(plan, runs_of: Iterable[int] = RUN_STATES) -> SlotScan:
    """Read the slot-state table of ``plan.block`` in bulk (see the module doc).

    ``plan``: a :class:`_plan.Plan` (entries it holds planned values for are read through
    it) or a bare :class:`_block.Block`. Peak memory: one window, plus the indexes found."""
    block = getattr(plan, "block", plan)
    geo = block.geo
    out = SlotScan(geo.capacity)
    out.runs = {s: [] for s in runs_of}
    buf = bytearray(min(WINDOW, geo.capacity * _E))
    counts = [0] * 256
    for first, n in _entry_windows(block, geo.slot_table, geo.capacity):
        block.pread_into(memoryview(buf)[:n * _E], geo.slot_entry(first))
        out.interesting.extend(first + k for k in not_plain(buf, n))
        states = bytes(buf[_STATE:n * _E:_E])
        for s in range(len(_S)):
            counts[s] += states.count(s)
        if out.runs:
            _add_runs(out.runs, states, first)
        out.allocated += n
    known = sum(counts[:len(_S)])
    for s in sorted(_S):
        out.counts[STATE_NAMES[s]] = counts[s]
    out.counts["UNKNOWN"] = out.allocated - known
    out.counts["FREE"] += geo.capacity - out.allocated
    planned = _planned_slots(plan, geo)
    if planned:
        _recount(plan, out, planned, counts_from=block)
    return out


def _planned_slots(plan, geo) -> List[int]:
    if not hasattr(plan, "planned"):
        return []
    low = geo.slot_table
    return sorted({(off - low) // _E for off in plan.planned(low, geo.slot_entry(geo.capacity))})


def _recount(plan, out: SlotScan, planned: List[int], counts_from) -> None:
    """Slots the plan holds planned words for: counted by the plan's words, and looked at."""
    geo = counts_from.geo
    field = L.SLOT["slot_state"]
    for i in planned:
        base = geo.slot_entry(i)
        before = counts_from.get(field, base)
        after = plan.get(field, base)
        out.counts[_name(before)] -= 1
        out.counts[_name(after)] += 1
    out.interesting = sorted(set(out.interesting) | set(planned))


def _name(state: int) -> str:
    return STATE_NAMES[state] if state < len(STATE_NAMES) else "UNKNOWN"
