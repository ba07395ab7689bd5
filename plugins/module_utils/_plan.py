# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every mutation of a block goes through a :class:`Plan`.

A plan reads the block through an *overlay* of the values it has planned so far, and
writes with compare-and-swap against the value it observed. In a real run the CAS goes to
shared memory; in a dry run it goes to the overlay only. Both runs execute the very same
code, so a dry run (Ansible check mode, ``--dry-run``) predicts exactly what the real run
does, and a multi-step operation (cleanup, then recover, then validate) sees in the dry
run what it would see after the earlier steps really happened.

A step is a group of CAS changes that belong together (one slot's release). If any CAS
of a step finds a value other than the observed one, a live process changed the word
under us: the step's earlier changes are undone with CAS and the step is reported as a
concurrent change; nothing is left half-done.

Kill safety: a recovery can be SIGKILLed between any two stores. Callers order a step's
stores so that every prefix is a state the next run recognises and finishes: the step
first *claims* what it changes (a slot's write lock -> our pid, which is a dead holder the
next run releases once we are gone), and releases the claim last. :meth:`rollback` undoes
in reverse order, so every prefix of a rollback is again a prefix of the step.
"""

from __future__ import annotations

import os
import time

from . import _layout as L
from ._block import Block
from ._errors import ConcurrentChange
from ._record import Record

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, List, Optional, Set, Tuple, Union
    Value = Union[int, bytes]


class Change(Record):
    """One word (or byte range) changed, or planned to change in a dry run."""

    __slots__ = ("target", "before", "after", "offset", "size", "atomic", "text", "scrubbed",
                 "seq")
    _no_repr = ("offset", "size", "atomic", "text", "scrubbed", "seq")
    __hash__ = None  # type: ignore[assignment]   # mutable
    target: str
    before: Value
    after: Value
    offset: int
    size: int
    atomic: bool
    text: bool                        # NUL-terminated text, shown as a string
    scrubbed: Optional[List[Tuple[int, bytes]]]
    seq: Optional[int]                # its line in the journal

    def __init__(self, target: str, before: Value, after: Value, offset: int = 0,
                 size: int = 0, atomic: bool = True, text: bool = False,
                 scrubbed: Optional[List[Tuple[int, bytes]]] = None,
                 seq: Optional[int] = None) -> None:
        self.target = target
        self.before = before
        self.after = after
        self.offset = offset
        self.size = size
        self.atomic = atomic
        self.text = text
        self.scrubbed = scrubbed
        self.seq = seq

    def to_dict(self) -> dict:
        def show(v: Value):
            if not isinstance(v, (bytes, bytearray)):
                return v
            if self.text:
                return bytes(v).split(b"\0", 1)[0].decode("utf-8", "replace")
            if len(v) > 64:          # a page (undo of a scrub): its BLAKE2b-256, as a scrub
                return L.blake2b256(bytes(v)).hex()   # shows its range (the journal keeps it)
            return v.hex()
        return {"target": self.target, "before": show(self.before), "after": show(self.after)}


class Plan:
    """Reads through the overlay, writes by CAS (real run) or into the overlay (dry run)."""

    def __init__(self, block: Block, dry_run: bool, journal=None) -> None:
        self.block = block
        self.dry_run = dry_run
        # the write-ahead journal of a real run (_snapshot.Journal): every store is
        # announced there, fsynced, before it is made; None: no before-image
        self.journal = None if dry_run else journal
        self.scans = None         # the engine call's kernel scans (_kernel.Scans), shared
        self.pid = os.getpid()
        self.changes: List[Change] = []
        self._overlay: Dict[Tuple[int, int], Value] = {}
        self._zeroed: Set[Tuple[int, int]] = set()      # byte ranges scrubbed (dry run too)
        self._step: Optional[List[Change]] = None

    # -- reading --------------------------------------------------------------------
    def get(self, fld: L.Field, base: int = 0):
        key = (base + fld.offset, fld.size)
        if key in self._overlay:
            value = self._overlay[key]
            if fld.kind == "text" and isinstance(value, bytes):
                return value.split(b"\0", 1)[0].decode("utf-8", "replace")
            return value
        return self.block.get(fld, base)

    def hdr(self, name: str):
        return self.get(L.HEADER[name])

    def planned(self, low: int, high: int) -> List[int]:
        """Offsets in ``low .. high`` this plan holds planned values for (a bulk read of
        that range must read those through the plan)."""
        return [off for off, dummy in self._overlay if low <= off < high]

    def read(self, offset: int, size: int) -> bytes:
        value = self._overlay.get((offset, size))
        return value if isinstance(value, bytes) else self.block.read(offset, size)

    def data(self, offset: int, size: int) -> bytes:
        """A data range (a slot's bytes) as this plan leaves it: zeros once scrubbed.
        Read from the file, not the mapping (a hole costs no page)."""
        if (offset, size) in self._zeroed:
            return bytes(size)
        return self.block.pread(offset, size)

    # -- writing --------------------------------------------------------------------
    def begin(self) -> None:
        self._step = []

    def commit(self) -> List[Change]:
        step, self._step = self._step or [], None
        return step

    def rollback(self) -> List[str]:
        """Undo the current step's applied changes (reverse order, CAS after -> before).

        Returns the targets that could not be restored because a live process changed
        them again in between (then the live process owns them; we never overwrite)."""
        step, self._step = self._step or [], None
        lost: List[str] = []
        for ch in reversed(step):
            if ch.scrubbed is not None:          # a scrub: put the pages back
                self._zeroed.discard((ch.offset, ch.size))
                if not self.dry_run:
                    self._announce(ch, undoes=ch.seq)
                    for pos, chunk in ch.scrubbed:
                        self.block.write(pos, chunk)
                self.changes.remove(ch)
                continue
            key = (ch.offset, ch.size)
            self._overlay[key] = ch.before
            if self.dry_run:
                pass
            elif ch.atomic:
                word = L.Field(ch.target, ch.offset, ch.size, "u", True)
                seq = self._announce(Change(ch.target, ch.after, ch.before, ch.offset,
                                            ch.size), undoes=ch.seq)
                if not self.block.cas(word, ch.after, ch.before)[0]:
                    self._unannounce(seq)
                    lost.append(ch.target)
                    del self._overlay[key]       # memory now speaks for itself
            else:
                self._announce(Change(ch.target, ch.after, ch.before, ch.offset, ch.size,
                                      False), undoes=ch.seq)
                self.block.write(ch.offset, ch.before)
            self.changes.remove(ch)
        return lost

    def cas(self, target: str, fld: L.Field, base: int, expected: int, new: int) -> None:
        """Change an atomic word from the value observed to ``new``, or raise
        :class:`ConcurrentChange` (the caller rolls the step back)."""
        if expected == new:
            return
        offset = base + fld.offset
        ch = Change(target, expected, new, offset, fld.size, True)
        if self.dry_run:
            seen = self.get(fld, base)
            ok = seen == expected
        else:
            seq = self._announce(ch)
            ok, seen = self.block.cas(fld, expected, new, base)
            if not ok:
                self._unannounce(seq)
        if not ok:
            raise ConcurrentChange("%s changed under us: expected %s, found %s"
                                   % (target, expected, seen), target=target)
        self._record(ch)

    def put(self, target: str, offset: int, before: bytes, after: bytes,
            text: bool = False) -> None:
        """Replace non-atomic bytes (text, checksums) in a record we hold the claim on;
        ``text`` shows them as strings in results (else hex)."""
        if before == after:
            return
        ch = Change(target, before, after, offset, len(after), False, text)
        if not self.dry_run:
            if self.block.read(offset, len(before)) != before:
                raise ConcurrentChange("%s changed under us" % target, target=target)
            self._announce(ch)
            self.block.write(offset, after)
        self._record(ch)

    def scrub(self, target: str, offset: int, size: int) -> None:
        """Overwrite with zeros a byte range that holds no committed data and that we hold
        (a slot under our write lock), so torn bytes never stay behind.

        Only pages that are not zero already are written: blocks are sparse files, and a
        page never written stays unallocated. Listed as one change whose before/after are
        the BLAKE2b-256 of the range (the bytes themselves are not listed); the pages
        overwritten are kept so that :meth:`rollback` can put them back (a concurrent
        change leaves nothing changed, torn bytes included)."""
        before = self.data(offset, size)
        if not any(before):
            return
        pages: List[Tuple[int, bytes]] = []
        pos, end = offset, offset + size
        while pos < end:
            stop = min(end, (pos // L.PAGE + 1) * L.PAGE)       # one file page at most
            chunk = before[pos - offset:stop - offset]
            if any(chunk):
                pages.append((pos, chunk))
            pos = stop
        ch = Change(target, L.blake2b256(before), L.blake2b256(bytes(size)), offset, size,
                    False, scrubbed=pages)
        if not self.dry_run:
            self._announce(ch)                   # the pages' bytes, before they go
            for pos, chunk in pages:
                self.block.write(pos, bytes(len(chunk)))
        self._zeroed.add((offset, size))
        self._record(ch, overlay=False)

    def _announce(self, ch: Change, undoes: Optional[int] = None) -> Optional[int]:
        """Journal a store about to be made (real run with a journal): the before-image.
        A journal that cannot be written raises before the store (nothing changed)."""
        if self.journal is None:
            return None
        ch.seq = self.journal.intent(ch, undoes)
        return ch.seq

    def _unannounce(self, seq: Optional[int]) -> None:
        if self.journal is not None and seq is not None:
            self.journal.failed(seq)

    def _record(self, ch: Change, overlay: bool = True) -> None:
        if overlay:
            self._overlay[(ch.offset, ch.size)] = ch.after
        self.changes.append(ch)
        if self._step is not None:
            self._step.append(ch)

    def count_recovery(self, actions: int) -> None:
        """Upstream bookkeeping: recovery_actions_count += n, last_error_timestamp_ns = now.

        Both are counters/stamps that live processes only ever add to or overwrite, so a
        fetch-add and a store are the right primitives (no CAS on an observed value)."""
        if actions <= 0:
            return
        count = L.HEADER["recovery_actions_count"]
        stamp = L.HEADER["last_error_timestamp_ns"]
        before_count, before_stamp = self.get(count), self.get(stamp)
        now = time.monotonic_ns()
        counted = Change("header.recovery_actions_count", before_count,
                         before_count + actions, count.offset, count.size)
        stamped = Change("header.last_error_timestamp_ns", before_stamp, now,
                         stamp.offset, stamp.size)
        if not self.dry_run:
            seq = self._announce(counted)
            added = self.block.add(count, actions)
            if added != before_count:
                counted.before, counted.after = added, added + actions
                if seq is not None:
                    self.journal.amend(seq, added, added + actions)  # type: ignore[union-attr]
            self._announce(stamped)
            self.block.set(stamp, now)
        self._record(counted)
        self._record(stamped)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def change_dicts(self) -> List[dict]:
        return [c.to_dict() for c in self.changes]
