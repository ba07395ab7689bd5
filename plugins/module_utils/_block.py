# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attach a DataBlock segment safely; read it with bounded ``pread`` windows, write it
through a shared mapping one word at a time.

Safety comes first here because everything else stands on it:

* the name is checked before it becomes a path (no ``/`` tricks, no ``..``, no NUL);
* the file is opened with ``O_NOFOLLOW`` (a symlink is refused) and ``O_NONBLOCK`` (a FIFO
  cannot hang us) and must be a regular file. Read-only work opens it ``O_RDONLY`` and
  needs only the kernel's read permission; only a block opened for writing must be owned
  by the caller (or the caller is root);
* **reads never go through a mapping.** Reading a hole of a ``MAP_SHARED`` tmpfs mapping
  faults in (allocates) a real page, and a file claiming more than the filesystem holds
  then dies by SIGBUS. ``pread`` returns zeros for a hole and allocates nothing, so every
  read is a bounded ``pread`` (one word, one record, or a window of :data:`WINDOW` bytes),
  and ``lseek(SEEK_DATA/SEEK_HOLE)`` finds the allocated parts, so work grows with the
  bytes that exist, not with what a header claims;
* **writes touch only the words they change**, through a ``MAP_SHARED`` mapping made at
  the first write (live C++ peers use atomics on the same words). Every write is a CAS on
  an observed value, or a store into a record we hold the lock of; a change whose new
  value equals the observed one is skipped, so a hole is never written with zeros. Before
  each store the file is checked (``fstat``) to still cover the word: a block truncated
  while mapped gives an error, not SIGBUS (the window between that check and the store
  remains; pylabhub never shrinks a segment);
* every access is checked against the file's size, so a lying header can never make us
  touch anything outside it;
* the header is checked (magic, version, layout hash, geometry, total size against the
  file size, layout checksum) and anything else is refused with an error saying what
  mismatched. ``validate`` attaches leniently and reports the same problems as findings.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from . import _layout as L
from ._errors import (BlockNotFound, BlockNotReady, InvalidName, NotADataBlock,
                      OverBudget, PermissionDenied, RecoveryError, TruncatedBlock, UnsafePath,
                      UnsupportedLayout, UsageError, WrongOwner)

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Dict, Iterator, List, Optional, Tuple, Union
    FieldRef = Union[str, L.Field]

SHM_DIR = "/dev/shm"
MEMFD_PREFIX = "memfd:"
NAME_MAX = 255
#: Bytes read per ``pread`` when scanning or hashing a range: the peak memory of a scan
#: (per hashing thread), whatever the size of the block.
WINDOW = 1 << 20

_PROT_READ, _PROT_WRITE, _MAP_SHARED = 1, 2, 1
_LIBC = []  # type: List[Any]
_UNPACK = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"),
           8: struct.Struct("<Q")}
_ZEROS = memoryview(bytes(WINDOW))
#: The default of ``max_bytes`` (``--max-bytes``): what one operation on one block may
#: examine (see :func:`check_budget`). Every real block we know of costs a few MiB at most.
DEFAULT_MAX_BYTES = 256 << 20
#: What one slot examined one by one counts against the budget, read or not: a page, for
#: the work of judging it (~20 word reads, ~50-120 us) and its entry in an answer.
SLOT_COST = 4096
_SEEK_DATA = getattr(os, "SEEK_DATA", 3)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)


def _libc() -> Tuple[Any, Any, Any, Any]:
    """``(ctypes, mmap, munmap, MAP_FAILED)``, made at the first mapping: ``ctypes`` costs
    milliseconds to import and read-only commands read with ``pread``, never map."""
    if not _LIBC:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        mmap = libc.mmap
        mmap.restype = ctypes.c_void_p
        mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]
        munmap = libc.munmap
        munmap.restype = ctypes.c_int
        munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC.extend((ctypes, mmap, munmap, ctypes.c_void_p(-1).value))
    return _LIBC[0], _LIBC[1], _LIBC[2], _LIBC[3]


def _atomic():
    """:mod:`_atomics`, imported at the first atomic store: choosing its provider looks
    for libatomic (``ctypes.util.find_library`` runs ``ldconfig``), tens of milliseconds
    that read-only commands (diagnose, validate, list) never need."""
    from . import _atomics
    return _atomics


def resolve(address: str) -> Tuple[str, str]:
    """Turn a user's block address into ``(kind, path)``; kind is shm, path or memfd.

    * ``my_block`` or ``/my_block`` (shm_open style): ``/dev/shm/my_block``;
    * an absolute path without ``..`` components: that file (e.g. a copied segment);
    * ``memfd:<pid>:<fd>`` as ``list`` prints it: ``/proc/<pid>/fd/<fd>``.
    """
    if not isinstance(address, str) or not address:
        raise InvalidName("a block name must be a non-empty string")
    if "\0" in address:
        raise InvalidName("block name contains a NUL byte")
    if address.startswith(MEMFD_PREFIX):
        parts = address[len(MEMFD_PREFIX):].split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InvalidName("memfd address must look like memfd:<pid>:<fd>, got %r" % address)
        return "memfd", "/proc/%d/fd/%d" % (int(parts[0]), int(parts[1]))
    name = address[1:] if address.startswith("/") and address.count("/") == 1 else address
    if "/" in name:
        if not address.startswith("/"):
            raise InvalidName("%r: a name may not contain '/'; give a shm name or an absolute "
                              "path" % address)
        if ".." in address.split("/"):
            raise InvalidName("%r: '..' is not allowed in a block path" % address)
        return "path", address
    if name in (".", ".."):
        raise InvalidName("%r is not a block name" % address)
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise InvalidName("block name is longer than %d bytes" % NAME_MAX)
    return "shm", os.path.join(SHM_DIR, name)


def check_name(name: str) -> str:
    """Validate a shm name for creation and return its /dev/shm path."""
    kind, path = resolve(name)
    if kind != "shm":
        raise InvalidName("%r: a new block needs a plain shm name" % name)
    return path


def _open(kind: str, path: str, address: str, writable: bool) -> Tuple[int, os.stat_result]:
    """Open read-only, or read-write for a command that will write.

    Read-only work needs only what the kernel grants (a world-readable block of another
    user is diagnosed and validated as it is); only writing needs ownership or root."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK
    if kind != "memfd":
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(exc, address, path, writable)
    try:
        st = os.fstat(fd)
        if kind == "memfd" and not os.readlink(path).startswith("/memfd:"):
            raise UnsafePath("%s: %s is not a memfd" % (address, path))
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath("%s: %s is not a regular file (%s)"
                             % (address, path, _file_kind(st.st_mode)))
        euid = os.geteuid()
        if writable and euid != 0 and st.st_uid != euid:
            raise WrongOwner("%s: owned by uid %d, not by you (uid %d): changing it needs "
                             "root or uid %d (owner); read-only commands (diagnose, validate, "
                             "dry runs) work as any user who can read it"
                             % (address, st.st_uid, euid, st.st_uid), owner_uid=st.st_uid)
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    for test, label in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return label
    return "not a regular file"


def _open_error(exc: OSError, address: str, path: str, writable: bool) -> RecoveryError:
    if exc.errno == errno.ENOENT:
        return BlockNotFound("%s: no such block (%s does not exist)" % (address, path))
    if exc.errno == errno.ELOOP:
        return UnsafePath("%s: %s is a symlink; refusing to follow it" % (address, path))
    if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ENODEV):
        return UnsafePath("%s: %s is not a regular file" % (address, path))
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(permission_message(address, path, writable))
    return RecoveryError("%s: cannot open %s: %s" % (address, path, exc.strerror))


def permission_message(address: str, path: str, writable: bool) -> str:
    """What was refused and what would work: the owner and mode when the file can be
    stat'ed (a /dev/shm entry can, whatever its mode), so the operator knows whom to be."""
    what = "read-write" if writable else "reading"
    try:
        st = os.lstat(path)
    except OSError:
        return "%s: permission denied opening %s for %s; run as root or as the owner" % (
            address, path, what)
    euid = os.geteuid()
    mine = " (you are uid %d)" % euid if euid != st.st_uid else ""
    return ("%s: permission denied opening %s for %s (mode %04o, owner uid %d%s); run as root "
            "or as uid %d (owner)"
            % (address, path, what, stat.S_IMODE(st.st_mode), st.st_uid, mine, st.st_uid))


def _uint(raw: bytes, field: L.Field) -> int:
    return int.from_bytes(raw[field.offset:field.end], "little")


def inspect_header(head: bytes, file_size: int) -> Tuple[Optional[L.Geometry], List[RecoveryError]]:
    """Check a header against the format; return the trustworthy geometry (or None) and
    every problem found, most fundamental first. Reads only ``head`` (<= 4096 bytes)."""
    H = L.HEADER
    problems: List[RecoveryError] = []
    if file_size < 4 or len(head) < 4:
        return None, [NotADataBlock("file is %d bytes: too small to be a DataBlock" % file_size)]
    magic = _uint(head, H["magic"])
    if magic != L.MAGIC:
        return None, [NotADataBlock("magic is %#010x, expected %#010x ('PLHB'): not a pylabhub "
                                    "DataBlock" % (magic, L.MAGIC), field="magic")]
    if file_size < L.HEADER_SIZE:
        return None, [TruncatedBlock("file is %d bytes, smaller than the %d-byte header"
                                     % (file_size, L.HEADER_SIZE), field="total_block_size")]
    version = (_uint(head, H["version_major"]), _uint(head, H["version_minor"]))
    if version != L.VERSION:
        problems.append(UnsupportedLayout("version is %d.%d, expected 1.0" % version,
                                          field="version"))
    layout_hash = head[2496:2528]
    stored_checksum = head[2528:2560]
    if not any(layout_hash) and not any(stored_checksum):
        problems.append(BlockNotReady("magic is set but the layout hash and layout checksum are "
                                      "still zero: the block is being created; retry shortly",
                                      field="header_layout_hash"))
        return None, problems
    if layout_hash != L.HEADER_LAYOUT_HASH:
        problems.append(UnsupportedLayout("header layout hash is %s…, expected %s… (pylabhub "
                                          "DataBlock 1.0)" % (layout_hash[:4].hex(),
                                                              L.HEADER_LAYOUT_HASH[:4].hex()),
                                          field="header_layout_hash"))
    stored = {n: _uint(head, H[n]) for n in (
        "ring_buffer_capacity", "physical_page_size", "logical_unit_size", "flexible_zone_size",
        "checksum_type", "policy", "consumer_sync_policy", "total_block_size")}
    expected_checksum = L.layout_checksum(
        stored["ring_buffer_capacity"], stored["physical_page_size"], stored["logical_unit_size"],
        stored["flexible_zone_size"], stored["checksum_type"], stored["policy"],
        stored["consumer_sync_policy"])
    if stored_checksum != expected_checksum:
        problems.append(UnsupportedLayout("layout checksum mismatch: stored %s…, the header's "
                                          "geometry and policies give %s…"
                                          % (stored_checksum[:4].hex(), expected_checksum[:4].hex()),
                                          field="layout_checksum"))
    if stored["physical_page_size"] not in L.PAGE_SIZES:
        problems.append(UnsupportedLayout("physical_page_size is %d, expected one of %s"
                                          % (stored["physical_page_size"], L.PAGE_SIZES),
                                          field="physical_page_size"))
    if stored["checksum_type"] != L.CHECKSUM_BLAKE2B:
        problems.append(UnsupportedLayout("checksum_type is %d, only BLAKE2b (0) is defined"
                                          % stored["checksum_type"], field="checksum_type"))
    geometry = L.Geometry.from_stored(stored["ring_buffer_capacity"], stored["logical_unit_size"],
                                      stored["flexible_zone_size"])
    why = geometry.problem()
    if why:
        problems.append(UnsupportedLayout(why, field="logical_unit_size"))
        return None, problems
    claimed = stored["total_block_size"]
    if geometry.total_size != claimed:
        problems.append(UnsupportedLayout("total_block_size is %d but the geometry (%d slots x %d "
                                          "bytes, flex %d) needs %d"
                                          % (claimed, geometry.capacity, geometry.stride,
                                             geometry.flex_size, geometry.total_size),
                                          field="total_block_size"))
    if file_size < geometry.total_size or file_size < claimed:
        problems.append(TruncatedBlock("file is %d bytes but the header claims %d (%d slots x %d "
                                       "bytes): truncated or lying header"
                                       % (file_size, max(claimed, geometry.total_size),
                                          geometry.capacity, geometry.stride),
                                       field="total_block_size"))
        return None, problems
    if file_size != claimed:
        problems.append(UnsupportedLayout("file is %d bytes, header total_block_size is %d"
                                          % (file_size, claimed), field="total_block_size"))
    return geometry, problems


class Block:
    """One attached segment: ``pread`` reads, hole-aware scans, word writes by mapping.

    Offsets are absolute; ``base`` arguments add a record's offset (a slot entry, a
    consumer entry). Reads are plain aligned ``pread`` calls: a word read while a live
    process stores it may in theory be torn, which is harmless here because every
    decision re-reads until two looks agree and every write is a CAS on the value observed
    (a torn observation just fails its CAS). Atomic writes go through :mod:`_atomics` on
    a shared mapping made at the first write.
    """

    def __init__(self, address: str, path: str, kind: str, fd: int, st: os.stat_result,
                 writable: bool, geometry: Optional[L.Geometry],
                 problems: List[RecoveryError]) -> None:
        self.address = address
        self.path = path
        self.kind = kind
        self.writable = writable
        self.size = st.st_size
        self.inode = (st.st_dev, st.st_ino)
        self.owner_uid = st.st_uid
        self.mode = stat.S_IMODE(st.st_mode)
        self.geometry = geometry
        self.problems = problems
        self._fd: Optional[int] = fd
        self._addr: Optional[int] = None       # the shared mapping, once something is written
        self._zero_digests: Dict[int, bytes] = {}

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        if self._addr is not None:
            _libc()[2](self._addr, self.size)
            self._addr = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Block":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not leak the descriptor or mapping
        try:
            self.close()
        except Exception:
            pass

    def mapping(self) -> Tuple[Optional[int], int]:
        """(start address or None while nothing was written, fd) of this attachment: the
        kernel scan leaves the recovery engine's own mapping and fd out of this process's
        entry (see _kernel.engine_mapping)."""
        if self._fd is None:
            raise RecoveryError("%s: block is closed" % self.address)
        return self._addr, self._fd

    @property
    def name(self) -> str:
        return os.path.basename(self.path) if self.kind == "shm" else self.address

    @property
    def geo(self) -> L.Geometry:
        if self.geometry is None:
            raise UnsupportedLayout("%s: the header's geometry cannot be trusted" % self.address)
        return self.geometry

    @property
    def mapped(self) -> bool:
        """True once a write made the shared mapping (read-only work never maps)."""
        return self._addr is not None

    # -- bounds -------------------------------------------------------------------------
    def _where(self, offset: int, size: int) -> int:
        """The one bounds check of every access (reads and writes); returns ``offset``."""
        if self._fd is None:
            raise RecoveryError("%s: block is closed" % self.address)
        if offset < 0 or size < 0 or offset + size > self.size:
            raise TruncatedBlock("%s: access at %d..%d lies outside the %d-byte file"
                                 % (self.address, offset, offset + size, self.size))
        return offset

    # -- reading (pread only) -----------------------------------------------------------
    def _pread(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, offset)   # type: ignore[arg-type]
        except OSError as exc:
            raise RecoveryError("%s: cannot read bytes %d..%d: %s"
                                % (self.address, offset, offset + size, exc.strerror))
        if len(data) != size:
            raise self._shrunk(offset, size)
        return data

    def _shrunk(self, offset: int, size: int) -> TruncatedBlock:
        try:
            now = os.fstat(self._fd).st_size       # type: ignore[arg-type]
        except OSError:
            now = -1
        return TruncatedBlock("%s: the file shrank to %d bytes (was %d) while being used: "
                              "bytes %d..%d are gone; another process truncated it"
                              % (self.address, now, self.size, offset, offset + size))

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (one ``pread``: keep it to records and windows)."""
        self._where(offset, size)
        return self._pread(offset, size)

    def view(self, offset: int, size: int):
        """Bytes of a range we wrote ourselves (the runtime hashing its own slot): the
        mapping of a writable block, else a copy read with ``pread``. Scans of blocks we
        did not write use :meth:`digest` and :meth:`chunks` (bounded windows)."""
        self._where(offset, size)
        if self._addr is None:
            return self._pread(offset, size)
        self._check_covers(offset, size)
        ctypes = _libc()[0]
        return memoryview((ctypes.c_char * size).from_address(self._addr + offset)).cast("B")

    def pread_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` (a caller's reused buffer) with the bytes at ``offset``: one
        ``pread`` and one kernel copy, for bulk scans and hashing (a hole reads as zeros
        without being allocated)."""
        size = len(view)
        self._where(offset, size)
        try:
            got = os.preadv(self._fd, [view], offset)   # type: ignore[arg-type]
        except OSError as exc:
            raise RecoveryError("%s: cannot read bytes %d..%d: %s"
                                % (self.address, offset, offset + size, exc.strerror))
        if got != size:
            raise self._shrunk(offset, size)

    def load_word(self, offset: int, size: int) -> int:
        self._where(offset, size)
        return _UNPACK[size].unpack(self._pread(offset, size))[0]

    def data_extents(self, offset: int, size: int) -> Iterator[Tuple[int, int]]:
        """``(start, end)`` of each allocated part of ``offset .. offset+size`` (SEEK_DATA /
        SEEK_HOLE): what lies between is a hole, zeros that cost nothing to read. A
        filesystem without hole support reports the whole range as data."""
        self._where(offset, size)
        end, pos = offset + size, offset
        if size > 0 and self._no_holes():
            yield offset, end
            return
        while pos < end:
            try:
                start = os.lseek(self._fd, pos, _SEEK_DATA)   # type: ignore[arg-type]
            except OSError as exc:
                if exc.errno == errno.ENXIO:       # only holes from pos to end of file
                    return
                yield pos, end                     # no hole support: all of it is data
                return
            if start >= end:
                return
            try:
                stop = os.lseek(self._fd, start, _SEEK_HOLE)  # type: ignore[arg-type]
            except OSError:
                stop = end
            stop = min(max(stop, start + 1), end)
            yield start, stop
            pos = stop

    def _no_holes(self) -> bool:
        """Whether the file has no hole at all: its allocated blocks cover its size (asked
        again at every call, one ``fstat``). Then SEEK_HOLE is not asked: tmpfs answers it
        by walking every page from the offset to the next hole, which in a block without
        one is the rest of the ring - about 3 ms for 256 MiB, for every range asked
        (issue 14: a diagnosis of a full 65,536-slot block asked it five times). Where
        ``st_blocks`` also counts a filesystem's own metadata, a file with a small hole
        may be taken for one without: its hole is then read, as zeros, and counted
        against the budget - the slower answer, never a different one."""
        try:
            st = os.fstat(self._fd)
        except OSError:
            return False
        return st.st_blocks * 512 >= st.st_size

    def allocated(self, offset: int, size: int, limit: Optional[int] = None) -> int:
        """Allocated bytes in a range; stops counting past ``limit`` (a budget)."""
        total = 0
        for start, stop in self.data_extents(offset, size):
            total += stop - start
            if limit is not None and total > limit:
                break
        return total

    def chunks(self, offset: int, size: int, window: int = WINDOW
               ) -> Iterator[Tuple[int, int, Optional[memoryview]]]:
        """Walk a range in order as ``(offset, length, data)``: ``data`` is None for a hole
        (zeros, never read), else at most ``window`` bytes read with one ``pread`` into a
        buffer reused for the next chunk (copy what you keep). Peak memory: ``window``."""
        buf = bytearray(min(window, size) or 1)
        pos, end = offset, offset + size
        for start, stop in self.data_extents(offset, size):
            if start > pos:
                yield pos, start - pos, None
            while start < stop:
                n = min(window, stop - start)
                view = memoryview(buf)[:n]
                self.pread_into(view, start)
                yield start, n, view
                start += n
            pos = stop
        if pos < end:
            yield pos, end - pos, None

    def digest(self, offset: int, size: int) -> bytes:
        """BLAKE2b-256 of a range, hashed in windows; holes are hashed as zeros without
        being read, and a range that is all hole is a constant computed once per size."""
        h = L.blake2b()(digest_size=L.HASH_SIZE)
        saw_data = False
        for dummy, length, data in self.chunks(offset, size):
            if data is None:
                if not saw_data and length == size:
                    return self.zero_digest(size)
                _update_zeros(h, length)
            else:
                saw_data = True
                h.update(data)
        return h.digest()

    def zero_digest(self, size: int) -> bytes:
        if size not in self._zero_digests:
            h = L.blake2b()(digest_size=L.HASH_SIZE)
            _update_zeros(h, size)
            self._zero_digests[size] = h.digest()
        return self._zero_digests[size]

    def slots_in_use(self) -> Iterator[int]:
        """Indexes of the slots whose state entry lies (partly) in an allocated part of the
        slot-state table, in order. Every other slot reads as zeros: FREE, no lock, no
        reader, generation 0: nothing to release and nothing to verify."""
        geo = self.geo
        table, entry = geo.slot_table, L.SLOT_ENTRY_SIZE
        last = -1
        for start, stop in self.data_extents(table, geo.capacity * entry):
            first = max((start - table) // entry, last + 1)
            for i in range(first, (stop - 1 - table) // entry + 1):
                yield i
                last = i

    # -- writing (through the mapping, one word at a time) ------------------------------
    def _check_covers(self, offset: int, size: int) -> None:
        """The file must still hold the bytes about to be touched through the mapping
        (a store past a truncated end is SIGBUS); what a truncation between this check
        and the store can still do is a documented limit."""
        try:
            now = os.fstat(self._fd).st_size       # type: ignore[arg-type]
        except OSError as exc:
            raise RecoveryError("%s: cannot stat: %s" % (self.address, exc.strerror))
        if now < offset + size:
            raise self._shrunk(offset, size)

    def _writable_where(self, offset: int, size: int) -> int:
        """The mapped address of a word about to be written (mapping it at first use)."""
        if not self.writable:
            raise PermissionDenied("%s: attached read-only; cannot change bytes %d..%d"
                                   % (self.address, offset, offset + size))
        self._where(offset, size)
        self.map()
        self._check_covers(offset, size)
        return self._addr + offset

    def map(self) -> int:
        """Make the shared read-write mapping now (the first write does it otherwise):
        our runtime maps at attach, as a pylabhub process does. Returns its address."""
        if not self.writable:
            raise PermissionDenied("%s: attached read-only; cannot map it writable"
                                   % self.address)
        if self._fd is None:
            raise RecoveryError("%s: block is closed" % self.address)
        if self._addr is None:
            ctypes, mmap, dummy, map_failed = _libc()
            addr = mmap(None, self.size, _PROT_READ | _PROT_WRITE, _MAP_SHARED, self._fd, 0)
            if addr in (None, map_failed):
                err = ctypes.get_errno()
                raise RecoveryError("%s: mmap failed: %s" % (self.address, os.strerror(err)))
            self._addr = addr
        return self._addr

    def pread(self, offset: int, size: int) -> bytes:
        """Bytes read from the file, not through the mapping (same as :meth:`read`: on
        tmpfs a hole reads as zeros without allocating a page)."""
        return self.read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        where = self._writable_where(offset, len(data))
        _libc()[0].memmove(where, bytes(data), len(data))

    # -- field access -----------------------------------------------------------------
    @staticmethod
    def _field(field: FieldRef, table: dict) -> L.Field:
        return table[field] if isinstance(field, str) else field

    def get(self, field: FieldRef, base: int = 0, table: Optional[dict] = None):
        f = self._field(field, table or L.HEADER)
        off = base + f.offset
        self._where(off, f.size)
        raw = self._pread(off, f.size)
        if f.kind == "u":
            return _UNPACK[f.size].unpack(raw)[0]
        if f.kind == "text":
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return raw

    def set(self, field: FieldRef, value, base: int = 0, table: Optional[dict] = None) -> None:
        """Store a value. Atomic words use an atomic store: only for words no live process
        can be changing at the same time (our own, or words we own via a lock we hold)."""
        f = self._field(field, table or L.HEADER)
        off = base + f.offset
        if f.kind == "u":
            if f.atomic:
                _atomic().store(self._writable_where(off, f.size), f.size, value)
            else:
                self.write(off, value.to_bytes(f.size, "little"))
            return
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        self.write(off, data[:f.size].ljust(f.size, b"\0"))

    def cas(self, field: FieldRef, expected: int, new: int, base: int = 0,
            table: Optional[dict] = None) -> Tuple[bool, int]:
        f = self._field(field, table or L.HEADER)
        return _atomic().cas(self._writable_where(base + f.offset, f.size), f.size, expected, new)

    def add(self, field: FieldRef, delta: int, base: int = 0, table: Optional[dict] = None) -> int:
        f = self._field(field, table or L.HEADER)
        return _atomic().fetch_add(self._writable_where(base + f.offset, f.size), f.size, delta)

    # -- records ----------------------------------------------------------------------
    def hdr(self, name: str):
        return self.get(name)

    def slot_base(self, index: int) -> int:
        return self.geo.slot_entry(self.check_slot(index))

    def slot(self, index: int, name: str) -> int:
        return self.get(L.SLOT[name], self.slot_base(index))

    def consumer(self, k: int, name: str):
        return self.get(L.CONSUMER[name], L.consumer_entry(k))

    def check_slot(self, index: int) -> int:
        from ._errors import SlotOutOfRange
        capacity = self.geo.capacity
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < capacity:
            raise SlotOutOfRange("%s: slot %r is out of range: the block has %d slot%s "
                                 "(0..%d)" % (self.address, index, capacity,
                                              "" if capacity == 1 else "s", capacity - 1),
                                 capacity=capacity)
        return index

    @property
    def has_evidence(self) -> bool:
        """True when our runtime created this block (marker and version match)."""
        return (self.get("ev_marker") == L.EVIDENCE_MARKER
                and self.get("ev_version") == L.EVIDENCE_VERSION)


def _update_zeros(h, length: int) -> None:
    while length > 0:
        n = min(length, WINDOW)
        h.update(_ZEROS[:n])
        length -= n


def open_block(address: str, writable: bool = False, strict: bool = True) -> Block:
    """Attach the block at ``address``: read-only (``O_RDONLY``, never mapped) unless
    ``writable``.

    ``strict`` (default) refuses any header problem with the matching error. Lenient mode
    (``validate``) attaches any file with the magic and at least a header, and records the
    problems on ``block.problems``; ``block.geometry`` is None when it cannot be trusted.
    """
    kind, path = resolve(address)
    fd, st = _open(kind, path, address, writable)
    try:
        try:
            head = os.pread(fd, L.HEADER_SIZE, 0)
        except OSError as exc:       # e.g. EIO from /proc/<pid>/mem: not a block we can read
            raise RecoveryError("%s: cannot read the header of %s: %s"
                                % (address, path, exc.strerror))
        geometry, problems = inspect_header(head, st.st_size)
        fatal = [p for p in problems if isinstance(p, (NotADataBlock, BlockNotReady))]
        if fatal or st.st_size < L.HEADER_SIZE or (strict and problems):
            first = (fatal or problems)[0]
            first.message = "%s: %s" % (address, first.message)
            first.args = (first.message,)
            raise first
    except BaseException:
        os.close(fd)
        raise
    return Block(address, path, kind, fd, st, writable, geometry, problems)


# --------------------------------------------------------------------------- budget
def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return "%.1f %s" % (n / float(1 << shift), unit)
    return "%d B" % n


def max_bytes_of(value: object) -> int:
    """A ``max_bytes`` argument: None is :data:`DEFAULT_MAX_BYTES`; else a positive int."""
    if value is None:
        return DEFAULT_MAX_BYTES
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError("max_bytes must be a positive number of bytes, got %r" % (value,))
    return value


def _slots_touched(block: Block, offset: int, stride: int, capacity: int,
                   limit: int) -> int:
    """How many slots' data ranges hold allocated bytes (each is hashed in full)."""
    count, last = 0, -1
    for start, stop in block.data_extents(offset, capacity * stride):
        first = max((start - offset) // stride, last + 1)
        end = (stop - 1 - offset) // stride
        if end >= first:
            count += end - first + 1
            last = end
        if count * stride > limit:
            break
    return count


def cost(block: Block, walk: bool = True, listed: int = 0, hashing: bool = False,
         limit: Optional[int] = None) -> Dict[str, int]:
    """What one operation on ``block`` examines, in bytes, by part; ``total`` is what
    counts against ``max_bytes``. Holes are free: they read as zeros without being read.

    * ``header``: the 4096-byte header (always);
    * ``table`` (``walk``): the allocated bytes of the slot-state table, read in bulk
      windows by :func:`_scan.scan_slots` (64 bytes a slot at most);
    * ``slots``: :data:`SLOT_COST` per slot examined one by one: the ``listed`` slots (the
      slots the bulk scan found not plain, the one asked for, or every slot when the
      answer lists them all);
    * ``hashed`` (``hashing``: validate, heal): the full stride of every slot whose data
      holds allocated bytes, one stride for the all-zero digest (a slot that is all hole
      hashes to that constant), and the flexible zone.

    Counting stops early once past ``limit``: a lying block is not walked to the end."""
    geo = block.geo
    limit = DEFAULT_MAX_BYTES if limit is None else limit
    parts = {"header": L.HEADER_SIZE, "table": 0, "slots": listed * SLOT_COST, "hashed": 0}
    if walk:
        parts["table"] = block.allocated(geo.slot_table, geo.capacity * L.SLOT_ENTRY_SIZE,
                                         limit)
    if hashing:
        touched = _slots_touched(block, geo.ring_offset, geo.stride, geo.capacity, limit)
        parts["hashed"] = touched * geo.stride + geo.stride + geo.flex_size
    parts["total"] = sum(parts.values())
    return parts


def check_budget(block: Block, operation: str, max_bytes: Optional[int], walk: bool = True,
                 listed: int = 0, hashing: bool = False, hint: str = "") -> Dict[str, int]:
    """Refuse (:class:`OverBudget`, exit 4) an operation that would examine more than
    ``max_bytes``, with one line naming the geometry and what the bytes are; returns the
    cost otherwise. A block without a trusted geometry costs its header only."""
    limit = max_bytes_of(max_bytes)
    if block.geometry is None:
        return {"header": L.HEADER_SIZE, "total": L.HEADER_SIZE}
    parts = cost(block, walk, listed, hashing, limit)
    if parts["total"] <= limit:
        return parts
    geo = block.geo
    what = ["header 4.0 KiB"]
    if parts.get("table"):
        what.append("slot table %s" % _size(parts["table"]))
    if parts["slots"]:
        what.append("%d slot%s x %d B" % (parts["slots"] // SLOT_COST,
                                          "" if parts["slots"] == SLOT_COST else "s",
                                          SLOT_COST))
    if parts["hashed"]:
        what.append("%s to hash" % _size(parts["hashed"]))
    raise OverBudget("%s: %s would examine at least %s (%s), over the budget of %s "
                     "(max_bytes); "
                     "geometry: %d slots x %d B, flex zone %d B, file %d B%s; raise max_bytes "
                     "only for a block you trust"
                     % (block.address, operation, _size(parts["total"]), ", ".join(what),
                        _size(limit),
                        geo.capacity, geo.stride, geo.flex_size, block.size, hint),
                     max_bytes=limit, geometry={"capacity": geo.capacity,
                                                "stride": geo.stride,
                                                "flex_size": geo.flex_size,
                                                "file_size": block.size})
