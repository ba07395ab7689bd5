# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verdict on a PID recorded in a DataBlock: alive, dead, suspect-hung or unknown.

Only ``dead`` lets recovery release a lock without ``force``. Kernel truth first (see
:mod:`_kernel`): a process holds words of a block only while it has the block mapped, so
for a holder pid P recorded in a word of block B:

1. some process that has B mapped or open has P at any PID-namespace level (NSpid):
   ``alive``, or ``suspect-hung`` when it is stopped (SIGSTOP, debugger). Never ``dead``,
   whatever recorded ticks, heartbeats or boot ids say;
2. else, when nobody but this engine has B open at all (the kernel grants an exclusive
   lease on a tmpfs block: it counts every open file, in every namespace), or when the
   scan is complete for B (scope ``host`` or ``namespace``) and started after the word
   was read: ``dead`` -- across PID namespaces, time namespaces and reuse. When the
   kernel counts another opener that no visible process is: ``unknown``;
3. else (scope ``partial``: not root, unreadable processes, an inherited /dev/shm...) only
   conservative rules, all assuming recovery runs in the holders' PID namespace unless
   our evidence says otherwise: a PID namespace recorded by our runtime other than ours
   -> ``unknown``; ``kill(P, 0)`` ESRCH -> ``dead``; P exists, readable, with B neither
   mapped nor open -> ``dead`` (not the holder: PID reused); P a zombie with no live
   thread -> ``dead``; anything else -> ``unknown`` (or 1.).

Recorded start ticks, monotonic stamps "from the future", boot ids and heartbeat ages are
NOT proofs of death any more (a time namespace shifts ticks and clocks; a file block
outlives a boot; a registering consumer shows its predecessor's heartbeat; stale evidence
of an earlier process with the same pid stays behind): they are reported as supporting
evidence. A stale heartbeat of a running process is reported, not judged: the process is
``alive`` (idle consumers and producers legitimately go quiet; every verdict but ``dead``
refuses unforced release anyway). Every verdict lists its evidence as strings.
"""

from __future__ import annotations

from ._kernel import (BlockId, Hold, HostScan, Proc, Scans, Scope, describe_matches,
                      direct_holder, process_hold)
from ._procinfo import (
    PID_MAX_LIMIT, PROBE_EXISTS, PROBE_NO_SUCH, PROBE_OTHER_USER, boot_id, boottime_ns,
    clock_ticks, live_thread_count, monotonic_ns, pid_namespace, pid_probe, process_stat,
)
from ._record import Record

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Dict, List, Optional, Tuple
    from ._procinfo import ProcStat

ALIVE = "alive"
DEAD = "dead"
SUSPECT_HUNG = "suspect-hung"
UNKNOWN = "unknown"

DEFAULT_STALE_AFTER_NS = 10 * 10**9
# A timestamp this far beyond our monotonic "now" was not written on our clock (another
# boot or another time namespace). Evidence only; the slack covers stamps written between
# the caller's read and our clock read.
FUTURE_TOLERANCE_NS = 10**9
NAMESPACE_ASSUMPTION = ("assumes recovery runs in the holders' PID namespace (no namespace "
                        "evidence says otherwise)")


class Verdict(Record):
    """The judgement on one PID, with the evidence that led to it.

    ``scope``: the kernel scan's scope for the block (None when no scan was needed: a
    holder found directly in our PID namespace, or no block given);
    ``process``: the process that has the block mapped or open under this pid (alive and
    suspect-hung verdicts from the scan), as :meth:`_kernel.Proc.to_dict`."""

    __slots__ = ("pid", "state", "evidence", "scope", "process")
    pid: int
    state: str
    evidence: Tuple[str, ...]
    scope: Optional[Scope]
    process: Optional[Dict[str, Any]]

    def __init__(self, pid: int, state: str, evidence: Tuple[str, ...] = (),
                 scope: Optional[Scope] = None,
                 process: Optional[Dict[str, Any]] = None) -> None:
        self.pid = pid
        self.state = state
        self.evidence = evidence
        self.scope = scope
        self.process = process

    @property
    def is_dead(self) -> bool:
        return self.state == DEAD

    def to_dict(self) -> Dict[str, Any]:
        return {"pid": self.pid, "state": self.state, "evidence": list(self.evidence),
                "scope": self.scope.to_dict() if self.scope else None,
                "process": dict(self.process) if self.process else None}


class Snapshot(Record):
    """"Now": clocks, boot id and tick rate, taken once for a whole scan of many slots.

    A snapshot from ``take()`` is *live*: ``judge`` re-reads the two clocks (cheap) after
    reading /proc, so a scan that lasts long never sees a fresh heartbeat as "in the
    future". Only the boot id and tick rate stay cached. A snapshot built by hand is fixed
    (deterministic tests).
    """

    __slots__ = ("monotonic_ns", "boottime_ns", "boot_id", "clk_tck", "live", "pidns")
    monotonic_ns: int
    boottime_ns: int
    boot_id: Optional[bytes]
    clk_tck: int
    live: bool
    pidns: Optional[int]              # inode of this process's PID namespace

    def __init__(self, monotonic_ns: int, boottime_ns: int, boot_id: Optional[bytes],
                 clk_tck: int = 100, live: bool = False, pidns: Optional[int] = None) -> None:
        self.monotonic_ns = monotonic_ns
        self.boottime_ns = boottime_ns
        self.boot_id = boot_id
        self.clk_tck = clk_tck
        self.live = live
        self.pidns = pidns

    @classmethod
    def take(cls) -> "Snapshot":
        mono = monotonic_ns()
        return cls(mono, boottime_ns(), boot_id(), clock_ticks(), True, pid_namespace())

    def refreshed(self) -> "Snapshot":
        if not self.live:
            return self
        mono = monotonic_ns()
        return Snapshot(mono, boottime_ns(), self.boot_id, self.clk_tck, self.live, self.pidns)

    @property
    def suspended_ns(self) -> int:
        """Time spent suspended since boot (CLOCK_BOOTTIME - CLOCK_MONOTONIC)."""
        return max(0, self.boottime_ns - self.monotonic_ns)


def judge(pid: int, *, block: Optional[BlockId] = None, scans: Optional[Scans] = None,
          scan: Optional[HostScan] = None, observed_ns: Optional[int] = None,
          recorded_start_ticks: Optional[int] = None,
          recorded_boot_id: Optional[bytes] = None, since_ns: Optional[int] = None,
          heartbeat_ns: Optional[int] = None,
          stale_after_ns: int = DEFAULT_STALE_AFTER_NS,
          now: Optional[Snapshot] = None, recorded_pidns: Optional[int] = None) -> Verdict:
    """Judge whether ``pid`` (recorded in a word of ``block``) still holds anything.

    ``block``: the block's identity (:class:`_kernel.BlockId`); without it no mapping
    can be checked and a live pid is ``alive`` by existence alone. ``scans`` (an engine
    call's :class:`_kernel.Scans`) or ``scan`` (one :class:`_kernel.HostScan`): the
    kernel's view; ``observed_ns``: CLOCK_MONOTONIC taken before the word naming ``pid``
    was first read with that value -- absence proves death only in a scan that started
    after it (``scans`` takes a new one when needed; a lone ``scan`` older than it is not
    used for absence). ``recorded_*``, ``since_ns``, ``heartbeat_ns``: what the block
    recorded (our runtime's evidence, heartbeats), reported as evidence and, for the PID
    namespace, used to stay ``unknown`` in a partial scope. pid 0 means "no holder":
    ValueError.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError("pid %r is not a process id (0 = no holder: nothing to judge)" % (pid,))
    if recorded_boot_id is not None and len(recorded_boot_id) != 16:
        raise ValueError("recorded_boot_id must be 16 bytes, got %d" % len(recorded_boot_id))
    snap = now if now is not None else Snapshot.take()
    ev: List[str] = []
    scope: Optional[Scope] = None

    def verdict(state: str, why: str, process: Optional[Dict[str, Any]] = None) -> Verdict:
        return Verdict(pid, state, tuple(ev + [why]), scope, process)

    if pid >= PID_MAX_LIMIT:     # no process has such a pid, in any PID namespace
        return verdict(DEAD, "pid %d >= %d (PID_MAX_LIMIT): no process can have it in any "
                       "PID namespace" % (pid, PID_MAX_LIMIT))
    # 1. kernel truth: a process with the block mapped or open has this pid -- first the
    # one that has it in OUR namespace (two reads, no scan), then any level (the scan)
    if block is not None:
        direct = (scans.direct(pid, block.key) if scans is not None
                  else direct_holder(pid, block.key))
        if direct is not None:
            taken = scans.current if scans is not None else scan
            scope = taken.scope(block) if taken is not None else None   # no scan needed
            _support(ev, pid, recorded_start_ticks, recorded_boot_id, since_ns,
                     heartbeat_ns, stale_after_ns, snap, direct[0].start_ticks)
            found = _matched([direct])
            return verdict(found[0], found[1], found[3])
    if block is not None and scans is not None and scans.exclusive(block, observed_ns):
        # nobody else has the block open at all (a write lease was granted): every
        # holder recorded in it is gone, whatever PID namespace it ran in
        st = process_stat(pid)
        _support(ev, pid, recorded_start_ticks, recorded_boot_id, since_ns, heartbeat_ns,
                 stale_after_ns, snap, st.start_ticks if st else None, ages=False)
        _namesake(ev, pid, st)
        return verdict(DEAD, "no other process has this block open or mapped, in any PID "
                       "namespace: the kernel granted an exclusive lease on it")
    if block is not None and (scans is not None or scan is not None):
        # Not found directly: from here on the verdict may be dead, and absence proves
        # nothing in a scan older than the record (the holder may have attached since).
        current = scans.after(observed_ns) if scans is not None else scan
        scope = current.scope(block)
        found = _from_scan(pid, block, current)
        if found is not None:
            _support(ev, pid, recorded_start_ticks, recorded_boot_id, since_ns,
                     heartbeat_ns, stale_after_ns, snap, found[2].start_ticks)
            return verdict(found[0], found[1], found[3])
        # 2. complete scope: absence is death
        fresh = observed_ns is None or current.started_ns > observed_ns
        if scope.complete and fresh:
            st = process_stat(pid)      # whoever has the number here: supporting only
            _support(ev, pid, recorded_start_ticks, recorded_boot_id, since_ns,
                     heartbeat_ns, stale_after_ns, snap, st.start_ticks if st else None,
                     ages=False)
            _namesake(ev, pid, st)
            return verdict(DEAD, "no process that has this block mapped or open has pid %d "
                           "in any PID namespace (scan complete: %s)" % (pid, scope.reason))
        ev.append("scan %s: %s" % (scope.name, scope.reason) if not scope.complete else
                  "scan complete but older than the record: per-pid rules")
        if not fresh:
            ev.append("(a holder that attached after the scan in another PID namespace "
                      "would be missed: %s)" % NAMESPACE_ASSUMPTION)
        elif (scans is not None and scans.exclusive(block, observed_ns) is False
              and not current.holders(block.key)):
            # the kernel counts another open file of the block, yet no process we can see
            # has it: the per-pid rules' assumption (holders visible here) does not hold
            return verdict(UNKNOWN, "another process has this block open (the kernel "
                           "refused an exclusive lease) but none that this scan can see: "
                           "its holders may run where recovery cannot look (another "
                           "container sharing /dev/shm, an unreadable process)")
    # 3. partial: conservative per-pid rules
    return _partial(pid, block, ev, verdict, recorded_start_ticks, recorded_boot_id,
                    since_ns, heartbeat_ns, stale_after_ns, snap, recorded_pidns)


def _namesake(ev: List[str], pid: int, st: Optional[ProcStat]) -> None:
    """A dead verdict on a pid that a running process has here: say so, so that an
    operator who finds the process with ``ps`` reads why it is no holder of this block
    (the verdict is about the block, not about the process)."""
    if st is not None:
        ev.append("pid %d names a process here (state %s) that has neither mapped nor "
                  "opened this block: it holds nothing of it (it let go of the block, or the "
                  "number is another process's now)" % (pid, st.state))


def _from_scan(pid: int, block: BlockId, scan: HostScan):
    """(state, why, proc, process dict) when a holder of ``block`` has ``pid``, else None."""
    matches = scan.with_pid(block.key, pid)
    return _matched(matches) if matches else None


def _matched(matches: List[Tuple[Proc, Hold]]):
    running = [(p, h) for p, h in matches if not p.stopped]
    proc, hold = (running or matches)[0]
    why = "; ".join(describe_matches(matches))
    if running:
        return ALIVE, why, proc, proc.to_dict(hold)
    return (SUSPECT_HUNG, why + ": stopped (signal or debugger), makes no progress", proc,
            proc.to_dict(hold))


def _partial(pid, block, ev, verdict, recorded_start_ticks, recorded_boot_id, since_ns,
             heartbeat_ns, stale_after_ns, snap, recorded_pidns) -> Verdict:
    if recorded_pidns and snap.pidns and recorded_pidns != snap.pidns:
        return verdict(UNKNOWN, "pid %d was recorded in PID namespace %d but this process "
                       "runs in %d: that number names another process here; run recovery "
                       "in the holder's namespace" % (pid, recorded_pidns, snap.pidns))
    probe = pid_probe(pid)
    if probe == PROBE_NO_SUCH:
        return verdict(DEAD, "kill(%d, 0): ESRCH (no such process); %s"
                       % (pid, NAMESPACE_ASSUMPTION))
    if probe not in (PROBE_EXISTS, PROBE_OTHER_USER):
        return verdict(UNKNOWN, "kill(%d, 0) failed unexpectedly: existence unknown" % pid)
    ev.append("kill(%d, 0): %s" % (pid, "success (process exists)" if probe == PROBE_EXISTS
                                   else "EPERM (exists, owned by another user)"))
    st = process_stat(pid)
    if st is None:
        return verdict(UNKNOWN, "/proc/%d/stat unreadable (hidepid or permission): cannot "
                       "tell" % pid)
    _support(ev, pid, recorded_start_ticks, recorded_boot_id, since_ns, heartbeat_ns,
             stale_after_ns, snap, st.start_ticks, ages=False)
    if st.state in ("Z", "X"):
        threads = live_thread_count(pid)
        if threads == 0:
            return verdict(DEAD, "state %s: exited, not yet reaped (runs no code, holds "
                           "nothing)" % st.state)
        if threads is None:
            return verdict(UNKNOWN, "state %s: zombie leader, its threads unreadable: cannot "
                           "tell" % st.state)
        ev.append("state %s but %d thread(s) still run (leader exited, process lives)"
                  % (st.state, threads))
    if block is not None:
        hold = process_hold(pid, block.key)
        if hold is None:
            return verdict(UNKNOWN, "pid %d exists but its maps/fds are unreadable (not root "
                           "or hidepid): cannot tell whether it holds the block" % pid)
        if not hold:
            return verdict(DEAD, "pid %d exists but has not mapped or opened this block: not "
                           "the holder (PID reused); %s" % (pid, NAMESPACE_ASSUMPTION))
        ev.append("pid %d has the block %s" % (pid, hold.how()))
    _heartbeat_age(ev, heartbeat_ns, stale_after_ns, snap)
    if st.state in ("T", "t"):
        return verdict(SUSPECT_HUNG, "state %s: stopped (signal or debugger), makes no progress"
                       % st.state)
    return verdict(ALIVE, "state %s: not stopped, not a zombie" % st.state)


def _support(ev: List[str], pid: int, recorded_start_ticks: Optional[int],
             recorded_boot_id: Optional[bytes], since_ns: Optional[int],
             heartbeat_ns: Optional[int], stale_after_ns: int, snap: Snapshot,
             start_ticks: Optional[int], ages: bool = True) -> None:
    """Supporting evidence from the records: reported, never decisive (module doc).
    ``ages``: add the heartbeat's age (see :func:`_heartbeat_age`)."""
    if recorded_boot_id is not None and any(recorded_boot_id) and snap.boot_id is not None:
        if bytes(recorded_boot_id) != snap.boot_id:
            ev.append("block created on boot %s, this is boot %s (a file block can outlive "
                      "a boot: not proof)" % (_uuid(recorded_boot_id), _uuid(snap.boot_id)))
    if recorded_start_ticks is not None and start_ticks is not None:
        if start_ticks == recorded_start_ticks:
            ev.append("pid %d started at tick %d, as recorded" % (pid, start_ticks))
        else:
            ev.append("pid %d started at tick %d, the record says %d (an earlier process, or "
                      "another time namespace: not proof)"
                      % (pid, start_ticks, recorded_start_ticks))
    snap = snap.refreshed()
    for name, value in (("since", since_ns), ("heartbeat", heartbeat_ns)):
        if value is not None and value - snap.monotonic_ns > FUTURE_TOLERANCE_NS:
            ev.append("%s lies %s in the future of this monotonic clock (another time "
                      "namespace or boot: not proof)" % (name, _dur(value - snap.monotonic_ns)))
    if ages:
        _heartbeat_age(ev, heartbeat_ns, stale_after_ns, snap)


def _heartbeat_age(ev: List[str], heartbeat_ns: Optional[int], stale_after_ns: int,
                   snap: Snapshot) -> None:
    """The heartbeat's age, for a holder found alive (a dead verdict's text stays the
    same from one run to the next: dry runs predict real runs word for word)."""
    snap = snap.refreshed()
    if heartbeat_ns is not None and heartbeat_ns <= snap.monotonic_ns + FUTURE_TOLERANCE_NS:
        age = max(0, snap.monotonic_ns - heartbeat_ns)
        ev.append("heartbeat %s old%s" % (_dur(age), " (stale after %s: idle or slow, not "
                                                     "proof of a hang)" % _dur(stale_after_ns)
                                          if age > stale_after_ns else ""))


def is_process_alive(pid: int, **kwargs: Any) -> bool:
    """True unless ``judge`` finds ``pid`` dead (hung and unknown count as alive)."""
    return not judge(pid, **kwargs).is_dead


def _uuid(raw: Optional[bytes]) -> str:
    import uuid     # only for this message: uuid imports platform (milliseconds)
    return str(uuid.UUID(bytes=bytes(raw))) if raw else "?"


def _dur(ns: int) -> str:
    s = ns / 1e9
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(s) >= 2 * size:
            return "%.1f %s" % (s / size, unit)
    return "%.1f s" % s
