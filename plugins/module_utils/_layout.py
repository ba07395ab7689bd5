# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pylabhub DataBlock 1.0 layout, declared once.

Every offset of the format and of our recovery evidence lives in this file; every other
module asks here. Region arithmetic (where the slot table, checksums, flex zone and ring
start) is derived from the header's geometry by :class:`Geometry`, never re-derived
elsewhere. See ``docs/architecture.md`` and the spec (pylabhub-datablock-1.0.md).
"""

from __future__ import annotations

import struct

from ._record import Record

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Dict, List, Optional

PAGE = 4096
HEADER_SIZE = 4096
MAGIC = 0x504C4842                      # "PLHB" as a little-endian u32 (bytes 42 48 4C 50)
VERSION = (1, 0)
HEADER_LAYOUT_HASH = bytes.fromhex(
    "b1820e5099bfdd8f29c33c7db2ba20928cc14f5e7a06139208d8cfe8d18f9f1f")
HASH_SIZE = 32
PAGE_SIZES = (4096, 4194304, 16777216)  # physical_page_size values the format defines
CHECKSUM_BLAKE2B = 0                    # the only checksum_type
NO_COMMIT = 0xFFFFFFFFFFFFFFFF          # commit_index before the first commit
MAX_CONSUMERS = 8
SLOT_ENTRY_SIZE = 64
CHECKSUM_ENTRY_SIZE = 33                # 32-byte BLAKE2b-256 + 1 "verified" byte
CONSUMER_ENTRY_SIZE = 128
SLOT_ALIGN = 64
FLEX_ALIGN = 4096


class _Kind(type):
    """The class of a set of named values (``Named``): what ``enum.IntEnum`` gave this
    module (``Kind.NAME``, ``Kind(value)`` or ValueError, ``.name``, iteration in the
    order written) without the enum module, which with the ``re`` module it comes with
    was a sixth of a small command's start-up (issue 14)."""

    def __new__(mcs, name, bases, namespace):
        values = {k: v for k, v in namespace.items() if k.isupper() and isinstance(v, int)}
        cls = super().__new__(mcs, name, bases, {k: v for k, v in namespace.items()
                                                 if k not in values})
        members = {}  # type: Dict[int, Any]
        for key, value in values.items():
            members[value] = int.__new__(cls, value)
            type.__setattr__(cls, key, members[value])
        names = {value: key for key, value in values.items()}
        type.__setattr__(cls, "_members", members)
        type.__setattr__(cls, "_names", names)
        return cls

    def __call__(cls, value):
        try:
            return cls._members[value]
        except (KeyError, TypeError):
            raise ValueError("%r is not a valid %s" % (value, cls.__name__)) from None

    def __iter__(cls):
        return iter(cls._members.values())

    def __len__(cls) -> int:
        return len(cls._members)

    def __setattr__(cls, key, value):
        raise AttributeError("cannot change %s.%s" % (cls.__name__, key))


class Named(int, metaclass=_Kind):
    """A value of the format with its name (``SlotState.COMMITTED.name``); otherwise the
    int it is (``str``, ``%d``, JSON and comparisons as ``int``)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return type(self)._names[self]  # type: ignore[attr-defined]

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return "<%s.%s: %d>" % (type(self).__name__, self.name, int(self))

    def __reduce__(self):
        return type(self), (int(self),)       # unpickled: the same member

    __str__ = int.__repr__
    __format__ = int.__format__


class SlotState(Named):
    FREE = 0
    WRITING = 1
    COMMITTED = 2
    DRAINING = 3


class Policy(Named):
    SINGLE = 0
    DOUBLE_BUFFER = 1
    RING_BUFFER = 2
    UNSET = 255


class ConsumerSync(Named):
    LATEST_ONLY = 0
    SEQUENTIAL = 1
    SEQUENTIAL_SYNC = 2
    UNSET = 255


class ChecksumPolicy(Named):
    NONE = 0
    MANUAL = 1
    ENFORCED = 2


def enum_name(kind: type, value: int) -> str:
    """Name of an enum value, or ``UNKNOWN(<n>)`` for a value the format does not define."""
    try:
        return kind(value).name
    except ValueError:
        return "UNKNOWN(%d)" % value


class Field(Record):
    """One field: offset relative to its record, size in bytes, kind, and whether live
    processes touch it atomically (then we must too)."""

    __slots__ = ("name", "offset", "size", "kind", "atomic")
    name: str
    offset: int
    size: int
    kind: str                # "u" unsigned little-endian int, "bytes", "text" (NUL-terminated)
    atomic: bool

    def __init__(self, name: str, offset: int, size: int, kind: str = "u",
                 atomic: bool = False) -> None:
        self.name = name
        self.offset = offset
        self.size = size
        self.kind = kind
        self.atomic = atomic

    @property
    def end(self) -> int:
        return self.offset + self.size


def _table(*fields: Field) -> Dict[str, Field]:
    table = {f.name: f for f in fields}
    if len(table) != len(fields):
        raise AssertionError("duplicate field name in a layout table")
    return table


def _u(name: str, off: int, size: int, atomic: bool = False) -> Field:
    return Field(name, off, size, "u", atomic)


def _a(name: str, off: int, size: int) -> Field:
    return Field(name, off, size, "u", True)


_METRICS = ("writer_timeout_count", "writer_lock_timeout_count", "writer_reader_timeout_count",
            "writer_blocked_total_ns", "write_lock_contention", "write_generation_wraps",
            "reader_not_ready_count", "reader_race_detected", "reader_validation_failed",
            "reader_peak_count", "reader_timeout_count")
_ERROR_COUNTERS = ("slot_acquire_errors", "slot_commit_errors", "checksum_failures",
                   "zmq_send_failures", "zmq_recv_failures", "zmq_timeout_count",
                   "recovery_actions_count", "schema_mismatch_count")
_PERF = ("total_slots_written", "total_slots_read", "total_bytes_written", "total_bytes_read",
         "uptime_seconds", "creation_timestamp_ns")

HEADER = _table(
    _a("magic", 0, 4),
    _u("version_major", 4, 2),
    _u("version_minor", 6, 2),
    _u("total_block_size", 8, 8),
    Field("reserved_capability_token", 16, 64, "bytes"),
    Field("flexzone_schema_hash", 80, 32, "bytes"),
    Field("datablock_schema_hash", 112, 32, "bytes"),
    _u("schema_version", 144, 4),
    _u("policy", 148, 4),
    _u("consumer_sync_policy", 152, 4),
    _u("physical_page_size", 156, 4),
    _u("logical_unit_size", 160, 4),
    _u("ring_buffer_capacity", 164, 4),
    _u("flexible_zone_size", 168, 4),
    _u("checksum_type", 172, 1),
    _u("checksum_policy", 176, 4),
    _a("write_index", 184, 8),
    _a("commit_index", 192, 8),
    _a("read_index", 200, 8),
    _a("active_consumer_count", 208, 4),
    *[_a(n, 216 + 8 * i, 8) for i, n in enumerate(_METRICS)],
    _a("last_error_timestamp_ns", 304, 8),
    _a("last_error_code", 312, 4),
    _a("error_sequence", 316, 4),
    *[_a(n, 320 + 8 * i, 8) for i, n in enumerate(_ERROR_COUNTERS)],
    _a("heartbeat_sent_count", 400, 8),
    _a("heartbeat_failed_count", 408, 8),
    _a("last_heartbeat_ns", 416, 8),
    *[_a(n, 432 + 8 * i, 8) for i, n in enumerate(_PERF)],
    Field("hub_uid", 1520, 40, "text"),
    Field("hub_name", 1560, 64, "text"),
    Field("producer_uid", 1624, 40, "text"),
    Field("producer_name", 1664, 64, "text"),
    Field("flexzone_checksum", 1984, 32, "bytes"),
    _a("flexzone_checksum_verified", 2016, 1),
    Field("header_layout_hash", 2496, 32, "bytes"),
    Field("layout_checksum", 2528, 32, "bytes"),
    _a("producer_heartbeat_pid", 2624, 8),
    _a("producer_heartbeat_ns", 2632, 8),
    # --- our recovery evidence (bytes pylabhub never uses: 2640..4095) ---
    _a("ev_marker", 2640, 4),
    _u("ev_version", 2644, 2),
    Field("ev_boot_id", 2648, 16, "bytes"),
    _a("ev_producer_pid", 2664, 8),
    _a("ev_producer_start", 2672, 8),
    _a("ev_producer_pidns", 2680, 8),
)

CONSUMER_TABLE_OFFSET = 496         # 8 heartbeat entries x 128 bytes
READ_POSITIONS_OFFSET = 2560        # 8 x u64 per-consumer read positions (Sequential_sync)
SPINLOCKS_OFFSET = 1728             # 8 x 32 bytes, handed to applications by pylabhub
SPINLOCK_SIZE = 32
SPINLOCK_COUNT = 8
CONSUMER_EVIDENCE_OFFSET = 2688     # 8 x 32 bytes of ours
CONSUMER_EVIDENCE_SIZE = 32

CONSUMER = _table(
    _a("consumer_pid", 0, 8),
    _a("last_heartbeat_ns", 8, 8),
    Field("consumer_uid", 16, 40, "text"),
    Field("consumer_name", 56, 32, "text"),
)

CONSUMER_EVIDENCE = _table(
    _a("pid", 0, 8),
    _a("start", 8, 8),
    _a("reading", 16, 8),           # 0 none, slot index + 1 one read, READING_SEVERAL
    _a("pidns", 24, 8),             # inode of the consumer's PID namespace
)

SLOT = _table(
    _a("write_lock", 0, 8),
    _a("reader_count", 8, 4),
    _a("slot_state", 12, 1),
    _a("writer_waiting", 13, 1),
    _a("write_generation", 16, 8),
    # --- our recovery evidence (slot entry +24..+63, never read by pylabhub) ---
    _a("ev_writer_pid", 24, 8),
    _a("ev_writer_start", 32, 8),
    _a("ev_locked_ns", 40, 8),
    _a("ev_changed_ns", 48, 8),
    _a("ev_writer_pidns", 56, 8),   # inode of the writer's PID namespace
)

READ_POSITION = Field("read_position", 0, 8, "u", True)   # at read_position(k)
# Consumer evidence "reading" when a consumer holds more than one read at once: it may be
# inside any slot, any number of times (written before the count that makes it true goes
# up, replaced after the count that makes it false went down).
READING_SEVERAL = 0xFFFFFFFFFFFFFFFF
SPINLOCK_OWNER = Field("spinlock_owner_pid", 0, 8, "u", True)   # at spinlock(k)

EVIDENCE_MARKER = 0x45524C50        # "PLRE" on disk
EVIDENCE_VERSION = 1

_LAYOUT_RECORD = struct.Struct("<IIIQBBBB")


_BLAKE2B = []  # type: List[Callable[..., Any]]


def blake2b() -> Callable[..., Any]:
    """``hashlib.blake2b``, imported at first use: ``import hashlib`` loads OpenSSL's
    ``_hashlib`` (milliseconds) although hashlib's BLAKE2b is always the built-in
    ``_blake2`` one (hashlib never takes BLAKE2 from OpenSSL), which is taken directly."""
    if not _BLAKE2B:
        try:
            from _blake2 import blake2b as blake
        except ImportError:  # pragma: no cover - an interpreter without the built-in module
            from hashlib import blake2b as blake
        _BLAKE2B.append(blake)
    return _BLAKE2B[0]


def blake2b256(data) -> bytes:
    """BLAKE2b with a 32-byte digest, unkeyed: the format's checksum."""
    return blake2b()(data, digest_size=HASH_SIZE).digest()


def layout_checksum(capacity: int, page_size: int, unit_size: int, flex_size: int,
                    checksum_type: int, policy: int, sync_policy: int) -> bytes:
    """BLAKE2b-256 of the 24-byte record of spec section 5 (values as stored)."""
    record = _LAYOUT_RECORD.pack(capacity & 0xFFFFFFFF, page_size & 0xFFFFFFFF,
                                 unit_size & 0xFFFFFFFF, flex_size, checksum_type & 0xFF,
                                 policy & 0xFF, sync_policy & 0xFF, 0)
    return blake2b256(record)


def roundup(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Geometry(Record):
    """Region arithmetic of one block, from the three numbers its header holds."""

    __slots__ = ("capacity", "stride", "flex_size")
    capacity: int        # N (a stored 0 means 1)
    stride: int          # S, slot stride = logical_unit_size
    flex_size: int       # F

    def __init__(self, capacity: int, stride: int, flex_size: int) -> None:
        self.capacity = capacity
        self.stride = stride
        self.flex_size = flex_size

    @classmethod
    def from_stored(cls, capacity: int, stride: int, flex_size: int) -> "Geometry":
        return cls(capacity or 1, stride, flex_size)

    def problem(self) -> Optional[str]:
        """Why this geometry is impossible for the format, or None."""
        if self.stride <= 0 or self.stride % SLOT_ALIGN:
            return "slot stride %d is not a positive multiple of %d" % (self.stride, SLOT_ALIGN)
        if self.flex_size % FLEX_ALIGN:
            return "flexible zone size %d is not a multiple of %d" % (self.flex_size, FLEX_ALIGN)
        return None

    @property
    def slot_table(self) -> int:
        return HEADER_SIZE

    @property
    def checksum_table(self) -> int:
        return HEADER_SIZE + SLOT_ENTRY_SIZE * self.capacity

    @property
    def flex_offset(self) -> int:
        return roundup(HEADER_SIZE + (SLOT_ENTRY_SIZE + CHECKSUM_ENTRY_SIZE) * self.capacity, PAGE)

    @property
    def ring_offset(self) -> int:
        return self.flex_offset + self.flex_size

    @property
    def total_size(self) -> int:
        return roundup(self.ring_offset + self.capacity * self.stride, PAGE)

    def slot_entry(self, index: int) -> int:
        return HEADER_SIZE + SLOT_ENTRY_SIZE * index

    def checksum_entry(self, index: int) -> int:
        return self.checksum_table + CHECKSUM_ENTRY_SIZE * index

    def slot_data(self, index: int) -> int:
        return self.ring_offset + self.stride * index


def consumer_entry(k: int) -> int:
    return CONSUMER_TABLE_OFFSET + CONSUMER_ENTRY_SIZE * k


def consumer_evidence(k: int) -> int:
    return CONSUMER_EVIDENCE_OFFSET + CONSUMER_EVIDENCE_SIZE * k


def read_position(k: int) -> int:
    return READ_POSITIONS_OFFSET + 8 * k


def spinlock(k: int) -> int:
    return SPINLOCKS_OFFSET + SPINLOCK_SIZE * k


if (CONSUMER_EVIDENCE_OFFSET + MAX_CONSUMERS * CONSUMER_EVIDENCE_SIZE > HEADER_SIZE
        or max(f.end for f in SLOT.values()) > SLOT_ENTRY_SIZE):
    raise AssertionError("evidence does not fit the bytes pylabhub leaves unused")


# --- the configuration matrix (issue 12): every test, the drill and the crash campaign
# draw their configurations from here, so "every configuration" means one thing.
MATRIX_POLICIES = (Policy.SINGLE, Policy.DOUBLE_BUFFER, Policy.RING_BUFFER)
MATRIX_SYNCS = (ConsumerSync.LATEST_ONLY, ConsumerSync.SEQUENTIAL, ConsumerSync.SEQUENTIAL_SYNC)
MATRIX_FLEX_SIZES = (0, FLEX_ALIGN)
MATRIX_CHECKSUMS = (ChecksumPolicy.NONE, ChecksumPolicy.MANUAL, ChecksumPolicy.ENFORCED)
#: Slots per buffer policy, as pylabhub's create_datablock_producer fills an unset
#: capacity (Single 1, DoubleBuffer 2); RingBuffer takes the caller's capacity. pylabhub's
#: creator refuses only Unset policies: the policy itself constrains nothing else.
POLICY_SLOTS = {Policy.SINGLE: 1, Policy.DOUBLE_BUFFER: 2}


class Configuration:
    """One cell of the matrix: buffer policy x consumer sync x flex zone x checksum policy.
    (A plain class: this module loads at every start-up.)"""

    __slots__ = ("policy", "sync", "flex_size", "checksum")

    def __init__(self, policy: int, sync: int, flex_size: int, checksum: int) -> None:
        self.policy = Policy(policy)
        self.sync = ConsumerSync(sync)
        self.flex_size = flex_size
        self.checksum = ChecksumPolicy(checksum)

    @property
    def cell(self) -> str:
        """The cell's name, e.g. ``RING_BUFFER/SEQUENTIAL_SYNC/flex4096/ENFORCED``."""
        return "%s/%s/flex%d/%s" % (self.policy.name, self.sync.name, self.flex_size,
                                    self.checksum.name)

    def capacity(self, ring_capacity: int) -> int:
        return POLICY_SLOTS.get(self.policy, ring_capacity)

    def create_args(self, ring_capacity: int) -> Dict[str, int]:
        """Keyword arguments of ``_runtime.create`` for a block of this cell."""
        return {"capacity": self.capacity(ring_capacity), "flex_size": self.flex_size,
                "policy": int(self.policy), "sync": int(self.sync),
                "checksum_policy": int(self.checksum)}

    def as_dict(self) -> Dict[str, object]:
        return {"cell": self.cell, "policy": self.policy.name, "consumer_sync": self.sync.name,
                "flex_size": self.flex_size, "checksum_policy": self.checksum.name}

    def __repr__(self) -> str:
        return "Configuration(%s)" % self.cell


#: All 54 cells, in a fixed order (a seeded choice among them is repeatable).
CONFIGURATIONS = tuple(Configuration(p, s, f, c) for p in MATRIX_POLICIES
                       for s in MATRIX_SYNCS for f in MATRIX_FLEX_SIZES
                       for c in MATRIX_CHECKSUMS)
#: The dimensions a report counts per value: name -> (the value's label per cell, labels).
MATRIX_DIMENSIONS = (
    ("policy", lambda c: c.policy.name, tuple(p.name for p in MATRIX_POLICIES)),
    ("consumer_sync", lambda c: c.sync.name, tuple(s.name for s in MATRIX_SYNCS)),
    ("flex_size", lambda c: str(c.flex_size), tuple(str(f) for f in MATRIX_FLEX_SIZES)),
    ("checksum_policy", lambda c: c.checksum.name, tuple(c.name for c in MATRIX_CHECKSUMS)),
)


def matrix_counts(used) -> Dict[str, Dict[str, int]]:
    """How often each value of each dimension (and each cell) occurs in ``used`` (an
    iterable of Configuration), every value listed, 0 included."""
    used = list(used)
    out = {name: {label: sum(1 for c in used if key(c) == label) for label in labels}
           for name, key, labels in MATRIX_DIMENSIONS}
    out["cells"] = {c.cell: n for c, n in ((c, sum(1 for u in used if u.cell == c.cell))
                                           for c in CONFIGURATIONS) if n}
    return out
