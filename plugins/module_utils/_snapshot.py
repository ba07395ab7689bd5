# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Before-images: a write-ahead journal of every store a real run makes, and undo.

Why a journal and not a copy of the block: a recovery changes a handful of words, and a
copy taken before it would be stale by the time of the first store (live processes keep
writing). The :class:`~_plan.Plan` appends one *intent* line per store -- offset, size,
the value it observed (``before``), the value it writes (``after``), the header identity
of the block -- and writes it *before* the store. So a SIGKILL between the journal and
the store is harmless: undo finds that word still at ``before`` and skips it (a line
written is in the kernel's page cache, which outlives the process). The line is also
fsynced first when the block's bytes can outlive the kernel (a block file, kind
``path``): a crash of the machine then cannot keep a store whose line was lost. A
shared-memory or memfd block dies with the kernel, so an fsync per store would buy it
nothing and cost a disk flush per word (milliseconds each, a fleet heal's largest wait). A CAS that
loses its race is marked ``failed`` (nothing was stored); a fetch-add that saw another
value than observed is ``amended``; the run ends with an ``end`` line carrying the
verdicts that justified the action. Scrubbed pages keep their bytes.

Undo (:func:`undo`) puts the before values back by CAS on the value the recovery wrote,
in reverse order, after a dry pass over *every* entry: if any word moved since (a live
process took the lock, a reader came, the counters moved), the whole undo is refused,
naming the field, and nothing changes. A block re-created since (another inode, size or
identity digest) is refused too. Undo runs in a Plan of its own, so it is journaled as
well: undoing an undo works, or is refused clearly.

Files: one ``<id>.jsonl`` per run that changed bytes, in a directory created 0700 (files
0600, ``O_EXCL|O_NOFOLLOW``); retention is bounded by count and age (docs/audit-and-undo.md).
Dry runs and runs that change nothing write nothing.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from . import _layout as L
from ._errors import RecoveryError, SnapshotError, SnapshotMismatch, UsageError

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Dict, List, Optional, Tuple

FORMAT = "pylabhub.recovery/snapshot-v1"
ROOT_DIR = "/var/lib/pylabhub-recovery/snapshots"
ENV_DIR = "PYLABHUB_RECOVERY_SNAPSHOT_DIR"
ENV_ENABLED = "PYLABHUB_RECOVERY_SNAPSHOT"          # "off"/"0"/"no"/"false": none written
ENV_KEEP = "PYLABHUB_RECOVERY_SNAPSHOT_KEEP"        # most snapshots kept (default 500)
ENV_DAYS = "PYLABHUB_RECOVERY_SNAPSHOT_DAYS"        # oldest kept, in days (default 30)
KEEP, DAYS = 500, 30
#: A snapshot id: ``20261202T131000.123456Z-heal-4242-0123abcd``.
_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[a-z_]+-[0-9]+-[0-9a-f]{8}$"
_ID = []        # type: List[Any]   # compiled at first use: ``re`` costs a read-only run


def is_id(text: str) -> bool:
    """Whether ``text`` is a snapshot id (what :meth:`Journal` names its file)."""
    if not _ID:
        import re
        _ID.append(re.compile(_ID_PATTERN))
    return _ID[0].match(text) is not None


_OFF = ("0", "off", "no", "false")

#: Header bytes that never change after creation: what makes "the same block".
_IDENTITY = ((0, 184), (472, 8), (2496, 64))


# --------------------------------------------------------------------------- settings
def enabled(explicit: Optional[bool] = None) -> bool:
    """Whether real runs write before-images: ``explicit`` if given, else the
    environment (:data:`ENV_ENABLED`), else yes."""
    if explicit is not None:
        return bool(explicit)
    return os.environ.get(ENV_ENABLED, "").strip().lower() not in _OFF


def state_home() -> str:
    """Where per-user state goes for a user who is not root (XDG base directory spec)."""
    base = os.environ.get("XDG_STATE_HOME") or ""
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "pylabhub-recovery")


def directory(explicit: Optional[str] = None) -> str:
    """The snapshot directory: ``explicit``, else $PYLABHUB_RECOVERY_SNAPSHOT_DIR, else
    :data:`ROOT_DIR` for root and ``$XDG_STATE_HOME/pylabhub-recovery/snapshots`` for
    anyone else."""
    chosen = explicit or os.environ.get(ENV_DIR)
    if chosen:
        return os.path.abspath(chosen)
    return ROOT_DIR if os.geteuid() == 0 else os.path.join(state_home(), "snapshots")


def _number(env: str, default: int) -> int:
    try:
        value = int(os.environ.get(env, ""), 10)
    except ValueError:
        return default
    return value if value > 0 else default


def secure_dir(path: str, error=None) -> int:
    """Create ``path`` (0700, parents too) if missing and open it; refuse a directory
    that is a symlink, not ours, or writable by others. Returns an fd (O_DIRECTORY)."""
    error = error or SnapshotError
    try:
        os.makedirs(path, 0o700, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise error("cannot use the directory %s: %s; nothing was changed"
                    % (path, exc.strerror or exc), path=path)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise error("the directory %s is not safe (owner uid %d, mode %04o): it must be "
                    "owned by uid %d and writable by no one else; nothing was changed"
                    % (path, st.st_uid, stat.S_IMODE(st.st_mode), os.geteuid()), path=path)
    return fd


def identity(block) -> Dict[str, object]:
    """What makes the block the same block: its file (device, inode), size and the
    BLAKE2b-256 of the header bytes fixed at creation (geometry, policies, layout hashes,
    creation time)."""
    h = L.blake2b()(digest_size=32)
    for offset, size in _IDENTITY:
        h.update(block.read(offset, size))
    return {"address": block.address, "name": block.name, "path": block.path,
            "device": block.inode[0], "inode": block.inode[1], "size": block.size,
            "header_digest": h.hexdigest()}


def _now_id(operation: str) -> str:
    now = time.time()
    return "%s.%06dZ-%s-%d-%s" % (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)),
                                  int(now * 1e6) % 1000000, operation, os.getpid(),
                                  os.urandom(4).hex())


# --------------------------------------------------------------------------- the journal
class Journal:
    """The write-ahead journal of one real run. Created at the first store (a run that
    changes nothing writes nothing); every line is written before the store it announces,
    and fsynced first for a block whose bytes outlive the kernel (:attr:`durable`)."""

    def __init__(self, operation: str, block, directory_: str,
                 context: Optional[Dict[str, object]] = None) -> None:
        self.operation = operation
        self.block = block
        self.directory = directory_
        self.context = dict(context or {})
        self.id: Optional[str] = None
        self.path: Optional[str] = None
        self._fd: Optional[int] = None
        self._seq = 0
        #: fsync each line: only a block file can keep a store across a machine crash
        self.durable = getattr(block, "kind", "path") not in ("shm", "memfd")

    # -- writing ---------------------------------------------------------------------
    def _open(self) -> None:
        dfd = secure_dir(self.directory)
        try:
            self.id = _now_id(self.operation)
            name = self.id + ".jsonl"
            try:
                self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                   | os.O_APPEND | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            except OSError as exc:
                raise SnapshotError("cannot create the before-image in %s: %s; nothing was "
                                    "changed" % (self.directory, exc.strerror))
            self.path = os.path.join(self.directory, name)
            head = {"format": FORMAT, "id": self.id, "operation": self.operation,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "host": os.uname().nodename, "uid": os.geteuid(), "pid": os.getpid(),
                    "block": identity(self.block)}
            head.update(self.context)
            self._line(head, first=True)
            try:
                if self.durable:
                    os.fsync(dfd)                   # the file's name is durable too
            except OSError:
                pass
            prune(self.directory, dfd, keep_id=self.id)
        finally:
            os.close(dfd)

    def _line(self, record: Dict[str, object], first: bool = False) -> None:
        import json     # only when journalling: read-only commands never load it
        data = (json.dumps(record, sort_keys=True) + "\n").encode("ascii")
        try:
            os.write(self._fd, data)                # type: ignore[arg-type]
            if self.durable:
                os.fsync(self._fd)                  # type: ignore[arg-type]
        except OSError as exc:
            raise SnapshotError("cannot write the before-image %s: %s; %s"
                                % (self.path, exc.strerror,
                                   "nothing was changed" if first or self._seq <= 1 else
                                   "stopped before the next store: the block is as a kill "
                                   "there leaves it (the next heal finishes it; the "
                                   "before-image holds every store made)"),
                                snapshot=self.id)

    def intent(self, ch, undoes: Optional[int] = None) -> int:
        """Journal one store about to happen (``ch``: a :class:`_plan.Change`)."""
        if self._fd is None:
            self._open()
        self._seq += 1
        entry: Dict[str, object] = {"seq": self._seq, "target": ch.target,
                                    "offset": ch.offset, "size": ch.size}
        if ch.scrubbed is not None:
            entry.update(kind="pages", zeroed=undoes is None,
                         pages=[[pos, bytes(chunk).hex()] for pos, chunk in ch.scrubbed])
        elif ch.atomic:
            entry.update(kind="word", before=ch.before, after=ch.after)
        else:
            entry.update(kind="bytes", before=bytes(ch.before).hex(),
                         after=bytes(ch.after).hex())
        if undoes is not None:
            entry["undoes"] = undoes
        self._line(entry)
        return self._seq

    def failed(self, seq: int) -> None:
        """The store announced by ``seq`` did not happen (its CAS lost)."""
        self._line({"failed": seq})

    def amend(self, seq: int, before: int, after: int) -> None:
        """A fetch-add found another value than observed: what it really stored."""
        self._line({"amend": seq, "before": before, "after": after})

    def finish(self, summary: Dict[str, object]) -> None:
        """The last line: the verdicts that justified the run (or its error); closes."""
        if self._fd is None:
            return
        try:
            self._line({"end": summary})
        finally:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def written(self) -> bool:
        return self.id is not None

    @property
    def stores(self) -> int:
        """Stores announced so far (each one was journaled before it was made)."""
        return self._seq


class NoJournal(Journal):
    """A run without a before-image (``snapshot=False``): counts the stores it is told
    of, writes nothing."""

    def __init__(self) -> None:                 # pylint: disable=super-init-not-called
        self.id = self.path = None
        self._fd = None
        self._seq = 0

    def intent(self, ch, undoes: Optional[int] = None) -> int:
        self._seq += 1
        return self._seq

    def _line(self, record: Dict[str, object], first: bool = False) -> None:
        return None


def prune(path: str, dfd: int, keep_id: Optional[str] = None) -> List[str]:
    """Bounded retention: remove snapshots older than $PYLABHUB_RECOVERY_SNAPSHOT_DAYS
    (30) days, and all but the newest $PYLABHUB_RECOVERY_SNAPSHOT_KEEP (500). Only our
    own regular files named like a snapshot id are touched."""
    keep, days = _number(ENV_KEEP, KEEP), _number(ENV_DAYS, DAYS)
    found: List[Tuple[float, str]] = []
    for name in os.listdir(dfd):
        if not name.endswith(".jsonl") or not is_id(name[:-6]) or name[:-6] == keep_id:
            continue
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            found.append((st.st_mtime, name))
    found.sort(reverse=True)
    cutoff = time.time() - days * 86400
    removed = [name for i, (mtime, name) in enumerate(found)
               if i >= keep - 1 or mtime < cutoff]
    for name in removed:
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            pass
    return removed


# --------------------------------------------------------------------------- reading
def locate(snapshot: str, directory_: Optional[str] = None) -> str:
    """The file of ``snapshot``: an id (in the snapshot directory) or a path."""
    if is_id(snapshot):
        return os.path.join(directory(directory_), snapshot + ".jsonl")
    if os.sep in snapshot and snapshot.endswith(".jsonl"):
        return os.path.abspath(snapshot)
    raise UsageError("%r is neither a snapshot id (as 'datablock-admin snapshots' lists "
                     "them) nor the path of a .jsonl snapshot" % snapshot)


def load(path: str) -> Dict[str, object]:
    """Parse a journal: ``head``, ``entries`` (applied stores, in order, amendments
    folded in), ``complete`` (an ``end`` line was written) and ``end``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        code = UsageError if exc.errno in (errno.ENOENT, errno.ELOOP) else RecoveryError
        raise code("cannot open the snapshot %s: %s" % (path, exc.strerror))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError("%s is not a regular file" % path)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            raw = stream.read(1 << 30)
    finally:
        os.close(fd)
    import json
    lines = raw.split(b"\n")
    records: List[Dict[str, object]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line.decode("ascii")))
        except ValueError:
            if number >= len(lines) - 1:        # a last line torn by a kill: never applied
                break
            raise UsageError("%s: line %d is not a snapshot record" % (path, number))
    if not records or records[0].get("format") != FORMAT:
        raise UsageError("%s is not a pylabhub.recovery snapshot" % path)
    entries: Dict[int, Dict[str, object]] = {}
    end = None
    for rec in records[1:]:
        if "seq" in rec:
            entries[int(rec["seq"])] = rec                      # type: ignore[arg-type]
        elif "failed" in rec:
            entries.pop(int(rec["failed"]), None)               # type: ignore[arg-type]
        elif "amend" in rec:
            entry = entries.get(int(rec["amend"]))              # type: ignore[arg-type]
            if entry is not None:
                entry.update(before=rec["before"], after=rec["after"])
        elif "end" in rec:
            end = rec["end"]
    return {"head": records[0], "entries": [entries[k] for k in sorted(entries)],
            "complete": end is not None, "end": end, "path": path}


def listing(directory_: Optional[str] = None) -> Dict[str, object]:
    """Every snapshot in the directory, newest first (id, time, operation, block,
    stores, complete, undo_of). Read-only; a missing directory is an empty list."""
    path = directory(directory_)
    out: List[Dict[str, object]] = []
    try:
        names = sorted(os.listdir(path), reverse=True)
    except OSError:
        names = []
    for name in names:
        if not name.endswith(".jsonl") or not is_id(name[:-6]):
            continue
        try:
            snap = load(os.path.join(path, name))
        except RecoveryError:
            continue
        head = snap["head"]
        out.append({"id": head["id"], "time": head["time"], "operation": head["operation"],
                    "block": head["block"], "stores": len(snap["entries"]),  # type: ignore
                    "complete": snap["complete"], "undo_of": head.get("undo_of")})
    return {"directory": path, "snapshots": out}


# --------------------------------------------------------------------------- undo
def _undo_list(entries: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Entries to put back, newest first: a store undone by the run's own rollback and
    that rollback cancel out (nothing to put back, no transient store on a live word)."""
    cancelled = set()
    for e in entries:
        if "undoes" in e:
            cancelled.update((e["seq"], e["undoes"]))
    return [e for e in reversed(entries) if e["seq"] not in cancelled]


def _check(found, expected, before, last: bool, target: str, problems: List[str]) -> bool:
    """True when the store must be put back; False when it never happened (only the last
    store of an unfinished run can be that); a change since is added to ``problems``."""
    if found == expected:
        return True
    if last and found == before:
        return False
    if isinstance(found, int):
        problems.append("%s changed since: the run wrote %s, it now holds %s"
                        % (target, expected, found))
    else:
        problems.append("%s changed since: it no longer holds the %d bytes the run wrote"
                        % (target, len(expected)))
    return False


def apply_undo(plan, snap: Dict[str, object]) -> List[str]:
    """Put back every store of ``snap`` through ``plan`` (dry or real), newest first, by
    CAS (words) or checked writes (bytes, pages) on the value the recovery wrote. Returns
    the problems (fields changed since); the caller refuses when there is any."""
    problems: List[str] = []
    todo = _undo_list(snap["entries"])                              # type: ignore[arg-type]
    tail = None if snap["complete"] else (todo[0]["seq"] if todo else None)
    for e in todo:
        last = e["seq"] == tail
        target, offset, size = str(e["target"]), int(e["offset"]), int(e["size"])  # type: ignore
        if e["kind"] == "word":
            fld = L.Field(target, offset, size, "u", True)
            if _check(plan.get(fld), e["after"], e["before"], last, target, problems):
                plan.cas(target, fld, 0, int(e["after"]), int(e["before"]))   # type: ignore
        elif e["kind"] == "bytes":
            before, after = bytes.fromhex(str(e["before"])), bytes.fromhex(str(e["after"]))
            if _check(plan.read(offset, len(after)), after, before, last, target, problems):
                plan.put(target, offset, after, before)
        else:                                   # pages: scrubbed (zeroed) or put back
            for pos, text in e["pages"]:        # type: ignore[attr-defined]
                chunk, zeros = bytes.fromhex(text), bytes(len(text) // 2)
                was, now = (chunk, zeros) if e["zeroed"] else (zeros, chunk)
                if _check(plan.read(pos, len(chunk)), now, was, last,
                          "%s page at %d" % (target, pos), problems):
                    plan.put(target, pos, now, was)
    return problems


def check_identity(block, head: Dict[str, object]) -> None:
    """Refuse a block that is not the one the snapshot was taken of."""
    then, now = head["block"], identity(block)
    for key, what in (("device", "device"), ("inode", "inode"), ("size", "size"),
                      ("header_digest", "header identity")):
        if then.get(key) != now[key]:                              # type: ignore[union-attr]
            raise SnapshotMismatch(
                "%s: not the block snapshot %s was taken of: its %s differs (%s then, %s "
                "now): it was re-created; nothing was changed"
                % (block.address, head["id"], what, then.get(key), now[key]),  # type: ignore
                snapshot=head["id"])
