# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel truth: which processes have which block mapped or open, from one walk of /proc.

Recorded evidence (start ticks, heartbeats, boot ids) can be stale, shifted by a time
namespace, or left behind by an earlier process with the same pid. The kernel cannot: a
process that holds a word of a block has that block mapped (it wrote the word through the
mapping and keeps it while it holds). :class:`HostScan` walks ``/proc/[0-9]*`` once and
indexes, by the file's ``(st_dev, st_ino)``, every process with a *shared* file mapping
(``/proc/PID/maps``, perms ``..s``) or a candidate fd (``/proc/PID/fd`` links into
``/dev/shm/``, ``/memfd:`` or a path asked for). Only holders of a block a question is
asked about get their ``status``/``stat`` read (pid at every namespace level, state,
start ticks, uid), once.

**Scope** says whether absence in the scan proves anything for one block
(:meth:`HostScan.scope`): ``host`` (initial PID namespace, every process readable),
``namespace`` (a nested PID namespace whose processes were all readable and the block's
filesystem was mounted privately after the namespace began: the fleet lab's hosts), or
``partial`` with the reason (not root, unreadable processes, a nested namespace that
inherited or shares ``/dev/shm``, a memfd seen from a nested namespace, a filesystem whose
maps entries may not carry the file's device, the scan switched off).

**Time.** A holder recorded in a word is proven absent only by a scan that *started after*
that word was read: a process may attach and take a word after an older scan walked past
it. :class:`Scans` (one per engine call, shared by every block of ``each_block``) keeps
the latest scan and the first time each holder word was seen with its value, and takes a
new scan only when a verdict needs absence and the latest one is older than that.

**Recovery processes** are not holders of anything a reader or writer does: this
process's own engine mappings are left out of the scan, and mutating engine calls register
themselves (:mod:`_registry`) so that concurrent recovery runs can tell them from readers
(:attr:`Proc.recovery_uid`). Mount facts for the scope live in :mod:`_mounts`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ._record import Record
from ._mounts import fs_birth_ns, mounts_of, pid1_start_realtime_ns
from ._procinfo import parse_stat
from ._registry import Registry

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union
    #: the registry as asked per pid: a lazy Registry, or a dict read in full (tests)
    Registered = Union[Registry, Dict[int, Tuple[int, int]]]
    BlockKey = Tuple[int, int]             # (st_dev, st_ino)

HOST, NAMESPACE, PARTIAL = "host", "namespace", "partial"
PROC_PID_INIT_INO = 0xEFFFFFFC            # inode of the initial PID namespace (proc_ns.h)
CANDIDATE_PREFIXES = ("/dev/shm/", "/memfd:")
# Filesystems whose /proc/PID/maps lines carry the same device number stat() reports
# (overlayfs and btrfs subvolumes do not: their mappings would be invisible by key).
LOCAL_FS = ("tmpfs", "ramfs", "hugetlbfs", "ext2", "ext3", "ext4", "xfs")
# Clock granularity when comparing a mount's birth (coarse CLOCK_REALTIME) with the start
# of PID 1 (USER_HZ ticks, truncated): the mount must be younger by more than this.
BIRTH_MARGIN_NS = 20 * 10**6
CAP_SYS_PTRACE = 19

# "7f..-7f.. rw-s 00000000 00:1b 1234   /dev/shm/x": shared mappings only (perms[3] == s);
# group 6: the path starts with /memfd: (the memfd filesystem also backs SysV and
# anonymous shared memory, which are never blocks)
# (compiled at the first scan: a command that never scans does not pay for it)
_SHARED_MAP_RE = (
    rb"^([0-9a-f]+)-[0-9a-f]+ [r-]([w-])[x-]s [0-9a-f]+ ([0-9a-f]+):([0-9a-f]+) ([0-9]+) *"
    rb"(/memfd:)?")
_SHARED_MAP = []  # type: List[Any]


def _shared_map():  # type: () -> Any
    if not _SHARED_MAP:
        import re
        _SHARED_MAP.append(re.compile(_SHARED_MAP_RE, re.M))
    return _SHARED_MAP[0]


_ENABLED = [True]


def set_scan_enabled(enabled: bool) -> None:
    """FOR BENCHMARKS AND TESTS ONLY: with False every HostScan is empty and every scope
    ``partial`` ("scan switched off"), so verdicts fall back to the conservative
    per-pid rules. It measures what the scan costs; it is never a user setting."""
    _ENABLED[0] = bool(enabled)


def scan_enabled() -> bool:
    return _ENABLED[0]


# --------------------------------------------------------------------------- identities
class BlockId(Record):
    """What the scan needs to know about one block: its file identity and where it lives."""

    __slots__ = ("dev", "ino", "owner_uid", "kind", "path", "fd")
    _no_compare = ("fd",)
    dev: int
    ino: int
    owner_uid: int
    kind: str                              # shm, path or memfd (see _block.resolve)
    path: str
    fd: Optional[int]                      # the engine's open file (not compared)

    def __init__(self, dev: int, ino: int, owner_uid: int, kind: str, path: str,
                 fd: Optional[int] = None) -> None:
        self.dev = dev
        self.ino = ino
        self.owner_uid = owner_uid
        self.kind = kind
        self.path = path
        self.fd = fd

    @property
    def key(self) -> BlockKey:
        return (self.dev, self.ino)

    @classmethod
    def of(cls, block) -> "BlockId":
        """From an attached :class:`_block.Block` (its fd: for the exclusivity check)."""
        dev, ino = block.inode
        return cls(dev, ino, block.owner_uid, block.kind, block.path, block.mapping()[1])


class Hold(Record):
    """How one process holds one block."""

    __slots__ = ("rw", "ro", "fds")
    rw: bool                               # a shared mapping with write permission
    ro: bool                               # a shared read-only mapping
    fds: Tuple[int, ...]                   # open file descriptors

    def __init__(self, rw: bool = False, ro: bool = False, fds: Tuple[int, ...] = ()) -> None:
        self.rw = rw
        self.ro = ro
        self.fds = fds

    @property
    def mapped(self) -> bool:
        return self.rw or self.ro

    def __bool__(self) -> bool:
        return self.mapped or bool(self.fds)

    def how(self) -> str:
        if self.rw:
            return "mapped read-write"
        if self.ro:
            return "mapped read-only"
        if self.fds:
            return "open (fd %s), not mapped" % ", ".join(str(f) for f in self.fds)
        return "neither mapped nor open"

    def merged(self, other: "Hold") -> "Hold":
        return Hold(self.rw or other.rw, self.ro or other.ro,
                    tuple(sorted(set(self.fds) | set(other.fds))))


class Proc(Record):
    """A process that has some candidate block mapped or open (read once per scan)."""

    __slots__ = ("pid", "nspid", "state", "start_ticks", "uid", "comm", "pidns", "timens",
                 "own", "recovery_uid")
    pid: int                               # as our /proc shows it
    nspid: Tuple[int, ...]                 # NSpid: our level first, its own level last
    state: str                             # stat field 3 (R S D T t Z ...), "?" unreadable
    start_ticks: Optional[int]             # stat field 22, in OUR time namespace
    uid: Optional[int]
    comm: str
    pidns: Optional[int]                   # inode of /proc/PID/ns/pid
    timens: Optional[int]                  # inode of /proc/PID/ns/time
    own: bool                              # this very process (engine mappings left out)
    recovery_uid: Optional[int]            # owner of a valid registration, else None

    def __init__(self, pid: int, nspid: Tuple[int, ...], state: str,
                 start_ticks: Optional[int], uid: Optional[int], comm: str,
                 pidns: Optional[int] = None, timens: Optional[int] = None, own: bool = False,
                 recovery_uid: Optional[int] = None) -> None:
        self.pid = pid
        self.nspid = nspid
        self.state = state
        self.start_ticks = start_ticks
        self.uid = uid
        self.comm = comm
        self.pidns = pidns
        self.timens = timens
        self.own = own
        self.recovery_uid = recovery_uid

    @property
    def stopped(self) -> bool:
        return self.state in ("T", "t")

    def has_pid(self, pid: int) -> bool:
        """``pid`` names this process at some PID-namespace level we can see."""
        return pid in self.nspid

    def recovery_for(self, owner_uid: int) -> bool:
        """A registered recovery run whose registration counts for a block owned by
        ``owner_uid`` (registered by root, or by the block's owner)."""
        return self.recovery_uid is not None and self.recovery_uid in (0, owner_uid)

    def describe(self) -> str:
        levels = " ".join(str(p) for p in self.nspid)
        return "pid %d (%s, NSpid %s, state %s)" % (self.pid, self.comm or "?", levels,
                                                    self.state)

    def to_dict(self, hold: Optional[Hold] = None) -> Dict[str, object]:
        out = {"pid": self.pid, "nspid": list(self.nspid), "state": self.state,
               "start_ticks": self.start_ticks, "comm": self.comm,
               "recovery": self.recovery_uid is not None}  # type: Dict[str, object]
        if hold is not None:
            out["holds"] = hold.how()
        return out


class Scope(Record):
    """Whether a scan's absence proves anything for one block, and why."""

    __slots__ = ("name", "reason")
    name: str                              # host, namespace or partial
    reason: str

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    @property
    def complete(self) -> bool:
        return self.name in (HOST, NAMESPACE)

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "reason": self.reason, "complete": self.complete}


# --------------------------------------------------------------------------- exclusivity
_LEASE_FS = {}  # type: Dict[int, bool]


def exclusive(block: BlockId) -> Optional[bool]:
    """Is the engine's open file of ``block`` the ONLY open file of it on this kernel?

    A write lease (F_SETLEASE F_WRLCK) is granted only when the inode's counts of files
    open for reading and for writing are exactly the caller's own; a mapping keeps its
    file open, so a grant proves that no process -- in any PID namespace, readable or
    not -- has the block open or mapped. The lease is released at once (a process
    opening the block meanwhile waits those microseconds; its lease-break signal is
    SIGURG, ignored by default). True: exclusive; False: someone else has it open; None:
    cannot tell -- no fd, a memfd (created files are not counted), not tmpfs, leases
    not permitted or not supported."""
    if block.fd is None or block.kind == "memfd" or not _lease_fs(block.dev):
        return None
    try:
        fcntl.fcntl(block.fd, fcntl.F_SETSIG, _sigurg())
        fcntl.fcntl(block.fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError as exc:
        return False if exc.errno in (errno.EAGAIN, errno.EBUSY) else None
    try:
        fcntl.fcntl(block.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        pass
    return True


def _sigurg() -> int:
    """SIGURG's number, from the C module ``signal`` wraps: ``signal`` itself makes its
    enums of every signal at import, a millisecond of every diagnosis of a real block."""
    try:
        from _signal import SIGURG
    except ImportError:                 # another Python than CPython
        from signal import SIGURG
    return int(SIGURG)


def _lease_fs(dev: int) -> bool:
    """Only tmpfs: its open counts are the file's own (overlayfs, network and FUSE
    filesystems may not see every opener)."""
    if dev not in _LEASE_FS:
        mounts = mounts_of("/proc", dev)
        _LEASE_FS[dev] = bool(mounts) and all(m.fstype == "tmpfs" for m in mounts)
    return _LEASE_FS[dev]


# --------------------------------------------------------------------------- own process
# Mappings and fds the recovery engine itself made in this process (the Blocks it attached
# and short-lived fds): left out of our own process's entry, so the engine never counts
# itself as a holder, while this process's other uses of a block (our runtime, in tests)
# still count. A Block maps only at its first write, so its address is read at scan time.
_OWN_BLOCKS: List[object] = []
_OWN_FDS: Set[int] = set()


def _own_maps() -> Set[int]:
    """Start addresses of the engine's own mappings now."""
    out = set()  # type: Set[int]
    for block in _OWN_BLOCKS:
        try:
            addr = block.mapping()[0]       # type: ignore[attr-defined]
        except Exception:                   # closed meanwhile: nothing mapped
            continue
        if addr is not None:
            out.add(addr)
    return out


class engine_fd:  # pylint: disable=invalid-name
    """Mark an fd of this process as recovery's own while the body runs (discovery's
    short-lived open of a block it judges). (A class, not ``contextlib.contextmanager``:
    contextlib and what it imports cost a small command milliseconds at start-up.)"""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        _OWN_FDS.add(self.fd)

    def __exit__(self, *exc) -> None:
        _OWN_FDS.discard(self.fd)


class engine_mapping(engine_fd):  # pylint: disable=invalid-name
    """Mark ``block``'s mapping (made now or at its first write) and fd as the engine's
    own while the body runs."""

    def __init__(self, block) -> None:
        super().__init__(-1)
        self.block = block

    def __enter__(self) -> None:
        self.fd = self.block.mapping()[1]
        _OWN_BLOCKS.append(self.block)
        super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        _OWN_BLOCKS.remove(self.block)


# --------------------------------------------------------------------------- /proc readers
def _read(path: str) -> Optional[bytes]:
    """Contents of a /proc file; None when gone; raises PermissionError when unreadable.
    (os.open/os.read: a /proc walk reads thousands of these, file objects cost more.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionError(exc.errno, exc.strerror)
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 17)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionError(exc.errno, exc.strerror)
        return None
    finally:
        os.close(fd)


def _status_fields(data: bytes) -> Dict[bytes, bytes]:
    out = {}
    for line in data.split(b"\n"):
        key, sep, value = line.partition(b":")
        if sep and key in (b"NSpid", b"Uid", b"CapEff", b"Threads"):
            out[key] = value.strip()
    return out


def own_time_namespace() -> Optional[int]:
    """Inode of this process's time namespace (start ticks and monotonic stamps are
    comparable only with processes in the same one)."""
    return _ns_inode("/proc", "self", "time")


def _ns_inode(proc: str, pid: object, kind: str) -> Optional[int]:
    try:
        return os.stat("%s/%s/ns/%s" % (proc, pid, kind)).st_ino
    except OSError:
        return None


def _shared_maps(data: bytes, skip_starts: Set[int], devices: Optional[Set[int]] = None,
                 memfd_dev: Optional[int] = None) -> Dict[BlockKey, Hold]:
    """Shared file mappings of one maps text, by (st_dev, st_ino); only those on
    ``devices`` when given (the filesystems blocks can live on), and on ``memfd_dev``
    only memfds.

    Cheap on purpose: only lines holding a shared-perms marker ("-s " or "xs ": the
    fourth perms letter is s) are parsed; the rest of the text is never split."""
    out = {}  # type: Dict[BlockKey, Hold]
    done = set()  # type: Set[int]
    shared_map = _shared_map()
    for marker in (b"-s ", b"xs "):
        i = data.find(marker)
        while i != -1:
            start = data.rfind(b"\n", 0, i) + 1
            i = data.find(marker, i + 3)
            if start in done:
                continue
            done.add(start)
            m = shared_map.match(data, start)
            if m is None:
                continue
            dev = os.makedev(int(m.group(3), 16), int(m.group(4), 16))
            if devices is not None and dev not in devices:
                continue
            if dev == memfd_dev and not m.group(6):
                continue
            if skip_starts and int(m.group(1), 16) in skip_starts:
                continue
            key = (dev, int(m.group(5)))
            writable = m.group(2) == b"w"
            old = out.get(key)
            hold = Hold(rw=writable, ro=not writable)
            out[key] = old.merged(hold) if old else hold
    return out


def _candidate_fds(proc: str, pid: object, paths: Tuple[str, ...],
                   skip_fds: Set[int]) -> Dict[BlockKey, Hold]:
    """Candidate fds of one process, by (st_dev, st_ino); raises PermissionError."""
    fd_dir = "%s/%s/fd" % (proc, pid)
    try:
        names = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return {}
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PermissionError(exc.errno, exc.strerror)
        return {}
    out = {}  # type: Dict[BlockKey, Hold]
    for name in names:
        if skip_fds and int(name) in skip_fds:
            continue
        link = fd_dir + "/" + name
        try:
            target = os.readlink(link)
            if not (target.startswith(CANDIDATE_PREFIXES) or target in paths
                    or target.rsplit(" (deleted)", 1)[0] in paths):
                continue
            st = os.stat(link)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):   # listable is not readable
                raise PermissionError(exc.errno, exc.strerror)
            continue                                       # closed meanwhile
        key = (st.st_dev, st.st_ino)
        old = out.get(key)
        hold = Hold(fds=(int(name),))
        out[key] = old.merged(hold) if old else hold
    return out


def _live_thread(proc: str, pid: int) -> Optional[str]:
    """A running thread of a process whose leader is a zombie (its maps and fds live on
    in the thread group), as a /proc path; None if there is none."""
    try:
        tids = os.listdir("%s/%d/task" % (proc, pid))
    except OSError:
        return None
    for tid in tids:
        if tid == str(pid):
            continue
        try:
            st = parse_stat(_read("%s/%d/task/%s/stat" % (proc, pid, tid)) or b"")
        except PermissionError:
            return None
        if st is not None and st.state not in ("Z", "X"):
            return "%d/task/%s" % (pid, tid)
    return None


def process_hold(pid: int, key: BlockKey, proc: str = "/proc") -> Optional[Hold]:
    """How process ``pid`` (in our namespace) holds the block ``key`` right now: a Hold
    (falsy when neither mapped nor open), or None when its maps or fds are unreadable.
    Used for one holder at a time when a full scan cannot decide (partial scope)."""
    own = pid == os.getpid()
    where = str(pid)
    try:
        maps = _read("%s/%d/maps" % (proc, pid))
        if maps is None:
            return Hold()
        if not maps:
            st = parse_stat(_read("%s/%d/stat" % (proc, pid)) or b"")
            if st is not None and st.state in ("Z", "X"):
                thread = _live_thread(proc, pid)
                if thread is None:
                    return Hold()
                where = thread
                maps = _read("%s/%s/maps" % (proc, thread)) or b""
        hold = _shared_maps(maps, _own_maps() if own else set()).get(key, Hold())
        fds = _candidate_fds(proc, where, (), _OWN_FDS if own else set()).get(key)
    except PermissionError:
        return None
    return hold.merged(fds) if fds else hold


def _block_devices(paths: Iterable[str]) -> Tuple[Set[int], Optional[int]]:
    """The filesystems a block can live on (/dev/shm, the kernel's memfd filesystem, those
    of the paths asked for), and the memfd one. Shared mappings elsewhere (journals, GPU
    buffers...) are not indexed."""
    out = set()
    for path in ("/dev/shm",) + tuple(paths):
        try:
            out.add(os.stat(path).st_dev)
        except OSError:
            pass
    try:
        fd = os.memfd_create("plh-scan-probe", getattr(os, "MFD_CLOEXEC", 1))
    except (AttributeError, OSError):
        return out, None
    try:
        memfd_dev = os.fstat(fd).st_dev
    finally:
        os.close(fd)
    out.add(memfd_dev)
    return out, memfd_dev


def direct_holder(pid: int, key: BlockKey,
                  registered: Optional[Registered] = None
                  ) -> Optional[Tuple[Proc, Hold]]:
    """(process, how) when ``pid`` of our namespace has block ``key`` mapped or open.
    ``registered``: the recovery registry as read by the caller (see :func:`read_proc`)."""
    if not 0 < pid < 1 << 22:
        return None
    hold = process_hold(pid, key)
    proc = read_proc(pid, registered) if hold else None
    return (proc, hold) if hold and proc is not None else None


def read_proc(pid: int, registered: Optional[Registered] = None,
              proc: str = "/proc") -> Optional[Proc]:
    """One process's identity (pid at every level, state, start ticks, uid, namespaces,
    registration as a recovery run), or None when it is gone. ``registered``: the
    registry as read once by the caller (default: read now)."""
    try:
        st = parse_stat(_read("%s/%d/stat" % (proc, pid)) or b"")
        status = _status_fields(_read("%s/%d/status" % (proc, pid)) or b"")
    except PermissionError:
        st, status = None, {}
    if st is None and not status:
        return None
    try:
        nspid = tuple(int(x) for x in status.get(b"NSpid", b"").split()) or (pid,)
    except ValueError:
        nspid = (pid,)
    try:
        uid = int(status[b"Uid"].split()[0]) if b"Uid" in status else None
    except (ValueError, IndexError):
        uid = None
    start = st.start_ticks if st else None
    own = pid == os.getpid()
    if registered is None:
        registered = {} if own else Registry()
    reg = registered.get(pid) if not own else None      # ours: the engine is not a holder
    recovery_uid = reg[0] if reg and start is not None and reg[1] == start else None
    return Proc(pid, nspid, st.state if st else "?", start, uid,
                st.comm.decode("utf-8", "replace") if st else "",
                _ns_inode(proc, pid, "pid"), _ns_inode(proc, pid, "time"),
                own=own, recovery_uid=recovery_uid)


# --------------------------------------------------------------------------- the scan
class HostScan(Record):
    """One walk of /proc: who has which candidate block mapped or open (see module doc)."""

    __slots__ = ("started_ns", "finished_ns", "enabled", "own_pid", "euid", "pidns", "timens",
                 "init_pidns", "proc_is_ours", "can_ptrace", "processes", "unreadable",
                 "paths", "devices", "memfd_dev", "holds", "procs", "proc", "_scopes",
                 "_registered")
    _no_repr = ("_scopes", "_registered")
    __hash__ = None  # type: ignore[assignment]   # mutable
    started_ns: int                                        # CLOCK_MONOTONIC at the start
    finished_ns: int
    enabled: bool
    own_pid: int
    euid: int
    pidns: Optional[int]
    timens: Optional[int]
    init_pidns: bool                                       # we run in the initial one
    proc_is_ours: bool                                     # /proc is our namespace's
    can_ptrace: bool                                       # CAP_SYS_PTRACE effective
    processes: int                                         # processes walked
    unreadable: List[int]                                  # maps/fds not readable
    paths: Tuple[str, ...]
    devices: Set[int]                                      # filesystems indexed
    memfd_dev: Optional[int]                               # the kernel's memfd filesystem
    holds: Dict[BlockKey, Dict[int, Hold]]
    procs: Dict[int, Optional[Proc]]                       # read lazily
    proc: str
    _scopes: Dict[BlockKey, Scope]
    _registered: Optional[Registered]

    def __init__(self, started_ns: int, finished_ns: int = 0, enabled: bool = True,
                 own_pid: int = 0, euid: int = 0, pidns: Optional[int] = None,
                 timens: Optional[int] = None, init_pidns: bool = False,
                 proc_is_ours: bool = False, can_ptrace: bool = False, processes: int = 0,
                 unreadable: Optional[List[int]] = None, paths: Tuple[str, ...] = (),
                 devices: Optional[Set[int]] = None, memfd_dev: Optional[int] = None,
                 holds: Optional[Dict[BlockKey, Dict[int, Hold]]] = None,
                 procs: Optional[Dict[int, Optional[Proc]]] = None, proc: str = "/proc",
                 _scopes: Optional[Dict[BlockKey, Scope]] = None,
                 _registered: Optional[Registered] = None) -> None:
        self.started_ns = started_ns
        self.finished_ns = finished_ns
        self.enabled = enabled
        self.own_pid = own_pid
        self.euid = euid
        self.pidns = pidns
        self.timens = timens
        self.init_pidns = init_pidns
        self.proc_is_ours = proc_is_ours
        self.can_ptrace = can_ptrace
        self.processes = processes
        self.unreadable = [] if unreadable is None else unreadable
        self.paths = paths
        self.devices = set() if devices is None else devices
        self.memfd_dev = memfd_dev
        self.holds = {} if holds is None else holds
        self.procs = {} if procs is None else procs
        self.proc = proc
        self._scopes = {} if _scopes is None else _scopes
        self._registered = _registered

    @classmethod
    def take(cls, paths: Iterable[str] = (), proc: str = "/proc") -> "HostScan":
        """Walk ``proc`` once (see module doc). Never raises for vanished or unreadable
        processes: they are skipped or counted in ``unreadable``."""
        scan = cls(time.monotonic_ns(), enabled=scan_enabled(), own_pid=os.getpid(),
                   euid=os.geteuid(), paths=tuple(sorted(set(paths))), proc=proc)
        scan._self_facts()
        scan.devices, scan.memfd_dev = _block_devices(scan.paths)
        if scan.enabled:
            scan._walk()
        scan.finished_ns = time.monotonic_ns()
        return scan

    def _self_facts(self) -> None:
        p = self.proc
        self.pidns = _ns_inode(p, "self", "pid")
        self.timens = _ns_inode(p, "self", "time")
        try:
            self.proc_is_ours = int(os.readlink(p + "/self")) == self.own_pid
        except (OSError, ValueError):
            self.proc_is_ours = False
        try:
            fields = _status_fields(_read(p + "/self/status") or b"")
        except PermissionError:
            fields = {}
        nspid = fields.get(b"NSpid", b"").split()
        self.init_pidns = (self.pidns == PROC_PID_INIT_INO and len(nspid) == 1
                           and self.proc_is_ours)
        try:
            self.can_ptrace = bool(int(fields.get(b"CapEff", b"0"), 16) >> CAP_SYS_PTRACE & 1)
        except ValueError:
            self.can_ptrace = False

    def _walk(self) -> None:
        p, own = self.proc, self.own_pid
        try:
            pids = [n for n in os.listdir(p) if n.isdigit()]
        except OSError:
            pids = []
        self.processes = len(pids)
        for name in pids:
            pid = int(name)
            is_own = pid == own
            skip_maps = _own_maps() if is_own else set()
            skip_fds = _OWN_FDS if is_own else set()
            where = name
            try:
                maps = _read("%s/%s/maps" % (p, name))
                if maps is None:
                    continue                                   # gone mid-scan
                if not maps:                                   # kernel thread or zombie
                    st = parse_stat(_read("%s/%s/stat" % (p, name)) or b"")
                    if st is None or st.state not in ("Z", "X"):
                        continue
                    thread = _live_thread(p, pid)
                    if thread is None:
                        continue
                    where = thread
                    maps = _read("%s/%s/maps" % (p, thread)) or b""
                found = _shared_maps(maps, skip_maps, self.devices, self.memfd_dev)
                fds = _candidate_fds(p, where, self.paths, skip_fds)
            except PermissionError:
                self.unreadable.append(pid)
                continue
            for key, hold in fds.items():
                found[key] = found[key].merged(hold) if key in found else hold
            for key, hold in found.items():
                self.holds.setdefault(key, {})[pid] = hold

    def _proc(self, pid: int) -> Optional[Proc]:
        """A holder's identity, read the first time a question needs it (most processes
        the walk matched hold blocks nobody asks about); None when gone since."""
        if pid not in self.procs:
            if self._registered is None:
                self._registered = Registry()
            self.procs[pid] = read_proc(pid, self._registered, self.proc)
        return self.procs[pid]

    # -- questions ----------------------------------------------------------------------
    def holders(self, key: BlockKey) -> List[Tuple[Proc, Hold]]:
        """Every process (ours excepted as far as the engine's own mapping goes) that has
        the block mapped or open, sorted by pid (a process gone since the walk is left
        out: it holds nothing any more)."""
        found = self.holds.get(key, {})
        out = []
        for pid in sorted(found):
            proc = self._proc(pid)
            if proc is not None:
                out.append((proc, found[pid]))
        return out

    def with_pid(self, key: BlockKey, pid: int) -> List[Tuple[Proc, Hold]]:
        """The holders of ``key`` that ``pid`` names at some PID-namespace level."""
        return [(p, h) for p, h in self.holders(key) if p.has_pid(pid)]

    def scope(self, block: BlockId) -> Scope:
        """Is this scan complete for ``block`` (see module doc)? Cached per block."""
        if block.key not in self._scopes:
            self._scopes[block.key] = self._scope(block)
        return self._scopes[block.key]

    def _scope(self, block: BlockId) -> Scope:
        if not self.enabled:
            return Scope(PARTIAL, "kernel scan switched off (benchmarks/tests only)")
        if not self.proc_is_ours:
            return Scope(PARTIAL, "%s is not this PID namespace's /proc" % self.proc)
        if self.euid != 0 or not self.can_ptrace:
            why = "not root" if self.euid != 0 else "no CAP_SYS_PTRACE"
            return Scope(PARTIAL, "%s: %s unreadable, others' may be hidden"
                         % (why, _count(len(self.unreadable), "process", "processes")))
        if self.unreadable:
            return Scope(PARTIAL, "%s unreadable (pid %s%s)"
                         % (_count(len(self.unreadable), "process", "processes"),
                            ", ".join(str(x) for x in self.unreadable[:5]),
                            ", ..." if len(self.unreadable) > 5 else ""))
        if block.dev not in self.devices:
            return Scope(PARTIAL, "this scan did not index the block's filesystem")
        mounts = mounts_of(self.proc, block.dev) if block.kind != "memfd" else []
        if block.kind != "memfd":
            if not mounts:
                return Scope(PARTIAL, "the block's filesystem (device %d:%d) is not mounted "
                             "in this mount namespace"
                             % (os.major(block.dev), os.minor(block.dev)))
            fstype = mounts[0].fstype
            if fstype not in LOCAL_FS:
                return Scope(PARTIAL, "the block lives on %s, whose mappings /proc may not "
                             "name by this device" % fstype)
        if self.init_pidns:
            return Scope(HOST, "initial PID namespace, every process readable")
        if block.kind == "memfd":
            return Scope(PARTIAL, "nested PID namespace and a memfd block: its fd may have "
                         "been passed to processes outside this namespace")
        tagged = [m for m in mounts if m.tags]
        if tagged:
            return Scope(PARTIAL, "nested PID namespace; %s is %s with other mount "
                         "namespaces" % (tagged[0].mountpoint, " ".join(tagged[0].tags)))
        born = fs_birth_ns(mounts, block.dev)
        ns_start = pid1_start_realtime_ns(self.proc)
        if born is None or ns_start is None:
            return Scope(PARTIAL, "nested PID namespace; cannot tell when %s was mounted "
                         "(no birth time)" % mounts[0].mountpoint)
        if born - BIRTH_MARGIN_NS <= ns_start:
            return Scope(PARTIAL, "nested PID namespace; %s was mounted before this PID "
                         "namespace began (inherited: processes outside may share it)"
                         % mounts[0].mountpoint)
        return Scope(NAMESPACE, "nested PID namespace, every process readable, %s is a "
                     "private %s mounted after the namespace began"
                     % (mounts[0].mountpoint, mounts[0].fstype))


def _count(n: int, one: str, many: str) -> str:
    return "%d %s" % (n, one if n == 1 else many)


# --------------------------------------------------------------------------- per call
class Scans:
    """The scans of one engine call (shared by every block of ``each_block``).

    ``latest()`` is whatever scan was taken last (taken now if none): good enough to find
    a holder ALIVE. ``after(t)`` is a scan that started after monotonic time ``t``: the
    only kind that may prove a holder read at ``t`` absent. ``first_seen`` remembers when
    each holder word was first read with its current value, so one scan taken after all
    words were read (``each_block`` reads them all before its first scan) serves every
    block, and a word that changed since is judged by a newer scan.
    """

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self._latest = None  # type: Optional[HostScan]
        self._paths = set(paths)
        self._seen = {}  # type: Dict[Tuple, Tuple[int, int]]
        self._direct = {}  # type: Dict[Tuple[int, BlockKey], Tuple[Proc, Hold]]
        self._exclusive = {}  # type: Dict[BlockKey, Tuple[Optional[bool], int]]
        self._registered = None  # type: Optional[Registered]
        self.taken = 0

    def exclusive(self, block: BlockId, observed_ns: Optional[int]) -> Optional[bool]:
        """:func:`exclusive`, checked after ``observed_ns`` (reused while younger)."""
        got = self._exclusive.get(block.key)
        if got is None or (observed_ns is not None and got[1] <= observed_ns):
            at = time.monotonic_ns()
            got = (exclusive(block), at)
            self._exclusive[block.key] = got
        return got[0]

    def direct(self, pid: int, key: BlockKey) -> Optional[Tuple[Proc, Hold]]:
        """The process ``pid`` of OUR namespace when it has block ``key`` mapped or open
        (two /proc reads, no scan). Found holders are remembered for the engine call
        (finding one alive never needs to be fresh); absence is always read anew."""
        got = self._direct.get((pid, key))
        if got is None:
            # the registry, read once per engine call as a scan reads it once: a recovery
            # run registered since is then taken for a holder (refused: the safe side)
            if self._registered is None:
                self._registered = Registry()
            got = direct_holder(pid, key, self._registered)
            if got is not None:
                self._direct[(pid, key)] = got
        return got

    def want(self, path: str) -> None:
        """Include fds linking to ``path`` (a block outside /dev/shm) from now on."""
        self._paths.add(path)

    def _take(self) -> HostScan:
        self._latest = HostScan.take(self._paths)
        self.taken += 1
        return self._latest

    @property
    def current(self) -> Optional[HostScan]:
        """The latest scan if one was taken (never takes one)."""
        return self._latest

    def latest(self) -> HostScan:
        scan = self._latest
        if scan is None or not self._paths.issubset(scan.paths):
            scan = self._take()
        return scan

    def after(self, observed_ns: Optional[int]) -> HostScan:
        scan = self.latest()
        if observed_ns is not None and scan.started_ns <= observed_ns:
            scan = self._take()
        return scan

    def first_seen(self, word: Tuple, value: int, now_ns: int) -> int:
        """When ``word`` was first read holding ``value`` (``now_ns`` if just now: the
        caller takes ``now_ns`` BEFORE reading the word)."""
        old = self._seen.get(word)
        if old is not None and old[0] == value:
            return old[1]
        self._seen[word] = (value, now_ns)
        return now_ns

    def noted(self, prefix: Tuple) -> List[Tuple]:
        """The words noted so far whose key starts with ``prefix`` (a block's locks: the
        bulk scan reads the others as 0 without noting each, see Scene._preobserve)."""
        n = len(prefix)
        return [word for word in self._seen if word[:n] == prefix]


def describe_matches(matches: List[Tuple[Proc, Hold]]) -> List[str]:
    return ["%s has the block %s%s" % (p.describe(), h.how(),
                                       " (this process, outside the recovery engine)"
                                       if p.own else " (a registered recovery run)"
                                       if p.recovery_uid is not None else "")
            for p, h in matches]
