# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Attach a DataBlock segment safely and give bounds-checked access to its words.

Safety comes first here because everything else stands on it:

* the name is checked before it becomes a path (no ``/`` tricks, no ``..``, no NUL);
* the file is opened with ``O_NOFOLLOW`` (a symlink is refused) and ``O_NONBLOCK`` (a FIFO
  cannot hang us), then must be a regular file owned by the caller (or the caller is root);
* the whole *file* is mapped, never what the header claims, and every access is checked
  against the file's size, so a lying header can never make us touch memory outside it;
* the header is checked (magic, version, layout hash, geometry, total size against the
  file size, layout checksum) and anything else is refused with an error saying what
  mismatched. ``validate`` attaches leniently and reports the same problems as findings.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from typing import List, Optional, Tuple, Union

from . import _atomics
from . import _layout as L
from ._errors import (BlockNotFound, BlockNotReady, InvalidName, NotADataBlock,
                      PermissionDenied, RecoveryError, TruncatedBlock, UnsafePath,
                      UnsupportedLayout, WrongOwner)

SHM_DIR = "/dev/shm"
MEMFD_PREFIX = "memfd:"
NAME_MAX = 255

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_PROT_READ, _PROT_WRITE, _MAP_SHARED = 1, 2, 1
_MAP_FAILED = ctypes.c_void_p(-1).value
_UNPACK = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"),
           8: struct.Struct("<Q")}

FieldRef = Union[str, L.Field]


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
        if euid != 0 and st.st_uid != euid:
            raise WrongOwner("%s: owned by uid %d, not by you (uid %d); run as that user or "
                             "root" % (address, st.st_uid, euid), owner_uid=st.st_uid)
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
        mode = "read-write" if writable else "reading"
        return PermissionDenied("%s: permission denied opening %s for %s" % (address, path, mode))
    return RecoveryError("%s: cannot open %s: %s" % (address, path, exc.strerror))


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
    """One attached segment: the mapped file plus bounds-checked word access.

    Offsets are absolute; ``base`` arguments add a record's offset (a slot entry, a
    consumer entry). Atomic fields go through :mod:`_atomics`; other fields are plain reads.
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
        self._fd = fd
        prot = _PROT_READ | (_PROT_WRITE if writable else 0)
        addr = _mmap(None, self.size, prot, _MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            os.close(fd)
            raise RecoveryError("%s: mmap failed: %s" % (address, os.strerror(err)))
        self._addr = addr
        self.mem = memoryview((ctypes.c_char * self.size).from_address(addr)).cast("B")
        if not writable:
            self.mem = self.mem.toreadonly()

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        if self._addr is not None:
            self.mem.release()
            _munmap(self._addr, self.size)
            self._addr = None
            os.close(self._fd)

    def __enter__(self) -> "Block":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not leak the mapping
        try:
            self.close()
        except Exception:
            pass

    @property
    def name(self) -> str:
        return os.path.basename(self.path) if self.kind == "shm" else self.address

    @property
    def geo(self) -> L.Geometry:
        if self.geometry is None:
            raise UnsupportedLayout("%s: the header's geometry cannot be trusted" % self.address)
        return self.geometry

    # -- raw access ---------------------------------------------------------------------
    def _where(self, offset: int, size: int) -> int:
        if self._addr is None:
            raise RecoveryError("%s: block is closed" % self.address)
        if offset < 0 or size < 0 or offset + size > self.size:
            raise TruncatedBlock("%s: access at %d..%d lies outside the %d-byte file"
                                 % (self.address, offset, offset + size, self.size))
        return self._addr + offset

    def _writable_where(self, offset: int, size: int) -> int:
        # A store through a PROT_READ mapping is a SIGSEGV that kills the process: refuse.
        if not self.writable:
            raise PermissionDenied("%s: attached read-only; cannot change bytes %d..%d"
                                   % (self.address, offset, offset + size))
        return self._where(offset, size)

    def read(self, offset: int, size: int) -> bytes:
        self._where(offset, size)
        return bytes(self.mem[offset:offset + size])

    def pread(self, offset: int, size: int) -> bytes:
        """Bytes read from the file, not through the mapping: on tmpfs a hole reads as
        zeros without allocating a page (a read through a shared mapping would)."""
        self._where(offset, size)
        return os.pread(self._fd, size, offset)

    def view(self, offset: int, size: int) -> memoryview:
        """Zero-copy view (for hashing large slots)."""
        self._where(offset, size)
        return self.mem[offset:offset + size]

    def write(self, offset: int, data: bytes) -> None:
        self._writable_where(offset, len(data))
        self.mem[offset:offset + len(data)] = data

    def load_word(self, offset: int, size: int) -> int:
        return _atomics.load(self._where(offset, size), size)

    # -- field access -----------------------------------------------------------------
    @staticmethod
    def _field(field: FieldRef, table: dict) -> L.Field:
        return table[field] if isinstance(field, str) else field

    def get(self, field: FieldRef, base: int = 0, table: Optional[dict] = None):
        f = self._field(field, table or L.HEADER)
        off = base + f.offset
        if f.kind == "u":
            if f.atomic:
                return _atomics.load(self._where(off, f.size), f.size)
            self._where(off, f.size)
            return _UNPACK[f.size].unpack_from(self.mem, off)[0]
        raw = self.read(off, f.size)
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
                _atomics.store(self._writable_where(off, f.size), f.size, value)
            else:
                self.write(off, value.to_bytes(f.size, "little"))
            return
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        self.write(off, data[:f.size].ljust(f.size, b"\0"))

    def cas(self, field: FieldRef, expected: int, new: int, base: int = 0,
            table: Optional[dict] = None) -> Tuple[bool, int]:
        f = self._field(field, table or L.HEADER)
        return _atomics.cas(self._writable_where(base + f.offset, f.size), f.size, expected, new)

    def add(self, field: FieldRef, delta: int, base: int = 0, table: Optional[dict] = None) -> int:
        f = self._field(field, table or L.HEADER)
        return _atomics.fetch_add(self._writable_where(base + f.offset, f.size), f.size, delta)

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


def open_block(address: str, writable: bool = False, strict: bool = True) -> Block:
    """Attach the block at ``address``.

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
