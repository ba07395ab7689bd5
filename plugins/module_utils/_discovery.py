# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every DataBlock on this host: named segments in /dev/shm and memfds held by processes.

Listing never maps anything: it reads at most the 4096-byte header of each candidate
(``O_NOFOLLOW|O_NONBLOCK`` for /dev/shm, so symlinks and FIFOs cannot trick or hang it) and
judges it with :func:`_block.inspect_header`. memfd-backed blocks (pylabhub's newer
channels) are found through ``/proc/<pid>/fd/<n>`` links to ``/memfd:...``, addressed as
``memfd:<pid>:<fd>`` and deduplicated by inode. Processes vanishing mid-scan are normal
on a live host and skipped silently; what exists but cannot be read (a 0600 segment of
another user, another user's ``/proc/<pid>/fd``) is counted with the reason, so a listing
by a user who cannot see everything says so (:func:`scan`).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from typing import Dict, Iterator, List, Optional, Tuple

from . import _layout as L
from ._block import SHM_DIR, inspect_header
from ._kernel import BlockId, Scans, engine_fd
from ._liveness import ALIVE, DEAD, SUSPECT_HUNG, Snapshot
from ._observe import producer_verdict
from ._procinfo import monotonic_ns

MEMFD_LINK = "/memfd:"
_DELETED = " (deleted)"


#: errnos that mean "it exists but is not ours to read" (anything else: it went away).
_DENIED = (errno.EACCES, errno.EPERM)


def _unreadable(unreadable: Optional[list], path: str, exc: OSError) -> None:
    if unreadable is not None and exc.errno not in (errno.ENOENT, errno.ESRCH):
        reason = ("permission denied" if exc.errno in _DENIED
                  else (exc.strerror or "error %d" % exc.errno).lower())
        unreadable.append({"path": path, "reason": reason})


def _read_head(path: str, flags: int, unreadable: Optional[list] = None
               ) -> Optional[Tuple[os.stat_result, bytes]]:
    """fstat + the first HEADER_SIZE bytes of a regular file (one bounded ``pread``, no
    mapping), or None (skip it; why it could not be read goes to ``unreadable``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | flags)
    except OSError as exc:
        if exc.errno != errno.ELOOP:        # a symlink swapped in: not an entry to read
            _unreadable(unreadable, path, exc)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return st, os.pread(fd, L.HEADER_SIZE, 0)
    except OSError as exc:
        _unreadable(unreadable, path, exc)
        return None
    finally:
        os.close(fd)


def summarize_unreadable(unreadable: List[Dict[str, str]]) -> Dict[str, object]:
    """``{"count", "by_reason": {reason: n}, "entries": [{"path", "reason"}]}``: what a
    listing could not read (files in /dev/shm, other users' /proc/<pid>/fd)."""
    by_reason = {}  # type: Dict[str, int]
    for item in unreadable:
        by_reason[item["reason"]] = by_reason.get(item["reason"], 0) + 1
    return {"count": len(unreadable), "by_reason": by_reason, "entries": list(unreadable)}


def scan(pattern: Optional[str] = None, shm_dir: str = SHM_DIR,
         proc: str = "/proc") -> Dict[str, object]:
    """:func:`discover` plus what could not be read: ``{"blocks": [...], "unreadable":
    summarize_unreadable(...)}``. An unreadable /dev/shm entry is counted when its name
    matches ``pattern``; an unreadable fd table always (its memfds' names are unknown)."""
    unreadable = []  # type: List[Dict[str, str]]
    blocks = discover(pattern, shm_dir, proc, unreadable=unreadable)
    if pattern is not None:
        unreadable = [u for u in unreadable if not u["path"].startswith(shm_dir)
                      or fnmatch.fnmatchcase(os.path.basename(u["path"]), pattern)]
    return {"blocks": blocks, "unreadable": summarize_unreadable(unreadable)}


def _has_magic(head: bytes) -> bool:
    f = L.HEADER["magic"]
    return len(head) >= f.end and int.from_bytes(head[f.offset:f.end], "little") == L.MAGIC


def _decode(head: bytes, name: str):
    f = L.HEADER[name]
    raw = head[f.offset:f.end]
    if f.kind == "u":
        return int.from_bytes(raw, "little")
    if f.kind == "text":
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return raw


def _describe(address: str, kind: str, path: str, name: str, st: os.stat_result,
              head: bytes) -> Dict[str, object]:
    geometry, problems = inspect_header(head, st.st_size)
    entry = {
        "address": address, "kind": kind, "path": path, "name": name,
        "size": st.st_size, "inode": st.st_ino, "owner_uid": st.st_uid,
        "mode": "%04o" % stat.S_IMODE(st.st_mode),
        "status": problems[0].code if problems else "ok",
        "problems": [p.message for p in problems],
        "holders": None,
    }  # type: Dict[str, object]
    full = len(head) >= L.HEADER_SIZE
    if geometry is None and full:  # untrusted, but what the header claims is still news
        geometry = L.Geometry.from_stored(_decode(head, "ring_buffer_capacity"),
                                          _decode(head, "logical_unit_size"),
                                          _decode(head, "flexible_zone_size"))
    entry["capacity"] = geometry.capacity if geometry else None
    entry["stride"] = geometry.stride if geometry else None
    entry["flex_size"] = geometry.flex_size if geometry else None
    for key, field, kind_ in (("policy", "policy", L.Policy),
                              ("consumer_sync", "consumer_sync_policy", L.ConsumerSync),
                              ("checksum_policy", "checksum_policy", L.ChecksumPolicy)):
        entry[key] = L.enum_name(kind_, _decode(head, field)) if full else None
    for key in ("hub_name", "hub_uid", "producer_name", "producer_uid"):
        entry[key] = _decode(head, key) if full else None
    evidence = full and (_decode(head, "ev_marker") == L.EVIDENCE_MARKER
                         and _decode(head, "ev_version") == L.EVIDENCE_VERSION)
    pid = _decode(head, "producer_heartbeat_pid") if full else 0
    entry["has_evidence"] = bool(evidence)
    entry["producer_pid"] = pid if full else None
    entry["producer_verdict"] = entry["producer_alive"] = None
    return entry


def _judge_producer(entry: Dict[str, object], head: bytes, block: BlockId,
                    observed_ns: int, snap: Snapshot, scans: Scans) -> None:
    """The producer's verdict by the engine's rule (kernel scan first, _observe)."""
    if not entry["producer_pid"]:
        return
    verdict = producer_verdict(lambda name: _decode(head, name), snap, block, scans,
                               observed_ns)
    entry["producer_verdict"] = verdict.to_dict() if verdict else None
    # alive / suspect-hung: the process exists; dead: positively gone; unknown: None
    entry["producer_alive"] = (None if verdict is None or verdict.state not in
                               (ALIVE, SUSPECT_HUNG, DEAD) else verdict.state != DEAD)


@contextlib.contextmanager
def _reopened(block: BlockId) -> Iterator[BlockId]:
    """``block`` with an fd of its own (read-only, never followed through a symlink) while
    its producer is judged: nobody else having it open proves every holder gone without
    a /proc walk (_kernel.exclusive). Without one (a memfd, gone, replaced) as it was."""
    fd = None
    if block.kind != "memfd":
        try:
            fd = os.open(block.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
                         | os.O_NOFOLLOW)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != block.key:
                os.close(fd)
                fd = None
        except OSError:
            fd = None
    if fd is None:
        yield block
        return
    try:
        with engine_fd(fd):                 # recovery's own open: not a holder
            yield block.replace(fd=fd)
    finally:
        os.close(fd)


def _memfd_name(target: str) -> str:
    name = target[len(MEMFD_LINK):]
    return name[:-len(_DELETED)] if name.endswith(_DELETED) else name


def _numeric(names: List[str]) -> List[int]:
    return sorted(int(n) for n in names if n.isdigit())


def discover(pattern: Optional[str] = None, shm_dir: str = SHM_DIR,
             proc: str = "/proc", unreadable: Optional[list] = None,
             scans: Optional[Scans] = None, verdicts: bool = True) -> List[Dict[str, object]]:
    """List every DataBlock on the host, sorted by address (see module doc).

    ``pattern`` (fnmatch) filters on the block's name (shm name, or the memfd's name such
    as ``plh_shm_capability``) or its address. Files without the magic are not listed;
    blocks with the magic but a bad header are, with ``status`` = the first problem's code.
    Producers are judged after every header was read, by one kernel scan (``scans``, or
    one taken here); ``verdicts=False`` leaves ``producer_verdict``/``producer_alive``
    None (``each_block`` does not show them).
    """
    snap = Snapshot.take()
    seen = {}  # type: Dict[Tuple[int, int], Dict[str, object]]
    heads = {}  # type: Dict[Tuple[int, int], Tuple[bytes, BlockId, int]]
    # 1. named segments
    try:
        names = sorted(os.listdir(shm_dir))
    except OSError:
        names = []
    plain = os.path.normpath(shm_dir) == SHM_DIR
    for name in names:
        path = os.path.join(shm_dir, name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        t = monotonic_ns()
        got = _read_head(path, os.O_NOFOLLOW, unreadable)
        if got is None or not _has_magic(got[1]):
            continue
        st, head = got
        seen[(st.st_dev, st.st_ino)] = _describe(name if plain else path, "shm", path, name,
                                                 st, head)
        heads[(st.st_dev, st.st_ino)] = (head, BlockId(st.st_dev, st.st_ino, st.st_uid,
                                                       "shm" if plain else "path", path), t)
    # 2. memfds held by processes
    try:
        pids = _numeric(os.listdir(proc))
    except OSError:
        pids = []
    skip = set()  # type: set
    for pid in pids:
        fd_dir = os.path.join(proc, str(pid), "fd")
        try:
            fds = _numeric(os.listdir(fd_dir))
        except OSError as exc:
            _unreadable(unreadable, fd_dir, exc)
            continue
        for fd in fds:
            link = os.path.join(fd_dir, str(fd))
            try:
                target = os.readlink(link)
                if not target.startswith(MEMFD_LINK):
                    continue
                st = os.stat(link)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in skip or not stat.S_ISREG(st.st_mode):
                continue
            if key in seen:
                holders = seen[key]["holders"]
                if isinstance(holders, list) and pid not in holders:
                    holders.append(pid)
                continue
            t = monotonic_ns()
            got = _read_head(link, 0, unreadable)
            if got is None or (got[0].st_dev, got[0].st_ino) != key:
                continue  # gone or replaced mid-scan: try the next fd
            if not _has_magic(got[1]):
                skip.add(key)
                continue
            entry = _describe("memfd:%d:%d" % (pid, fd), "memfd", link, _memfd_name(target),
                              got[0], got[1])
            entry["holders"] = [pid]
            seen[key] = entry
            heads[key] = (got[1], BlockId(key[0], key[1], got[0].st_uid, "memfd", link), t)
    out = [(k, e) for k, e in seen.items()
           if pattern is None or fnmatch.fnmatchcase(str(e["name"]), pattern)
           or fnmatch.fnmatchcase(str(e["address"]), pattern)]
    if verdicts:
        scans = scans if scans is not None else Scans()
        for key, entry in out:
            head, block, t = heads[key]
            if len(head) >= L.HEADER_SIZE:
                if block.kind == "path":
                    scans.want(block.path)
                with _reopened(block) as again:
                    _judge_producer(entry, head, again, t, snap, scans)
    out = [e for dummy, e in out]
    return sorted(out, key=lambda e: str(e["address"]))
