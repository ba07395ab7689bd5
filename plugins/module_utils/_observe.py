# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a block says about its holders, with a liveness verdict for each.

Diagnose explains these observations; recover, cleanup and heal act on them. Both read
through the same :class:`Plan`, so a dry run sees the state its earlier steps would leave.
The rules deciding *who may be released* live here, once:

* a writer is releasable only when its verdict is ``dead`` (or no one holds a slot that is
  WRITING/DRAINING: an orphan no live writer can ever finish);
* readers carry no PID in the format. Our runtime records, per consumer, the slot it reads
  (set before the count goes up, cleared after it goes down, so the record may
  over-approximate but never misses a reader). Readers are provably dead when they are
  attributed to dead consumers and no live consumer could be inside the slot, or when no
  live consumer and no live writer exists at all. Otherwise only what exceeds the number of
  live consumers that could be inside is released, so a live reader's count survives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from . import _layout as L
from ._liveness import ALIVE, DEAD, Snapshot, Verdict, judge
from ._plan import Plan

SLOT = L.SLOT
CONS = L.CONSUMER
CEV = L.CONSUMER_EVIDENCE
_CONSISTENT_TRIES = 16
_WORDS = tuple(SLOT[n] for n in ("write_lock", "reader_count", "slot_state", "writer_waiting",
                                 "write_generation"))


def producer_verdict(get: Callable[[str], object], now: Snapshot) -> Optional[Verdict]:
    """The producer heartbeat's pid, judged with our evidence when it names that pid.

    ``get(header_field_name)`` reads the header (a Plan, or raw header bytes in discovery),
    so the block's own view and the host listing judge a producer by one rule."""
    pid = get("producer_heartbeat_pid")
    if not pid:
        return None
    recorded = {}  # type: Dict[str, object]
    if (get("ev_marker") == L.EVIDENCE_MARKER and get("ev_version") == L.EVIDENCE_VERSION
            and get("ev_producer_pid") == pid):
        recorded = {"recorded_start_ticks": get("ev_producer_start") or None,
                    "recorded_boot_id": get("ev_boot_id"),
                    "recorded_pidns": get("ev_producer_pidns") or None}
        if recorded["recorded_start_ticks"] is None:
            recorded["recorded_boot_id"] = None
    return judge(int(pid), heartbeat_ns=get("producer_heartbeat_ns") or None,  # type: ignore
                 now=now, **recorded)  # type: ignore[arg-type]


def _slot_words(plan: Plan, base: int) -> Tuple[int, ...]:
    return tuple(plan.get(f, base) for f in _WORDS)


@dataclass
class ConsumerView:
    index: int
    pid: int
    heartbeat_ns: int
    uid: str
    name: str
    reading: Optional[int]            # slot index from our evidence; None = none or unknown
    has_evidence: bool                # our runtime recorded this consumer
    verdict: Optional[Verdict] = None

    @property
    def dead(self) -> bool:
        return self.verdict is not None and self.verdict.is_dead


@dataclass
class SlotView:
    index: int
    write_lock: int
    reader_count: int
    state: int
    writer_waiting: int
    generation: int
    locked_ns: Optional[int]          # our evidence: when the current holder took the lock
    changed_ns: Optional[int]
    writer: Optional[Verdict] = None
    readers_in: List[ConsumerView] = field(default_factory=list)   # consumers naming this slot
    live_possible: int = 0            # live consumers that could be inside
    releasable_readers: int = 0       # readers provably dead

    @property
    def writer_dead(self) -> bool:
        return self.writer is not None and self.writer.is_dead

    @property
    def writer_suspect(self) -> bool:
        """Locked by a holder neither proven dead nor plainly alive (suspect-hung,
        unknown): only a forced action may release it; heal reports it as refused."""
        return bool(self.write_lock and self.writer is not None
                    and self.writer.state not in (DEAD, ALIVE))

    @property
    def orphaned(self) -> bool:
        """WRITING/DRAINING with no lock: no live writer can ever move it on."""
        return self.write_lock == 0 and self.state in (L.SlotState.WRITING, L.SlotState.DRAINING)


class Scene:
    """One observation of a block: header facts, consumers, producer, verdicts."""

    def __init__(self, plan: Plan, now: Optional[Snapshot] = None) -> None:
        self.plan = plan
        self.block = plan.block
        self.now = now or Snapshot.take()
        self.has_evidence = self.block.has_evidence
        self.boot_id = self.block.get("ev_boot_id") if self.has_evidence else None
        self._cache: Dict[Tuple, Verdict] = {}
        self.producer_pid = plan.hdr("producer_heartbeat_pid")
        self.producer_hb = plan.hdr("producer_heartbeat_ns")
        self.producer = producer_verdict(plan.hdr, self.now)
        self.consumers = self._consumers()

    # -- verdicts ---------------------------------------------------------------------
    def judge(self, pid: int, start: Optional[int] = None, since: Optional[int] = None,
              heartbeat: Optional[int] = None, pidns: Optional[int] = None) -> Verdict:
        key = (pid, start, since, heartbeat, pidns)
        if key not in self._cache:
            self._cache[key] = judge(pid, recorded_start_ticks=start,
                                     recorded_boot_id=self.boot_id if start else None,
                                     since_ns=since, heartbeat_ns=heartbeat, now=self.now,
                                     recorded_pidns=pidns)
        return self._cache[key]

    def _consumers(self) -> List[ConsumerView]:
        return [c for c in (self._consumer(k) for k in range(L.MAX_CONSUMERS)) if c]

    def _consumer(self, k: int) -> Optional[ConsumerView]:
        base = L.consumer_entry(k)
        pid = self.plan.get(CONS["consumer_pid"], base)
        if not pid:
            return None
        hb = self.plan.get(CONS["last_heartbeat_ns"], base)
        reading, start, pidns, ours = None, None, None, False
        if self.has_evidence:
            ev = L.consumer_evidence(k)
            if self.plan.get(CEV["pid"], ev) == pid:
                ours = True
                start = self.plan.get(CEV["start"], ev) or None
                pidns = self.plan.get(CEV["pidns"], ev) or None
                value = self.plan.get(CEV["reading"], ev)
                reading = value - 1 if value else None
        view = ConsumerView(k, pid, hb, self.plan.get(CONS["consumer_uid"], base),
                            self.plan.get(CONS["consumer_name"], base), reading, ours)
        view.verdict = self.judge(pid, start, since=hb or None, heartbeat=hb or None,
                                  pidns=pidns)
        return view

    @property
    def live_consumers(self) -> List[ConsumerView]:
        return [c for c in self.consumers if not c.dead]

    def writer_verdict(self, pid: int, base: int) -> Verdict:
        start = since = pidns = None
        if self.has_evidence and self.plan.get(SLOT["ev_writer_pid"], base) == pid:
            start = self.plan.get(SLOT["ev_writer_start"], base) or None
            since = self.plan.get(SLOT["ev_locked_ns"], base) or None
            pidns = self.plan.get(SLOT["ev_writer_pidns"], base) or None
        elif pid == self.producer_pid and self.producer_hb:
            since = self.producer_hb   # C++ blocks: the producer's heartbeat names it
        return self.judge(pid, start, since=since, pidns=pidns)

    # -- slots ------------------------------------------------------------------------
    def _stable_words(self, base: int) -> Tuple[int, ...]:
        # A scan preempted between two words would combine a lock read before a writer's
        # CAS with the state it stored after (an "orphan" that is not one): accept a look
        # only when the next look reads the very same words.
        words = _slot_words(self.plan, base)
        for dummy in range(_CONSISTENT_TRIES):
            again = _slot_words(self.plan, base)
            if again == words:
                break
            words = again
        return words

    def slot(self, index: int) -> SlotView:
        p, base = self.plan, self.block.geo.slot_entry(index)
        words = self._stable_words(base)
        for dummy in range(_CONSISTENT_TRIES):
            if not words[1]:
                break
            # Readers are judged against the consumer table read AFTER their count: a
            # reader registers before it counts itself and unregisters after it uncounts,
            # so every reader in this count is in this table (or the count moved: look
            # again). A table read earlier may miss a consumer that registered since.
            self.consumers = self._consumers()
            again = self._stable_words(base)
            if again == words:
                break
            words = again
        lock, readers, state, waiting, generation = words
        view = SlotView(index, lock, readers, state, waiting, generation, None, None)
        if self.has_evidence:
            if lock and p.get(SLOT["ev_writer_pid"], base) == lock:
                view.locked_ns = p.get(SLOT["ev_locked_ns"], base) or None
            view.changed_ns = p.get(SLOT["ev_changed_ns"], base) or None
        if lock:
            view.writer = self.writer_verdict(lock, base)
        if view.reader_count:
            self._attribute(view)
        return view

    def _attribute(self, view: SlotView) -> None:
        view.readers_in = [c for c in self.consumers if c.reading == view.index]
        dead_in = sum(1 for c in view.readers_in if c.dead)
        view.live_possible = sum(1 for c in self.live_consumers
                                 if c.reading == view.index or not c.has_evidence)
        nobody_alive = (not self.live_consumers
                        and not (self.producer and not self.producer.is_dead)
                        and not (view.writer and not view.writer.is_dead))
        count = view.reader_count
        if nobody_alive or (view.live_possible == 0 and dead_in >= count):
            view.releasable_readers = count
        else:
            view.releasable_readers = max(0, min(dead_in, count - view.live_possible))
