# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small Linux /proc and clock readers used to judge whether a recorded PID still runs.

Every reader returns ``None`` when the information is not readable (process gone,
``hidepid`` mount, permission) instead of raising: "cannot tell" is a normal answer for a
recovery tool and the caller (``_liveness``) turns it into the verdict ``unknown``.
"""

from __future__ import annotations

import errno
import os
import time

from ._record import Record

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional

# Hard kernel limit: PIDs are < PID_MAX_LIMIT (4194304 on 64-bit Linux).
# /proc/sys/kernel/pid_max can be lowered at run time while larger PIDs stay alive, so
# only this bound is conclusive.
PID_MAX_LIMIT = 4 * 1024 * 1024

PROBE_EXISTS = "exists"
PROBE_OTHER_USER = "exists-other-user"
PROBE_NO_SUCH = "no-such-process"
PROBE_UNKNOWN = "unknown"


class ProcStat(Record):
    """One read of /proc/<pid>/stat. state: one letter (R S D T t Z X I ...);
    start_ticks: field 22 (clock ticks since boot, CLOCK_BOOTTIME based, so it keeps
    counting across suspend); comm: raw bytes. (A record, not a ``namedtuple``:
    ``collections`` costs a small command a millisecond at start-up.)"""

    __slots__ = ("comm", "state", "start_ticks")

    def __init__(self, comm: bytes, state: str, start_ticks: int) -> None:
        self.comm = comm
        self.state = state
        self.start_ticks = start_ticks


def boot_id_text() -> Optional[str]:
    """This boot's id as the kernel prints it (a UUID), or None if unreadable."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "r") as f:
            return f.read().strip()
    except OSError:
        return None


def boot_id() -> Optional[bytes]:
    """This boot's id as 16 raw bytes (the form stored in recovery evidence), or None."""
    text = boot_id_text()
    try:      # the kernel's form, 8-4-4-4-12 hex digits (no uuid import: it costs start-up)
        raw = bytes.fromhex(text.replace("-", "")) if text else b""
    except ValueError:
        return None
    return raw if len(raw) == 16 else None


def clock_ticks() -> int:
    """USER_HZ: the unit of /proc/<pid>/stat times (100 on every mainstream Linux)."""
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError):
        return 100


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC, the clock pylabhub stamps heartbeats and lock times with."""
    return time.monotonic_ns()


def boottime_ns() -> int:
    """CLOCK_BOOTTIME: like monotonic but also counts suspend; process start times use it."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def parse_stat(data: bytes) -> Optional[ProcStat]:
    """Parse the text of /proc/<pid>/stat.

    Field 2 is ``(comm)`` and comm is chosen by the process: it may hold spaces and ``)``.
    Only the LAST ``)`` closes it, so split there and count the remaining fields from 3.
    """
    open_, close = data.find(b"("), data.rfind(b")")
    if open_ < 0 or close < open_:
        return None
    rest = data[close + 1:].split()
    try:
        return ProcStat(data[open_ + 1:close], rest[0].decode("ascii"), int(rest[19]))
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def process_stat(pid: int) -> Optional[ProcStat]:
    """comm, state and start ticks of ``pid`` from one read (consistent), or None."""
    if not _plausible(pid):
        return None
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return parse_stat(f.read())
    except OSError:
        return None


def process_start_ticks(pid: int) -> Optional[int]:
    """Start time of ``pid`` in clock ticks since boot (stat field 22), or None."""
    st = process_stat(pid)
    return st.start_ticks if st else None


def process_state(pid: int) -> Optional[str]:
    """Scheduler state letter of ``pid`` (stat field 3: R S D T t Z X ...), or None."""
    st = process_stat(pid)
    return st.state if st else None


def pid_namespace(pid: Optional[int] = None) -> Optional[int]:
    """Inode of the PID namespace of ``pid`` (default: this process), or None.

    A PID means something only inside its namespace: a holder recorded from another
    container must not be probed by its number here."""
    try:
        return os.stat("/proc/%s/ns/pid" % ("self" if pid is None else int(pid))).st_ino
    except (OSError, ValueError):
        return None


def own_start_ticks() -> int:
    """Start ticks of this process (always readable: /proc/self is never hidden)."""
    st = process_stat(os.getpid())
    if st is None:
        raise OSError(errno.ENOENT, "cannot read /proc/self/stat")
    return st.start_ticks


def live_thread_count(pid: int) -> Optional[int]:
    """Threads of ``pid`` not in state Z/X, or None if the task list cannot be read.

    A thread-group leader that called pthread_exit() shows state Z in /proc/<pid>/stat
    while its other threads still run: a zombie leader alone is no proof of death.
    """
    if not _plausible(pid):
        return None
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    count = 0
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid), "rb") as f:
                st = parse_stat(f.read())
        except (FileNotFoundError, ProcessLookupError):
            continue  # that thread ended while we looked
        except OSError:
            return None  # unreadable is not "ended": do not undercount
        if st is None:
            return None
        count += st.state not in ("Z", "X")
    return count


def process_uid(pid: int) -> Optional[int]:
    """Real uid of ``pid`` (first number of the ``Uid:`` line of /proc/<pid>/status)."""
    if not _plausible(pid):
        return None
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def pid_probe(pid: int) -> str:
    """Ask the kernel whether ``pid`` exists with ``kill(pid, 0)`` (sends nothing).

    EPERM means the process exists but belongs to another user: it is NOT evidence of
    death. A PID that cannot be valid (<= 0, >= PID_MAX_LIMIT) is "no-such-process";
    kill() is never called with 0 or a negative pid (those address process groups).
    """
    if not _plausible(pid):
        return PROBE_NO_SUCH
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return PROBE_NO_SUCH
    except PermissionError:
        return PROBE_OTHER_USER
    except OSError:
        return PROBE_UNKNOWN
    return PROBE_EXISTS


def _plausible(pid: object) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < PID_MAX_LIMIT
