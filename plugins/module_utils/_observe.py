# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a block says about its holders, with a liveness verdict for each.

Diagnose explains these observations; recover, cleanup and heal act on them. Both read
through the same :class:`Plan`, so a dry run sees the state its earlier steps would leave.
The rules deciding *who may be released* live here, once:

* a writer is releasable only when its verdict is ``dead`` (or no one holds a slot that is
  WRITING/DRAINING: an orphan no live writer can ever finish);
* readers carry no PID in the format, so they are judged by who *could* be inside: the
  kernel's list of live processes with the block mapped writable (recovery runs
  excepted). Each may account for 0 readers (our trusted evidence: it reads no slot or
  one other slot; the slot's own waiting writer with no consumer entry while the table
  is not full), 1 (trusted evidence: it reads this slot), or any number (C++ consumers,
  entry-less openers, untrusted evidence, evidence "several reads"). What they cannot
  account for is gone -- only in a complete scope, or when nobody else has the block
  open at all (exclusive lease). Dead consumers' recorded "reading" plays no part.

Verdicts are kernel truth first (:mod:`_liveness`, :mod:`_kernel`). Our recorded evidence
only narrows: a live consumer's evidence is used only when *trusted* (:meth:`Scene.trusted`:
same pid, same start tick read in our time namespace, same PID namespace, and that process
has the block mapped); untrusted evidence is treated as absent (the consumer may be in any
slot). A dead consumer's evidence only attributes readers to that dead entry.
"""

from __future__ import annotations


from . import _layout as L
from ._block import check_budget, open_block
from ._errors import RecoveryError
from . import _kernel
from ._kernel import BlockId, Hold, HostScan, Proc, Scans, Scope
from ._liveness import ALIVE, DEAD, Snapshot, Verdict, judge
from ._plan import Plan
from ._procinfo import monotonic_ns
from ._record import Record
from ._scan import scan_slots

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable, Dict, List, Optional, Tuple

SLOT = L.SLOT
CONS = L.CONSUMER
CEV = L.CONSUMER_EVIDENCE
_CONSISTENT_TRIES = 16
_WORDS = tuple(SLOT[n] for n in ("write_lock", "reader_count", "slot_state", "writer_waiting",
                                 "write_generation"))


def producer_verdict(get: Callable[[str], object], now: Snapshot,
                     block: Optional[BlockId] = None, scans: Optional[Scans] = None,
                     observed_ns: Optional[int] = None) -> Optional[Verdict]:
    """The producer heartbeat's pid, judged by the kernel scan (``scans``) on ``block``,
    with our evidence as support when it names that pid.

    ``get(header_field_name)`` reads the header (a Plan, or raw header bytes in discovery),
    so the block's own view and the host listing judge a producer by one rule;
    ``observed_ns``: monotonic time taken before the heartbeat pid was read."""
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
                 now=now, block=block, scans=scans, observed_ns=observed_ns,
                 **recorded)  # type: ignore[arg-type]


def _slot_words(plan: Plan, base: int) -> Tuple[int, ...]:
    return tuple(plan.get(f, base) for f in _WORDS)


class Evidence(Record):
    """Our runtime's evidence about one holder word, as recorded (pid-matching)."""

    __slots__ = ("pid", "start", "pidns", "reading")
    pid: int
    start: int
    pidns: int
    reading: Optional[int]            # consumer evidence: the raw "reading" word

    def __init__(self, pid: int, start: int, pidns: int, reading: Optional[int] = None) -> None:
        self.pid = pid
        self.start = start
        self.pidns = pidns
        self.reading = reading


class ConsumerView(Record):
    __slots__ = ("index", "pid", "heartbeat_ns", "uid", "name", "reading", "has_evidence",
                 "verdict", "evidence", "trusted")
    __hash__ = None  # type: ignore[assignment]   # mutable
    index: int
    pid: int
    heartbeat_ns: int
    uid: str
    name: str
    reading: Optional[int]            # slot index from usable evidence; None = none or unknown
    has_evidence: bool                # usable evidence narrows where this consumer reads
    verdict: Optional[Verdict]
    evidence: Optional[Evidence]      # recorded for this pid (trusted or not)
    trusted: Optional[Proc]           # the live process that evidence is trusted for

    def __init__(self, index: int, pid: int, heartbeat_ns: int, uid: str, name: str,
                 reading: Optional[int], has_evidence: bool, verdict: Optional[Verdict] = None,
                 evidence: Optional[Evidence] = None, trusted: Optional[Proc] = None) -> None:
        self.index = index
        self.pid = pid
        self.heartbeat_ns = heartbeat_ns
        self.uid = uid
        self.name = name
        self.reading = reading
        self.has_evidence = has_evidence
        self.verdict = verdict
        self.evidence = evidence
        self.trusted = trusted

    @property
    def dead(self) -> bool:
        return self.verdict is not None and self.verdict.is_dead


class SlotView(Record):
    __slots__ = ("index", "write_lock", "reader_count", "state", "writer_waiting", "generation",
                 "locked_ns", "changed_ns", "writer", "readers_in", "live_possible",
                 "releasable_readers", "candidates", "scope", "observed_ns")
    __hash__ = None  # type: ignore[assignment]   # mutable
    index: int
    write_lock: int
    reader_count: int
    state: int
    writer_waiting: int
    generation: int
    locked_ns: Optional[int]          # our evidence: when the current holder took the lock
    changed_ns: Optional[int]
    writer: Optional[Verdict]
    readers_in: List[ConsumerView]    # consumers naming this slot
    live_possible: int                # readers that may be live (count - releasable)
    releasable_readers: int           # readers provably gone
    candidates: List[Candidate]       # who could be inside
    scope: Optional[str]              # the scope the reader rule was decided in
    observed_ns: Optional[int]        # monotonic time before these words were first read

    def __init__(self, index: int, write_lock: int, reader_count: int, state: int,
                 writer_waiting: int, generation: int, locked_ns: Optional[int],
                 changed_ns: Optional[int], writer: Optional[Verdict] = None,
                 readers_in: Optional[List[ConsumerView]] = None, live_possible: int = 0,
                 releasable_readers: int = 0, candidates: Optional[List[Candidate]] = None,
                 scope: Optional[str] = None, observed_ns: Optional[int] = None) -> None:
        self.index = index
        self.write_lock = write_lock
        self.reader_count = reader_count
        self.state = state
        self.writer_waiting = writer_waiting
        self.generation = generation
        self.locked_ns = locked_ns
        self.changed_ns = changed_ns
        self.writer = writer
        self.readers_in = [] if readers_in is None else readers_in
        self.live_possible = live_possible
        self.releasable_readers = releasable_readers
        self.candidates = [] if candidates is None else candidates
        self.scope = scope
        self.observed_ns = observed_ns

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


class Opener(Record):
    """A live process (not a registered recovery run) that has the block mapped
    read-write: everything that could be a reader or writer inside a slot right now."""

    __slots__ = ("process", "consumers")
    process: Proc
    consumers: Tuple[int, ...]        # heartbeat entries whose pid names it (any level)

    def __init__(self, process: Proc, consumers: Tuple[int, ...]) -> None:
        self.process = process
        self.consumers = consumers

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def nspid(self) -> Tuple[int, ...]:
        return self.process.nspid

    @property
    def state(self) -> str:
        return self.process.state

    @property
    def start_ticks(self) -> Optional[int]:
        return self.process.start_ticks

    @property
    def consumer(self) -> Optional[int]:
        return self.consumers[0] if self.consumers else None


#: The word of :meth:`_kernel.Scans.first_seen` under a block's key that notes the consumer
#: table (every entry's pid, then ``active_consumer_count``) as :func:`preobserve` read it.
TABLE = ("consumer_table",)


def preobserve(scans: Scans, address: str, max_bytes: Optional[int] = None) -> None:
    """Read a block's holder words (producer, consumers, the locks of the slots in use)
    with pread, and note when each was seen (``scans.first_seen``): a scan taken after
    this can prove the holders named here absent. ``each_block`` does it for every block
    before its one scan. The consumer table read here (pids and count) is also noted as
    a whole (:data:`TABLE`): the first look of cleanup's settle. A block that cannot be
    read, has no sound header or is over the ``max_bytes`` budget is skipped (its own
    call reads or refuses it; a word not seen here is judged by a newer scan)."""
    try:
        with open_block(address) as block:
            check_budget(block, "preobserve", max_bytes)
            geo = block.geo
            key = block.inode
            t = monotonic_ns()
            scans.first_seen(key + ("producer",), block.get("producer_heartbeat_pid"), t)
            pids = tuple(block.get(CONS["consumer_pid"], L.consumer_entry(k))
                         for k in range(L.MAX_CONSUMERS))
            for k, pid in enumerate(pids):
                scans.first_seen(key + ("consumer", k), pid, t)
            # the first look of cleanup's settle (_cleanup.TABLE): stamped AFTER the reads,
            # so the time since it is never overstated
            scans.first_seen(key + TABLE, (pids, block.get("active_consumer_count")),
                             monotonic_ns())
            # a plain slot (the bulk scan, _scan) has no lock: nothing to note
            for i in scan_slots(block).interesting:
                scans.first_seen(key + ("lock", i),
                                 block.get(SLOT["write_lock"], geo.slot_entry(i)), t)
    except (RecoveryError, OSError):
        return


class Scene:
    """One observation of a block: header facts, consumers, producer, verdicts.

    Verdicts come from the kernel scan of ``plan.scans`` (one :class:`_kernel.Scans` per
    engine call, created here when the caller gave none). Every holder word is read once
    at construction so that one scan taken afterwards can judge them all (see
    :meth:`_kernel.Scans.first_seen`). The interface the reader and count rules build on:
    :attr:`scan`, :attr:`scope`, :meth:`openers`, :meth:`trusted_writer` and, per
    consumer, :attr:`ConsumerView.trusted` (docs/architecture.md, "Liveness").
    """

    def __init__(self, plan: Plan, now: Optional[Snapshot] = None,
                 scans: Optional[Scans] = None) -> None:
        self.plan = plan
        self.block = plan.block
        self.now = now or Snapshot.take()
        if scans is None:
            scans = getattr(plan, "scans", None)
        if scans is None:
            scans = Scans()
        plan.scans = scans
        self.scans = scans
        self.id = BlockId.of(self.block)
        if self.block.kind == "path":
            scans.want(self.block.path)
        self.has_evidence = self.block.has_evidence
        self.boot_id = self.block.get("ev_boot_id") if self.has_evidence else None
        self._cache: Dict[Tuple, Verdict] = {}
        self._preobserve()
        t = monotonic_ns()
        self.producer_pid = plan.hdr("producer_heartbeat_pid")
        self.producer_hb = plan.hdr("producer_heartbeat_ns")
        self.producer = producer_verdict(
            plan.hdr, self.now, self.id, scans,
            self._seen(("producer",), self.producer_pid, t)) if self.producer_pid else None
        self.consumers = self._consumers()

    # -- observation times --------------------------------------------------------------
    def _seen(self, word: Tuple, value: int, now_ns: int) -> int:
        return self.scans.first_seen(self.id.key + word, value, now_ns)

    def _preobserve(self) -> None:
        """Read every holder word once, before any scan this scene may need."""
        t = monotonic_ns()
        self._seen(("producer",), self.plan.hdr("producer_heartbeat_pid"), t)
        for k in range(L.MAX_CONSUMERS):
            self._seen(("consumer", k), self.plan.get(CONS["consumer_pid"],
                                                      L.consumer_entry(k)), t)
        geo = self.block.geometry
        if geo is None:
            return
        # The table is read in bulk (_scan): a plain slot has no lock, so only the others
        # are read one by one and noted; a lock noted earlier in this call for a slot now
        # plain is noted gone (0), as reading every slot's word would have noted it.
        looked = scan_slots(self.plan).interesting
        for i in looked:
            self._seen(("lock", i), self.plan.get(SLOT["write_lock"], geo.slot_entry(i)), t)
        looked_at = set(looked)
        for word in self.scans.noted(self.id.key + ("lock",)):
            if word[-1] not in looked_at:
                self.scans.first_seen(word, 0, t)

    # -- kernel view ----------------------------------------------------------------------
    @property
    def scan(self) -> HostScan:
        """The latest kernel scan of this engine call (taken now if none yet)."""
        return self.scans.latest()

    @property
    def scope(self) -> Scope:
        """Whether that scan is complete for this block (name, reason, complete)."""
        return self.scan.scope(self.id)

    def trusted(self, pid: int, evidence: Optional[Evidence]) -> Optional[Proc]:
        """The live process ``evidence`` may be trusted for, or None (then it is treated
        as absent): it names ``pid``, and a process that has this block mapped has
        ``pid`` as its own pid, started at the recorded tick (read in OUR time namespace:
        the process must share it) and runs in the recorded PID namespace."""
        if evidence is None or evidence.pid != pid or not evidence.start or not evidence.pidns:
            return None
        own_timens = _kernel.own_time_namespace()
        candidates = []  # type: List[Tuple[Proc, Hold]]
        direct = self.scans.direct(pid, self.id.key)
        if direct is not None:                      # in our namespace: two reads, no scan
            candidates.append(direct)
        scan = self.scans.current                   # a nested one: the scan the verdict took
        if scan is not None:
            candidates += scan.with_pid(self.id.key, pid)
        for proc, hold in candidates:
            if (hold.mapped and proc.nspid[-1] == pid and proc.start_ticks == evidence.start
                    and proc.timens is not None and proc.timens == own_timens
                    and proc.pidns == evidence.pidns):
                return proc
        return None

    def writer_evidence(self, index: int) -> Optional[Evidence]:
        """Our slot evidence (+24..+63) as recorded, when it names the current lock."""
        if not self.has_evidence:
            return None
        base = self.block.geo.slot_entry(index)
        lock = self.plan.get(SLOT["write_lock"], base)
        if not lock or self.plan.get(SLOT["ev_writer_pid"], base) != lock:
            return None
        return Evidence(lock, self.plan.get(SLOT["ev_writer_start"], base),
                        self.plan.get(SLOT["ev_writer_pidns"], base))

    def trusted_writer(self, index: int) -> Optional[Tuple[Evidence, Proc]]:
        """Slot ``index``'s writer evidence and the live writer it is trusted for."""
        ev = self.writer_evidence(index)
        proc = self.trusted(ev.pid, ev) if ev else None
        return (ev, proc) if ev and proc else None

    def openers(self, after_ns: Optional[int] = None,
                scan: Optional[HostScan] = None) -> List[Opener]:
        """Live processes, registered recovery runs and this engine excepted, that have
        this block mapped read-write, each with the consumer entries whose pid names it at
        some PID-namespace level (:meth:`_candidate` decides whose evidence counts).
        ``after_ns``: use a scan that started after that monotonic time (take it before
        reading the words you decide on); ``scan``: use that scan (the reader rule
        decides on the scan it chose)."""
        if scan is None:
            scan = self.scans.after(after_ns) if after_ns is not None else self.scan
        out = []
        for proc, hold in scan.holders(self.id.key):
            if not hold.rw or proc.recovery_for(self.id.owner_uid):
                continue
            out.append(Opener(proc, tuple(c.index for c in self.consumers
                                          if proc.has_pid(c.pid))))
        return out

    # -- verdicts ---------------------------------------------------------------------
    def judge(self, pid: int, start: Optional[int] = None, since: Optional[int] = None,
              heartbeat: Optional[int] = None, pidns: Optional[int] = None,
              observed: Optional[int] = None) -> Verdict:
        key = (pid, start, since, heartbeat, pidns, observed)
        if key not in self._cache:
            self._cache[key] = judge(pid, recorded_start_ticks=start,
                                     recorded_boot_id=self.boot_id if start else None,
                                     since_ns=since, heartbeat_ns=heartbeat, now=self.now,
                                     recorded_pidns=pidns, block=self.id, scans=self.scans,
                                     observed_ns=observed)
        return self._cache[key]

    def _consumers(self) -> List[ConsumerView]:
        return [c for c in (self._consumer(k) for k in range(L.MAX_CONSUMERS)) if c]

    def _consumer(self, k: int) -> Optional[ConsumerView]:
        base = L.consumer_entry(k)
        t = monotonic_ns()
        pid = self.plan.get(CONS["consumer_pid"], base)
        if not pid:
            return None
        observed = self._seen(("consumer", k), pid, t)
        hb = self.plan.get(CONS["last_heartbeat_ns"], base)
        recorded = None
        if self.has_evidence:
            ev = L.consumer_evidence(k)
            if self.plan.get(CEV["pid"], ev) == pid:
                recorded = Evidence(pid, self.plan.get(CEV["start"], ev),
                                    self.plan.get(CEV["pidns"], ev),
                                    self.plan.get(CEV["reading"], ev))
        view = ConsumerView(k, pid, hb, self.plan.get(CONS["consumer_uid"], base),
                            self.plan.get(CONS["consumer_name"], base), None, False,
                            evidence=recorded)
        view.verdict = self.judge(pid, recorded.start or None if recorded else None,
                                  since=hb or None, heartbeat=hb or None,
                                  pidns=(recorded.pidns or None) if recorded else None,
                                  observed=observed)
        if recorded is not None:
            # A dead consumer's evidence cannot be checked against a process; it only
            # attributes readers to that dead entry (the reader rule decides what follows).
            # A live one's is used only when trusted: stale evidence of an earlier process
            # with the same pid must not say where a live consumer is not.
            view.trusted = None if view.dead else self.trusted(pid, recorded)
            if view.dead or view.trusted is not None:
                value = recorded.reading
                if value == L.READING_SEVERAL:
                    view.reading, view.has_evidence = None, False    # may be anywhere
                else:
                    view.reading, view.has_evidence = (value - 1 if value else None), True
        return view

    @property
    def live_consumers(self) -> List[ConsumerView]:
        return [c for c in self.consumers if not c.dead]

    def writer_verdict(self, pid: int, base: int, observed: Optional[int] = None) -> Verdict:
        start = since = pidns = None
        if self.has_evidence and self.plan.get(SLOT["ev_writer_pid"], base) == pid:
            start = self.plan.get(SLOT["ev_writer_start"], base) or None
            since = self.plan.get(SLOT["ev_locked_ns"], base) or None
            pidns = self.plan.get(SLOT["ev_writer_pidns"], base) or None
        elif pid == self.producer_pid and self.producer_hb:
            since = self.producer_hb   # C++ blocks: the producer's heartbeat names it
        return self.judge(pid, start, since=since, pidns=pidns, observed=observed)

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
        t = monotonic_ns()
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
        view = SlotView(index, lock, readers, state, waiting, generation, None, None,
                        observed_ns=self._seen(("lock", index), lock, t))
        if self.has_evidence:
            if lock and p.get(SLOT["ev_writer_pid"], base) == lock:
                view.locked_ns = p.get(SLOT["ev_locked_ns"], base) or None
            view.changed_ns = p.get(SLOT["ev_changed_ns"], base) or None
        if lock:
            view.writer = self.writer_verdict(lock, base, view.observed_ns)
        if view.reader_count:
            self._attribute(view, t)
        return view

    def _attribute(self, view: SlotView, counted_ns: int) -> None:
        """How many of the slot's readers are provably gone (THE reader rule).

        ``reader_count`` names nobody, so the rule asks the kernel who *could* be inside:
        every live process (recovery runs excepted) with the block mapped writable. Each
        such candidate may account for 0, 1 or any number of the readers
        (:meth:`_candidate`); what the candidates cannot account for is gone. Only a
        scan complete for this block (or an exclusive lease: nobody else has it open)
        proves that no unseen process is inside; in a partial scope nothing is
        releasable without force. ``counted_ns``: monotonic time taken before the count
        was read -- a release is only decided on a scan (or lease) younger than it."""
        view.readers_in = [c for c in self.consumers if c.reading == view.index]
        scan = self.scans.latest()
        while True:
            scope = scan.scope(self.id)
            view.scope = scope.name
            openers = self.openers(scan=scan)
            view.candidates = [self._candidate(view, o, openers) for o in openers]
            view.releasable_readers = (_unaccounted(view.reader_count, view.candidates)
                                       if scope.complete else 0)
            if not view.releasable_readers or scan.started_ns > counted_ns:
                break
            scan = self.scans.after(counted_ns)     # decide on a scan younger than the count
        if not view.releasable_readers and self.scans.exclusive(self.id, counted_ns):
            view.scope, view.candidates = "exclusive", []
            view.releasable_readers = view.reader_count
        view.live_possible = view.reader_count - view.releasable_readers

    @property
    def table_full(self) -> bool:
        """Every consumer entry is taken: a further consumer reads with no entry (C++
        logs the failed registration and reads anyway, spec section 8)."""
        return len(self.consumers) >= L.MAX_CONSUMERS

    def _candidate(self, view: SlotView, opener: Opener,
                   openers: List[Opener]) -> "Candidate":
        """What ``opener`` may contribute to ``view``'s reader_count, and why. The lock's
        pid names the waiting writer only when no other opener has that number at some
        PID-namespace level (a reader in another namespace may)."""
        if not opener.consumers:
            if (view.write_lock and sole(openers, view.write_lock) is opener
                    and view.state == L.SlotState.DRAINING and view.writer_waiting
                    and not self.table_full):
                return Candidate(opener, 0, "the slot's own waiting writer, no consumer "
                                 "registered")
            return Candidate(opener, None, "has the block mapped writable and no consumer "
                             "entry%s" % (" (the consumer table is full: it may read "
                                          "unregistered)" if self.table_full else ""))
        total = 0
        for k in opener.consumers:
            c = next((c for c in self.consumers if c.index == k), None)
            if c is None or c.trusted is None or c.trusted.pid != opener.pid \
                    or c.evidence is None:
                return Candidate(opener, None, "consumer %d: no trusted evidence of where "
                                 "it reads (C++ or unverifiable)" % k)
            value = c.evidence.reading
            if value == L.READING_SEVERAL:
                return Candidate(opener, None, "consumer %d: our evidence says it holds "
                                 "several reads" % k)
            total += 1 if value == view.index + 1 else 0
        return Candidate(opener, total, "our trusted evidence: %s" % (
            "reads this slot" if total else "reads no slot or another slot"))


def sole(openers: List[Opener], pid: int) -> Optional[Opener]:
    """The one opener that has ``pid`` at some PID-namespace level, or None when none or
    several do: a number several processes show names none of them for sure."""
    found = [o for o in openers if o.process.has_pid(pid)]
    return found[0] if len(found) == 1 else None


class Candidate(Record):
    """A live process that could be inside a slot, and how many of its readers it may
    account for: 0, 1 (or more), or ``None`` = any number."""

    __slots__ = ("opener", "contribution", "why")
    opener: Opener
    contribution: Optional[int]
    why: str

    def __init__(self, opener: Opener, contribution: Optional[int], why: str) -> None:
        self.opener = opener
        self.contribution = contribution
        self.why = why

    def to_dict(self) -> Dict[str, object]:
        return {"pid": self.opener.pid, "nspid": list(self.opener.nspid),
                "state": self.opener.state, "consumers": list(self.opener.consumers),
                "may_hold": "any" if self.contribution is None else self.contribution,
                "why": self.why}


def _unaccounted(count: int, candidates: List[Candidate]) -> int:
    """Readers no candidate can account for: count - sum, 0 if any is unbounded."""
    if any(c.contribution is None for c in candidates):
        return 0
    return max(0, count - sum(c.contribution or 0 for c in candidates))
