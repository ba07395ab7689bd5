# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery runs register themselves, so that concurrent runs can tell them from readers.

A mutating engine call (recover, cleanup, heal, validate --repair; never a dry run) maps
the block read-write, exactly like a live producer or consumer would. While it runs it
holds ``/run/pylabhub-recovery/<pid>`` (our start ticks inside). Another recovery run
counts a process as a registered recovery run, and not as a possible reader, only when
that file is owned by root or by the block's owner and its pid and start ticks match a
live process (:attr:`_kernel.Proc.recovery_uid`). The directory is created by root with
mode 1777 (every user's runs can register, none can remove another's entry) and is used
only when it is root's, a real directory and group/world writable only with the sticky
bit; entries are created with O_EXCL|O_NOFOLLOW. Failing to register is not an error:
other runs then count this one as an ordinary opener, which only makes them more careful.
"""

from __future__ import annotations

import os
import stat

from ._procinfo import process_stat

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, Optional, Tuple

REGISTRY_DIR = "/run/pylabhub-recovery"
_REG = {"depth": 0, "path": None}  # type: Dict[str, object]


def sound_directory(path: str) -> bool:
    """A directory (not a symlink) owned by root that nobody else can plant entries in
    unnoticed: not group/world writable, or world writable with the sticky bit."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mode = stat.S_IMODE(st.st_mode)
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == 0
            and (not mode & 0o022 or bool(mode & 0o1000)))


_OWN_TICKS = {}  # type: Dict[int, int]


def _own_start_ticks() -> Optional[int]:
    """Start ticks of this process (cached per pid: a fork has its own)."""
    pid = os.getpid()
    if pid not in _OWN_TICKS:
        st = process_stat(pid)
        if st is None:
            return None
        _OWN_TICKS[pid] = st.start_ticks
    return _OWN_TICKS[pid]


class registration:  # pylint: disable=invalid-name
    """Register this process as a recovery run while the body runs (nestable); ``as``
    gives the entry's path (None when registering failed).

    Creates ``<directory>`` (root only; mode 1777 so every user's recovery can register,
    sticky so none can remove another's entry) when missing, then ``<directory>/<pid>``
    exclusively with O_NOFOLLOW holding our start ticks; removed afterwards. Failure to
    register is not an error: other recovery runs then count this process as an ordinary
    opener, which only makes them more careful. ``active=False``: nothing (a run that
    changes nothing). (A class, not ``contextlib.contextmanager``: contextlib and what it
    imports cost a small command milliseconds at start-up.)"""

    def __init__(self, directory: str = REGISTRY_DIR, active: bool = True) -> None:
        self.directory = directory
        self.active = active
        self.outer = False
        self.path = None  # type: Optional[str]

    def __enter__(self) -> Optional[str]:
        if not self.active:
            return None
        if _REG["depth"]:
            _REG["depth"] = int(_REG["depth"]) + 1  # type: ignore[call-overload]
            return _REG["path"]  # type: ignore[return-value]
        self.path = _register(self.directory)
        _REG.update(depth=1, path=self.path)
        self.outer = True
        return self.path

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        if not self.outer:
            _REG["depth"] = int(_REG["depth"]) - 1  # type: ignore[call-overload]
            return
        _REG.update(depth=0, path=None)
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _register(directory: str) -> Optional[str]:
    ticks = _own_start_ticks()
    if ticks is None:
        return None
    if not os.path.lexists(directory) and os.geteuid() == 0:
        old = os.umask(0)
        try:
            os.mkdir(directory, 0o1777)
        except OSError:
            pass
        finally:
            os.umask(old)
    if not sound_directory(directory):
        return None
    prune(directory)
    path = os.path.join(directory, str(os.getpid()))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for dummy in range(2):
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            # left by a dead process that had our pid: ours to replace if we own it
            try:
                st = os.lstat(path)
                if os.geteuid() != 0 and st.st_uid != os.geteuid():
                    return None
                os.unlink(path)
            except OSError:
                return None
            continue
        except OSError:
            return None
        try:
            os.write(fd, b"%d\n" % ticks)
        finally:
            os.close(fd)
        return path
    return None


def _entry(directory: str, name: str) -> Optional[Tuple[int, int]]:
    """(owner uid, start ticks) of one well-formed entry, None otherwise."""
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return st.st_uid, int(os.read(fd, 32).split()[0])
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def registrations(directory: str = REGISTRY_DIR) -> Dict[int, Tuple[int, int]]:
    """{pid: (owner uid, start ticks)} of the registry's well-formed entries (all of
    them: tests and tools; the engine asks per pid through :class:`Registry`)."""
    out = {}  # type: Dict[int, Tuple[int, int]]
    if not sound_directory(directory):
        return out
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            got = _entry(directory, name)
            if got is not None:
                out[int(name)] = got
    return out


class Registry(object):
    """The registry as one engine call asks it: per pid, read on first asking, cached.

    Only the holders of a block are ever asked about, so the cost does not grow with the
    entries left in the directory (a recovery run that was SIGKILLed leaves its entry;
    thousands of them made every engine call read thousands of files)."""

    def __init__(self, directory: str = REGISTRY_DIR) -> None:
        self.directory = directory
        self._sound = None  # type: Optional[bool]
        self._seen = {}  # type: Dict[int, Optional[Tuple[int, int]]]

    def get(self, pid: int) -> Optional[Tuple[int, int]]:
        if pid not in self._seen:
            if self._sound is None:
                self._sound = sound_directory(self.directory)
            self._seen[pid] = _entry(self.directory, str(pid)) if self._sound else None
        return self._seen[pid]


def prune(directory: str = REGISTRY_DIR, proc: str = "/proc") -> int:
    """Remove the entries of processes that no longer exist (left by recovery runs that
    were killed); returns how many. An entry names a live recovery run only while its
    pid and start ticks match a live process, so a gone pid's entry can never match
    again (a new process with that pid has other start ticks): removing it only tidies.
    Root only (the directory is sticky: nobody else may remove another's entry)."""
    if os.geteuid() != 0 or not sound_directory(directory):
        return 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if name.isdigit() and not os.path.exists(os.path.join(proc, name)):
            try:
                os.unlink(os.path.join(directory, name))
                removed += 1
            except OSError:
                pass
    return removed
