# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mounts and birth times: is a block's filesystem private to our PID namespace?

Used by :meth:`_kernel.HostScan.scope` for the ``namespace`` case: the block's filesystem
is mounted in our mount namespace without propagation tags (``shared:``/``master:`` in
``/proc/self/mountinfo``) and its root was born (statx ``STATX_BTIME``, CLOCK_REALTIME)
after PID 1 of our namespace started (its start ticks, converted to CLOCK_REALTIME with
the offset read now; a wall clock stepped back in between can only make this stricter
when stepped forward, and is an assumption when stepped back).
"""

from __future__ import annotations

import os
import time

from ._procinfo import clock_ticks, parse_stat
from ._record import Record

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, List, Optional, Tuple


class Mount(Record):
    __slots__ = ("dev", "root", "mountpoint", "tags", "fstype")
    dev: int
    root: str
    mountpoint: str
    tags: Tuple[str, ...]
    fstype: str

    def __init__(self, dev: int, root: str, mountpoint: str, tags: Tuple[str, ...],
                 fstype: str) -> None:
        self.dev = dev
        self.root = root
        self.mountpoint = mountpoint
        self.tags = tags
        self.fstype = fstype


def _unescape(text: str) -> str:
    """The kernel's octal escapes (``\\040`` for a space) undone, left to right, as
    ``re.sub(r"\\\\([0-7]{3})", ...)`` did (``re`` costs a small command milliseconds)."""
    if "\\" not in text:
        return text
    parts = text.split("\\")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) >= 3 and all(c in "01234567" for c in part[:3]):
            out.append(chr(int(part[:3], 8)) + part[3:])
        else:
            out.append("\\" + part)
    return "".join(out)


def mounts_of(proc: str, dev: int) -> List[Mount]:
    """Every mount of the filesystem ``dev`` in our mount namespace (mountinfo)."""
    try:
        with open(proc + "/self/mountinfo", "r", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    want = "%d:%d" % (os.major(dev), os.minor(dev))
    out = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) < 10 or parts[2] != want or "-" not in parts[6:]:
            continue
        dash = parts.index("-", 6)
        tags = tuple(t for t in parts[6:dash] if t.split(":")[0] in ("shared", "master"))
        out.append(Mount(dev, _unescape(parts[3]), _unescape(parts[4]), tags,
                         parts[dash + 1]))
    return out


_STATX = []  # type: List[Any]


def _statx_struct() -> Any:
    """The ``struct statx`` type, made at first use (``ctypes`` costs milliseconds to import,
    and only the namespace scope of a scan needs it)."""
    if _STATX:
        return _STATX[0]
    import ctypes

    class _StatxTs(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                    ("reserved", ctypes.c_int32)]

    class _Statx(ctypes.Structure):
        _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                    ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                    ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                    ("mode", ctypes.c_uint16), ("pad0", ctypes.c_uint16),
                    ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                    ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                    ("atime", _StatxTs), ("btime", _StatxTs), ("ctime", _StatxTs),
                    ("mtime", _StatxTs), ("rdev_major", ctypes.c_uint32),
                    ("rdev_minor", ctypes.c_uint32), ("dev_major", ctypes.c_uint32),
                    ("dev_minor", ctypes.c_uint32), ("spare", ctypes.c_uint64 * 14)]

    _STATX.append(_Statx)
    return _Statx


_AT_FDCWD, _AT_SYMLINK_NOFOLLOW, _STATX_BTIME = -100, 0x100, 0x800


def birth_ns(path: str) -> Optional[Tuple[int, int]]:
    """(birth time in CLOCK_REALTIME ns, st_dev) of ``path`` via statx, or None when the
    kernel, libc or filesystem does not report one."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.statx
    except (OSError, AttributeError):
        return None
    buf = _statx_struct()()
    if fn(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME,
          ctypes.byref(buf)) != 0 or not buf.mask & _STATX_BTIME:
        return None
    return (buf.btime.tv_sec * 10**9 + buf.btime.tv_nsec,
            os.makedev(buf.dev_major, buf.dev_minor))


def fs_birth_ns(mounts: List[Mount], dev: int) -> Optional[int]:
    """Birth time of the root of filesystem ``dev`` through a mount showing its root
    (a mount point another mount covers is skipped: statx must land on ``dev``)."""
    for m in mounts:
        if m.root != "/":
            continue
        got = birth_ns(m.mountpoint)
        if got is not None and got[1] == dev:
            return got[0]
    return None


def pid1_start_realtime_ns(proc: str) -> Optional[int]:
    """Latest CLOCK_REALTIME at which PID 1 of our namespace can have started (its start
    ticks are truncated, so one tick is added)."""
    try:
        with open(proc + "/1/stat", "rb") as f:
            st = parse_stat(f.read())
    except OSError:
        return None
    if st is None:
        return None
    hz = clock_ticks()
    offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return offset + (st.start_ticks + 1) * 10**9 // hz
