# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verdict on a PID recorded in a DataBlock: alive, dead, suspect-hung or unknown.

Only ``dead`` lets recovery release a lock without ``force``, so ``dead`` is returned only
with positive evidence (no such process, a zombie with no running thread, a PID now used by
a different or younger process, evidence of another boot). Whenever the evidence is missing
or contradicts itself the answer is ``unknown``. Every verdict lists its evidence as
human-readable strings, so an operator can check the reasoning.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Dict, List, Optional, Tuple

from ._procinfo import (
    PID_MAX_LIMIT, PROBE_EXISTS, PROBE_NO_SUCH, PROBE_OTHER_USER, boot_id, boottime_ns,
    clock_ticks, live_thread_count, monotonic_ns, pid_namespace, pid_probe, process_stat,
)

ALIVE = "alive"
DEAD = "dead"
SUSPECT_HUNG = "suspect-hung"
UNKNOWN = "unknown"

DEFAULT_STALE_AFTER_NS = 10 * 10**9
# A timestamp this far beyond our monotonic "now" cannot have been written on this boot.
# The slack covers stamps written between the caller's read and our clock read.
FUTURE_TOLERANCE_NS = 10**9


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The judgement on one PID, with the evidence that led to it."""

    pid: int
    state: str
    evidence: Tuple[str, ...] = ()

    @property
    def is_dead(self) -> bool:
        return self.state == DEAD

    def to_dict(self) -> Dict[str, Any]:
        return {"pid": self.pid, "state": self.state, "evidence": list(self.evidence)}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """"Now": clocks, boot id and tick rate, taken once for a whole scan of many slots.

    A snapshot from ``take()`` is *live*: ``judge`` re-reads the two clocks (cheap) after
    reading /proc, so a scan that lasts longer than the tolerance never sees a fresh
    heartbeat as "in the future" and the suspend offset covers processes started since.
    Only the boot id and tick rate stay cached. A snapshot built by hand is fixed
    (deterministic tests).
    """

    monotonic_ns: int
    boottime_ns: int
    boot_id: Optional[bytes]
    clk_tck: int = 100
    live: bool = False
    pidns: Optional[int] = None       # inode of this process's PID namespace

    @classmethod
    def take(cls) -> "Snapshot":
        mono = monotonic_ns()  # monotonic first: the suspend offset errs on the large side
        return cls(mono, boottime_ns(), boot_id(), clock_ticks(), True, pid_namespace())

    def refreshed(self) -> "Snapshot":
        if not self.live:
            return self
        mono = monotonic_ns()
        return dataclasses.replace(self, monotonic_ns=mono, boottime_ns=boottime_ns())

    @property
    def suspended_ns(self) -> int:
        """Time spent suspended since boot (CLOCK_BOOTTIME - CLOCK_MONOTONIC)."""
        return max(0, self.boottime_ns - self.monotonic_ns)


def judge(pid: int, *, recorded_start_ticks: Optional[int] = None,
          recorded_boot_id: Optional[bytes] = None, since_ns: Optional[int] = None,
          heartbeat_ns: Optional[int] = None,
          stale_after_ns: int = DEFAULT_STALE_AFTER_NS,
          now: Optional[Snapshot] = None, recorded_pidns: Optional[int] = None) -> Verdict:
    """Judge whether ``pid`` (recorded in a block as a holder) still holds anything.

    ``recorded_start_ticks``/``recorded_boot_id``: our runtime's evidence of the holder's
    identity (None for blocks written by the C++ library; an all-zero boot id = unknown).
    ``since_ns``: CLOCK_MONOTONIC time at which the block says ``pid`` already held (lock
    taken, heartbeat...); ``heartbeat_ns``: last heartbeat. ``now``: a Snapshot (default:
    take one). ``recorded_pidns``: inode of the PID namespace the holder recorded (our
    evidence); when it is not ours the PID number cannot be probed here: UNKNOWN.
    pid 0 means "no holder" and must not be judged: ValueError.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ValueError("pid %r is not a process id (0 = no holder: nothing to judge)" % (pid,))
    if recorded_boot_id is not None and len(recorded_boot_id) != 16:
        raise ValueError("recorded_boot_id must be 16 bytes, got %d" % len(recorded_boot_id))
    snap = now if now is not None else Snapshot.take()
    ev = []  # type: List[str]

    def verdict(state: str, why: str) -> Verdict:
        return Verdict(pid, state, tuple(ev + [why]))

    # 1. PIDs of another boot say nothing about this boot's processes.
    same_boot = False
    if recorded_boot_id is not None and any(recorded_boot_id):
        if snap.boot_id is None:
            ev.append("this boot's id is unreadable: recorded boot unchecked")
        elif bytes(recorded_boot_id) != snap.boot_id:
            return verdict(DEAD, "recorded on boot %s, this is boot %s: a PID of another boot"
                           % (_uuid(recorded_boot_id), _uuid(snap.boot_id)))
        else:
            same_boot = True
            ev.append("recorded on this boot (%s)" % _uuid(snap.boot_id))

    # 2. A PID of another PID namespace (another container) names some other process here.
    if recorded_pidns and snap.pidns and recorded_pidns != snap.pidns:
        return verdict(UNKNOWN, "pid %d was recorded in PID namespace %d but this process "
                       "runs in %d: that number names another process here; run recovery "
                       "in the holder's namespace" % (pid, recorded_pidns, snap.pidns))

    # 3. Does any process have this PID?
    if pid >= PID_MAX_LIMIT:
        return verdict(DEAD, "pid %d >= %d (PID_MAX_LIMIT): no process can have it"
                       % (pid, PID_MAX_LIMIT))
    probe = pid_probe(pid)
    if probe == PROBE_NO_SUCH:
        return verdict(DEAD, "kill(%d, 0): ESRCH (no such process)" % pid)
    if probe not in (PROBE_EXISTS, PROBE_OTHER_USER):
        return verdict(UNKNOWN, "kill(%d, 0) failed unexpectedly: existence unknown" % pid)
    ev.append("kill(%d, 0): %s" % (pid, "success (process exists)" if probe == PROBE_EXISTS
                                   else "EPERM (exists, owned by another user)"))

    # 4. It exists (ours or another user's alike): is it still the holder, and running?
    st = process_stat(pid)
    threads = None  # type: Optional[int]
    snap = snap.refreshed()  # clocks read after /proc and after the caller read the block
    if st is None:
        ev.append("/proc/%d/stat unreadable (hidepid or permission)" % pid)
    elif st.state in ("Z", "X"):
        threads = live_thread_count(pid)
        if threads == 0:
            return verdict(DEAD, "state %s: exited, not yet reaped (runs no code, holds nothing)"
                           % st.state)
        ev.append("state %s but %d thread(s) still run (leader exited, process lives)"
                  % (st.state, threads) if threads else
                  "state %s: leader exited, its threads unreadable" % st.state)

    identity = False
    if recorded_start_ticks is not None:
        if st is None:
            ev.append("recorded start tick %d unchecked" % recorded_start_ticks)
        elif st.start_ticks != recorded_start_ticks:
            return verdict(DEAD, "pid %d started at tick %d but the holder started at tick %d: "
                           "pid reused" % (pid, st.start_ticks, recorded_start_ticks))
        else:
            identity = True
            ev.append("pid %d started at tick %d, as recorded" % (pid, st.start_ticks))

    stamps = [(n, v) for n, v in (("since", since_ns), ("heartbeat", heartbeat_ns))
              if v is not None]
    for name, value in stamps:
        ahead = value - snap.monotonic_ns
        if ahead > FUTURE_TOLERANCE_NS:
            msg = ("%s lies %s in the future of this boot's monotonic clock"
                   % (name, _dur(ahead)))
            if identity or same_boot:  # this boot's evidence cannot do that: trust nothing
                return verdict(UNKNOWN, msg + ", yet the evidence is of this boot: contradictory")
            return verdict(DEAD, msg + ": written on another boot")

    if st is None:
        return verdict(UNKNOWN, "no readable start time or state for pid %d: cannot tell" % pid)

    if stamps:
        # Process start is CLOCK_BOOTTIME based; minus all suspend so far it is a lower
        # bound of the start on CLOCK_MONOTONIC (ticks truncate down: also a lower bound).
        held_at = max(value for dummy, value in stamps)
        start_mono_min = st.start_ticks * 10**9 // snap.clk_tck - snap.suspended_ns
        if start_mono_min > held_at + 10**9 // snap.clk_tck:
            msg = ("pid %d started %s after the block recorded its holder at monotonic %d"
                   % (pid, _dur(start_mono_min - held_at), held_at))
            if identity:
                return verdict(UNKNOWN, msg + ", yet its start tick matches: contradictory")
            return verdict(DEAD, msg + ": a younger process holds the reused PID")
        ev.append("pid %d started before monotonic %d: consistent with the holder"
                  % (pid, held_at))

    if st.state in ("Z", "X") and threads is None:  # zombie leader, threads uncountable
        return verdict(UNKNOWN, "zombie leader, its threads unreadable: cannot tell")
    if st.state in ("T", "t"):
        return verdict(SUSPECT_HUNG, "state %s: stopped (signal or debugger), makes no progress"
                       % st.state)
    if heartbeat_ns is not None:
        age = snap.monotonic_ns - heartbeat_ns
        if age > stale_after_ns:
            return verdict(SUSPECT_HUNG, "heartbeat %s old (stale after %s)"
                           % (_dur(age), _dur(stale_after_ns)))
        ev.append("heartbeat %s old" % _dur(max(0, age)))
    return verdict(ALIVE, "state %s: not stopped, not a zombie" % st.state)


def is_process_alive(pid: int, **kwargs: Any) -> bool:
    """True unless ``judge`` finds ``pid`` dead (hung and unknown count as alive)."""
    return not judge(pid, **kwargs).is_dead


def _uuid(raw: Optional[bytes]) -> str:
    return str(uuid.UUID(bytes=bytes(raw))) if raw else "?"


def _dur(ns: int) -> str:
    s = ns / 1e9
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(s) >= 2 * size:
            return "%.1f %s" % (s / size, unit)
    return "%.1f s" % s
