# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A DataBlock runtime that speaks pylabhub 1.0's protocol: create, Producer, Consumer.

It exists so that real processes of ours can share a block with C++ pylabhub processes
and crash inside it at chosen protocol points: the tests, the fault injector and the
crash drill all stand on it. Beyond the protocol it records *recovery evidence* in bytes
pylabhub never reads (see docs/architecture.md) so recovery can later tell a dead holder
from a live one without guessing: who took a slot's lock (pid + process start), when, when
the slot last changed, and which slot each consumer is reading.
"""

from __future__ import annotations

import os
import time
from typing import Callable, List, Optional

from . import _layout as L
from . import _procinfo
from ._block import Block, check_name, open_block
from ._errors import BlockNotFound, RecoveryError, UsageError
from ._kernel import BlockId
from ._liveness import judge
from ._record import Record

SLOT = L.SLOT
CONS = L.CONSUMER
CEV = L.CONSUMER_EVIDENCE


class Timeout(RecoveryError):
    code = "timeout"


def create(name: str, capacity: int = 4, stride: int = 4096, flex_size: int = 0,
           policy: int = L.Policy.RING_BUFFER, sync: int = L.ConsumerSync.LATEST_ONLY,
           checksum_policy: int = L.ChecksumPolicy.ENFORCED, mode: int = 0o600,
           page_size: int = 4096, hub_name: str = "", hub_uid: str = "",
           producer_name: str = "", producer_uid: str = "", evidence: bool = True) -> Block:
    """Create ``/dev/shm/<name>`` (exclusively, mode ``mode`` exactly) in the spec's order.

    The magic is stored after every other field (and after a full fence: the atomic
    store is sequentially consistent), the layout hash and checksum after the magic, and
    the producer heartbeat last, as pylabhub does. ``evidence=False`` leaves our
    evidence marker out, so the block looks exactly like one written by the C++ library.
    """
    path = check_name(name)
    geometry = L.Geometry(capacity, stride, flex_size)
    why = geometry.problem() or (None if capacity >= 1 else "capacity must be at least 1")
    if why:
        raise UsageError("cannot create %s: %s" % (name, why))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
    except FileExistsError:
        raise UsageError("cannot create %s: %s already exists" % (name, path))
    try:
        os.fchmod(fd, mode)
        os.ftruncate(fd, geometry.total_size)
        block = Block(name, path, "shm", fd, os.fstat(fd), True, geometry, [])
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    for field, value in (("version_major", L.VERSION[0]), ("version_minor", L.VERSION[1]),
                         ("total_block_size", geometry.total_size), ("policy", int(policy)),
                         ("consumer_sync_policy", int(sync)), ("physical_page_size", page_size),
                         ("logical_unit_size", stride), ("ring_buffer_capacity", capacity),
                         ("flexible_zone_size", flex_size), ("checksum_type", 0),
                         ("checksum_policy", int(checksum_policy)),
                         ("hub_name", hub_name), ("hub_uid", hub_uid),
                         ("producer_name", producer_name), ("producer_uid", producer_uid)):
        block.set(field, value)
    block.set("write_index", 0)
    block.set("commit_index", L.NO_COMMIT)
    block.set("read_index", 0)
    block.set("creation_timestamp_ns", time.monotonic_ns())
    if evidence:
        block.set("ev_boot_id", _procinfo.boot_id() or b"")
        block.set("ev_version", L.EVIDENCE_VERSION)
        block.set("ev_marker", L.EVIDENCE_MARKER)
    block.set("magic", L.MAGIC)                    # seq-cst store: a full fence before it
    block.set("header_layout_hash", L.HEADER_LAYOUT_HASH)
    block.set("layout_checksum", L.layout_checksum(capacity, page_size, stride, flex_size, 0,
                                                   int(policy), int(sync)))
    block.set("producer_heartbeat_pid", os.getpid())
    block.set("producer_heartbeat_ns", time.monotonic_ns())
    return block


def attach(address: str, writable: bool = True) -> Block:
    """Attach as a pylabhub process does: a writable attachment is mapped at once (the
    kernel then counts this process as one that has the block mapped)."""
    block = open_block(address, writable=writable)
    if writable:
        try:
            block.map()
        except BaseException:
            block.close()
            raise
    return block


def destroy(name: str) -> None:
    """Unlink a named block (the mapping of processes still attached stays valid)."""
    try:
        os.unlink(check_name(name))
    except FileNotFoundError:
        raise BlockNotFound("%s: no such block" % name)


def _wait(cond: Callable[[], bool], timeout: Optional[float], what: str) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.0001
    while not cond():
        if deadline is not None and time.monotonic() > deadline:
            raise Timeout("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(pause)
        pause = min(pause * 2, 0.005)


class WriteSlot(Record):
    __slots__ = ("slot_id", "index")
    __hash__ = None  # type: ignore[assignment]   # mutable
    slot_id: int
    index: int

    def __init__(self, slot_id: int, index: int) -> None:
        self.slot_id = slot_id
        self.index = index


class ReadSlot(Record):
    __slots__ = ("slot_id", "index", "generation")
    __hash__ = None  # type: ignore[assignment]   # mutable
    slot_id: int
    index: int
    generation: int

    def __init__(self, slot_id: int, index: int, generation: int) -> None:
        self.slot_id = slot_id
        self.index = index
        self.generation = generation


def slot_verifies(b: Block, index: int) -> bool:
    """The slot's stored hash is present and matches its data: what pylabhub's Enforced
    reader checks at release (also the drill's check, needing no registration)."""
    geo = b.geo
    stored = b.read(geo.checksum_entry(index), L.HASH_SIZE)
    return any(stored) and stored == L.blake2b256(b.view(geo.slot_data(index), geo.stride))


def flex_verifies(b: Block) -> bool:
    """No flexible zone, or its stored hash is present and matches the zone."""
    geo = b.geo
    if not geo.flex_size:
        return True
    stored = b.get("flexzone_checksum")
    return any(stored) and stored == L.blake2b256(b.view(geo.flex_offset, geo.flex_size))


def _no_hook(point: str) -> None:
    """The default protocol-point hook: nothing (see ``at`` of Producer/Consumer)."""


Hook = Callable[[str], None]
_SEQUENTIAL = (L.ConsumerSync.SEQUENTIAL, L.ConsumerSync.SEQUENTIAL_SYNC)
PRODUCER_POINTS = ("claimed", "locked", "evidence", "draining", "writing", "half-written",
                   "checksummed", "generation", "committed", "unlocked")
CONSUMER_POINTS = ("pid-cased", "counted", "heartbeat", "reading-recorded", "inside",
                   "released", "unregister-pid-cleared", "unregistered")
STYLES = ("ours", "cpp")


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise UsageError("style must be one of %s, got %r" % (", ".join(STYLES), style))


class Producer:
    """The writing side. One producer per block, as pylabhub runs it.

    ``at(point)`` is called at each named protocol point (``PRODUCER_POINTS``; the crash
    actors of :mod:`_actors` stop or die there). ``style="cpp"`` writes no evidence at all,
    like pylabhub's C++ producer, whatever the block carries."""

    at = staticmethod(_no_hook)

    def __init__(self, block: Block, at: Optional[Hook] = None, style: str = "ours") -> None:
        _check_style(style)
        self.block = block
        self.at = at or _no_hook
        self.pid = os.getpid()
        self.start = _procinfo.own_start_ticks() or 0
        self.pidns = _procinfo.pid_namespace() or 0
        self.evidence = block.has_evidence and style == "ours"
        if self.evidence:
            block.set("ev_producer_start", self.start)
            block.set("ev_producer_pidns", self.pidns)
            block.set("ev_producer_pid", self.pid)
        self.heartbeat()

    def heartbeat(self) -> None:
        self.block.set("producer_heartbeat_pid", self.pid)
        self.block.set("producer_heartbeat_ns", time.monotonic_ns())

    def _mark(self, base: int, locked: bool = False) -> None:
        if not self.evidence:
            return
        now = time.monotonic_ns()
        if locked:  # identity before the pid: evidence counts only once the pid matches
            self.block.set(SLOT["ev_writer_start"], self.start, base)
            self.block.set(SLOT["ev_writer_pidns"], self.pidns, base)
            self.block.set(SLOT["ev_writer_pid"], self.pid, base)
            self.block.set(SLOT["ev_locked_ns"], now, base)
        self.block.set(SLOT["ev_changed_ns"], now, base)

    def _lock(self, base: int, timeout: Optional[float]) -> None:
        """CAS the write lock 0 -> our pid; reclaim it only from a holder judged dead."""
        b = self.block
        block_id = BlockId.of(b)

        def take() -> bool:
            ok, seen = b.cas(SLOT["write_lock"], 0, self.pid, base)
            if ok:
                return True
            if seen != self.pid and judge(seen, block=block_id).is_dead:
                return b.cas(SLOT["write_lock"], seen, self.pid, base)[0]
            return False
        _wait(take, timeout, "the write lock")
        self.at("locked")
        self._mark(base, locked=True)
        if self.evidence:
            self.at("evidence")

    def acquire(self, timeout: Optional[float] = 5.0,
                drain_timeout: Optional[float] = None) -> WriteSlot:
        """Claim the next slot id, lock it, drain readers of a committed slot, mark WRITING.

        Like pylabhub's producer, draining waits for ever by default (``drain_timeout``
        None); a caller that must not hang (the drill's final check) gives a bound, and on
        timeout the slot is handed back exactly as it was (COMMITTED, no waiting writer,
        unlocked, the slot id unclaimed)."""
        b = self.block
        if b.get("consumer_sync_policy") in _SEQUENTIAL:
            # as pylabhub: no slot id is claimed while the ring holds `capacity` ids
            # the slowest consumer has not read (read_index); with no consumer
            # registered nobody could move read_index, so ours does not wait then
            _wait(lambda: (b.get("write_index") - b.get("read_index") < b.geo.capacity
                           or not b.get("active_consumer_count")),
                  timeout, "consumers to read (read_index)")
        slot_id = b.add("write_index", 1)
        self.at("claimed")
        index = slot_id % b.geo.capacity
        base = b.slot_base(index)
        try:
            self._lock(base, timeout)
        except Timeout:
            b.cas("write_index", slot_id + 1, slot_id)
            b.add("writer_lock_timeout_count", 1)
            raise
        if b.get(SLOT["slot_state"], base) == L.SlotState.COMMITTED:
            b.set(SLOT["slot_state"], L.SlotState.DRAINING, base)
            b.set(SLOT["writer_waiting"], 1, base)
            self._mark(base)
            self.at("draining")
            try:
                _wait(lambda: b.get(SLOT["reader_count"], base) == 0, drain_timeout,
                      "readers to drain")
            except Timeout:
                b.set(SLOT["slot_state"], L.SlotState.COMMITTED, base)
                b.set(SLOT["writer_waiting"], 0, base)
                self._mark(base)
                b.set(SLOT["write_lock"], 0, base)
                b.cas("write_index", slot_id + 1, slot_id)
                b.add("writer_reader_timeout_count", 1)
                raise
        b.set(SLOT["slot_state"], L.SlotState.WRITING, base)
        b.set(SLOT["writer_waiting"], 0, base)
        self._mark(base)
        self.at("writing")
        return WriteSlot(slot_id, index)

    def write(self, ws: WriteSlot, data: bytes, offset: int = 0) -> None:
        """Copy ``data`` into the slot, in two halves (``at("half-written")`` between)."""
        geo = self.block.geo
        if offset + len(data) > geo.stride:
            raise UsageError("%d bytes do not fit a %d-byte slot" % (len(data), geo.stride))
        half = len(data) // 2
        self.block.write(geo.slot_data(ws.index) + offset, data[:half])
        self.at("half-written")
        self.block.write(geo.slot_data(ws.index) + offset + half, data[half:])

    def commit(self, ws: WriteSlot) -> None:
        """Publish the slot. Under the Enforced policy the slot and then the flexible zone
        are stamped first, as pylabhub's release_write_slot does; under Manual only what
        the caller stamped (:meth:`stamp_slot`, :meth:`stamp_flex`) is; under None nothing."""
        b, geo = self.block, self.block.geo
        base = geo.slot_entry(ws.index)
        if b.get("checksum_policy") == L.ChecksumPolicy.ENFORCED:
            self.stamp_slot(ws)
            if geo.flex_size:
                self.stamp_flex()
            self.at("checksummed")
        b.add(SLOT["write_generation"], 1, base)
        self.at("generation")
        b.set(SLOT["slot_state"], L.SlotState.COMMITTED, base)
        b.set("commit_index", ws.slot_id)
        b.add("total_slots_written", 1)
        b.add("total_bytes_written", geo.stride)
        self.heartbeat()
        self._mark(base)
        self.at("committed")
        b.set(SLOT["write_lock"], 0, base)
        self.at("unlocked")

    def stamp_slot(self, ws: WriteSlot) -> None:
        """Checksum the slot being written (pylabhub's update_checksum_slot): the
        "verified" byte to 0, then the hash of the whole stride. Explicit under Manual."""
        b, geo = self.block, self.block.geo
        entry = geo.checksum_entry(ws.index)
        b.write(entry + L.HASH_SIZE, b"\0")
        b.write(entry, L.blake2b256(b.view(geo.slot_data(ws.index), geo.stride)))

    def write_flex(self, data: bytes, offset: int = 0) -> None:
        """Write into the flexible zone, as pylabhub's producer does through its span: no
        lock; the zone's checksum is stamped at the next Enforced commit or by
        :meth:`stamp_flex`."""
        geo = self.block.geo
        if offset < 0 or offset + len(data) > geo.flex_size:
            raise UsageError("%d bytes at %d do not fit a %d-byte flexible zone"
                             % (len(data), offset, geo.flex_size))
        self.block.write(geo.flex_offset + offset, data)

    def stamp_flex(self) -> None:
        """Checksum the flexible zone (update_checksum_flexible_zone): the "verified" byte
        to 0, then the hash of the whole zone."""
        b, geo = self.block, self.block.geo
        if not geo.flex_size:
            raise UsageError("%s has no flexible zone" % b.address)
        b.set("flexzone_checksum_verified", 0)
        b.set("flexzone_checksum", L.blake2b256(b.view(geo.flex_offset, geo.flex_size)))

    def abort(self, ws: WriteSlot) -> None:
        b = self.block
        base = b.geo.slot_entry(ws.index)
        b.set(SLOT["slot_state"], L.SlotState.FREE, base)
        self._mark(base)
        b.set(SLOT["write_lock"], 0, base)
        b.cas("write_index", ws.slot_id + 1, ws.slot_id)

    def publish(self, data: bytes, timeout: Optional[float] = 5.0,
                drain_timeout: Optional[float] = None) -> WriteSlot:
        """acquire + write + commit."""
        ws = self.acquire(timeout, drain_timeout)
        self.write(ws, data)
        self.commit(ws)
        return ws


class Consumer:
    """The reading side: a registered heartbeat entry plus read slots.

    ``at(point)``: protocol-point hook (``CONSUMER_POINTS``). ``style="cpp"`` registers
    and unregisters in the C++ library's order and writes no evidence (spec sections 3
    and 8): register = CAS pid, uid/name, count += 1, heartbeat, then (Sequential_sync)
    the join position, as pylabhub's consumer sets it once registered; unregister = CAS
    pid -> 0, count -= 1, zero uid/name, heartbeat and position left as they were. Ours
    stores the join position before counting itself. Either way, until it is stored the
    entry shows its previous occupant's position.

    Our evidence "reading" says where this consumer may be (L.READING_SEVERAL when it
    holds more than one read): written before the count that makes it true goes up,
    replaced after the count that makes it false went down, so it never misses a read."""

    def __init__(self, block: Block, name: str = "", uid: str = "",
                 at: Optional[Hook] = None, style: str = "ours") -> None:
        _check_style(style)
        self.block = block
        self.at = at or _no_hook
        self.pid = os.getpid()
        self.start = _procinfo.own_start_ticks() or 0
        self.pidns = _procinfo.pid_namespace() or 0
        self.evidence = block.has_evidence and style == "ours"
        self.cpp = style == "cpp"
        self.held = []  # type: List[int]       # slot index of every read held, in order
        self.index = self._register(name, uid)

    def _join(self, k: int) -> None:
        """Sequential_sync: entry ``k``'s read position = the latest commit (join there)."""
        b = self.block
        if b.get("consumer_sync_policy") == L.ConsumerSync.SEQUENTIAL_SYNC:
            committed = b.get("commit_index")
            b.set(L.READ_POSITION, 0 if committed == L.NO_COMMIT else committed,
                  L.read_position(k))

    def _register(self, name: str, uid: str) -> int:
        b = self.block
        for k in range(L.MAX_CONSUMERS):
            base = L.consumer_entry(k)
            if b.cas(CONS["consumer_pid"], 0, self.pid, base)[0]:
                self.at("pid-cased")
                if self.evidence:
                    ev = L.consumer_evidence(k)
                    b.set(CEV["reading"], 0, ev)
                    b.set(CEV["start"], self.start, ev)
                    b.set(CEV["pidns"], self.pidns, ev)
                    b.set(CEV["pid"], self.pid, ev)
                b.set(CONS["consumer_uid"], uid, base)
                b.set(CONS["consumer_name"], name, base)
                if not self.cpp:
                    self._join(k)
                b.add("active_consumer_count", 1)
                self.at("counted")
                b.set(CONS["last_heartbeat_ns"], time.monotonic_ns(), base)
                self.at("heartbeat")
                if self.cpp:
                    self._join(k)
                return k
        raise RecoveryError("%s: all %d consumer entries are taken"
                            % (b.address, L.MAX_CONSUMERS))

    def pulse(self) -> None:
        self.block.set(CONS["last_heartbeat_ns"], time.monotonic_ns(),
                       L.consumer_entry(self.index))

    def _reading(self, held: List[int]) -> None:
        """Record where we may be reading: none, exactly one slot, or several."""
        if self.evidence:
            value = 0 if not held else held[0] + 1 if len(held) == 1 else L.READING_SEVERAL
            self.block.set(CEV["reading"], value, L.consumer_evidence(self.index))

    def acquire(self, index: Optional[int] = None) -> Optional[ReadSlot]:
        """Enter the latest committed slot (or ``index``); None when it is not readable.

        Evidence first, then the count: a crash between the two leaves evidence that
        over-approximates, never a reader recovery cannot account for.
        """
        b = self.block
        sync = b.get("consumer_sync_policy")
        if index is None:
            committed = b.get("commit_index")
            if committed == L.NO_COMMIT:
                return None
            slot_id = committed
            if sync == L.ConsumerSync.SEQUENTIAL_SYNC:    # in order, from our position
                slot_id = b.get(L.READ_POSITION, L.read_position(self.index))
                if slot_id > committed:
                    return None
            index = slot_id % b.geo.capacity
        else:
            slot_id = index
        base = b.slot_base(index)
        if b.get(SLOT["slot_state"], base) != L.SlotState.COMMITTED:
            return None
        self._reading(self.held + [index])
        self.at("reading-recorded")
        b.add(SLOT["reader_count"], 1, base)
        if b.get(SLOT["slot_state"], base) != L.SlotState.COMMITTED:
            b.add(SLOT["reader_count"], -1, base)
            self._reading(self.held)
            return None
        self.held.append(index)
        self.at("inside")
        peak = b.get(SLOT["reader_count"], base)
        old_peak = b.get("reader_peak_count")
        if peak > old_peak:
            b.cas("reader_peak_count", old_peak, peak)
        return ReadSlot(slot_id, index, b.get(SLOT["write_generation"], base))

    def read(self, rs: ReadSlot, verify: bool = True) -> bytes:
        """The slot's bytes. With ``verify``, under the Enforced policy, the checks
        pylabhub's reader makes at release: the slot's hash and the flexible zone's must be
        present and match (no cached "verified" byte honoured); under Manual and None a
        DataBlock read checks nothing (see :meth:`verify_slot`, :meth:`verify_flex`)."""
        b, geo = self.block, self.block.geo
        data = b.read(geo.slot_data(rs.index), geo.stride)
        if verify and b.get("checksum_policy") == L.ChecksumPolicy.ENFORCED:
            bad = ("slot %d checksum mismatch" % rs.index if not self.verify_slot(rs.index)
                   else "flexible zone checksum mismatch" if not self.verify_flex() else None)
            if bad:
                b.add("checksum_failures", 1)
                raise RecoveryError("%s: %s" % (b.address, bad))
        return data

    def verify_slot(self, index: int) -> bool:
        """The slot's stored hash is present and matches its data (verify_checksum_slot)."""
        return slot_verifies(self.block, index)

    def verify_flex(self) -> bool:
        """No flexible zone, or its stored hash is present and matches the zone."""
        return flex_verifies(self.block)

    def release(self, rs: ReadSlot) -> None:
        b = self.block
        b.add(SLOT["reader_count"], -1, b.geo.slot_entry(rs.index))
        if rs.index in self.held:
            self.held.remove(rs.index)
        self._reading(self.held)
        self.at("released")
        b.add("total_slots_read", 1)
        sync = b.get("consumer_sync_policy")
        if sync == L.ConsumerSync.SEQUENTIAL_SYNC:
            b.set(L.READ_POSITION, rs.slot_id + 1, L.read_position(self.index))
            # as pylabhub: read_index = the slowest position over registered entries
            positions = [b.get(L.READ_POSITION, L.read_position(k))
                         for k in range(L.MAX_CONSUMERS)
                         if b.get(CONS["consumer_pid"], L.consumer_entry(k))]
            b.set("read_index", min(positions or [rs.slot_id + 1]))
        elif sync == L.ConsumerSync.SEQUENTIAL and rs.slot_id + 1 > b.get("read_index"):
            b.set("read_index", rs.slot_id + 1)               # the shared tail moves on
        self.pulse()

    def unregister(self) -> None:
        b = self.block
        base = L.consumer_entry(self.index)
        if b.cas(CONS["consumer_pid"], self.pid, 0, base)[0]:
            self.at("unregister-pid-cleared")
            b.add("active_consumer_count", -1)
            b.set(CONS["consumer_uid"], "", base)
            b.set(CONS["consumer_name"], "", base)
            if self.evidence:
                ev = L.consumer_evidence(self.index)
                for name in ("pid", "start", "reading", "pidns"):
                    b.set(CEV[name], 0, ev)
            self.at("unregistered")
