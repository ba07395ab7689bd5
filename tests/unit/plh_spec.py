"""A spec-level reader of pylabhub DataBlock 1.0 images, for tests only.

Written from the tables of the spec (docs/spec/pylabhub-datablock-1.0.md) and of
docs/architecture.md (our recovery evidence) with plain ``struct`` offsets, and
deliberately independent of ``plugins/module_utils/_layout.py``: when the two agree on a
real block, the core's declarative layout is byte-compatible with the format.
"""

from __future__ import annotations

import hashlib
import struct

MAGIC_BYTES = bytes([0x42, 0x48, 0x4C, 0x50])          # u32 0x504C4842 ("PLHB")
LAYOUT_HASH = bytes.fromhex(
    "b1820e5099bfdd8f29c33c7db2ba20928cc14f5e7a06139208d8cfe8d18f9f1f")
NO_COMMIT = 0xFFFFFFFFFFFFFFFF
FREE, WRITING, COMMITTED, DRAINING = 0, 1, 2, 3
EVIDENCE_MARKER_BYTES = b"PLRE"


#: The slot array: one 64-byte entry per slot, from the end of the 4096-byte header.
SLOTS_OFFSET, SLOT_ENTRY_SIZE = 4096, 64
#: (offset in the entry, size) of a slot's protocol words (spec) ...
SLOT_WORDS = {"lock": (0, 8), "readers": (8, 4), "state": (12, 1), "waiting": (13, 1),
              "generation": (16, 8)}
#: ... and of our evidence after them (architecture.md)
SLOT_EVIDENCE = {"ev_pid": (24, 8), "ev_start": (32, 8), "ev_locked_ns": (40, 8),
                 "ev_changed_ns": (48, 8)}
SLOT_TAIL = 24          # the evidence area: entry + 24 .. the end of the entry


def slot_entry(i):
    """Offset of slot ``i``'s entry in the block."""
    return SLOTS_OFFSET + SLOT_ENTRY_SIZE * i


#: The checksum array, after the slot array: per slot a 32-byte BLAKE2b-256 digest and a
#: valid byte.
CHECKSUM_ENTRY_SIZE = 33


def checksum_entry(i, capacity):
    """Offset of slot ``i``'s checksum entry in a block of ``capacity`` slots."""
    return slot_entry(capacity) + CHECKSUM_ENTRY_SIZE * i


#: The consumer heartbeat table in the header: one 128-byte entry per consumer ...
CONSUMERS_OFFSET, CONSUMER_ENTRY_SIZE = 496, 128
#: ... and (offset in the entry, size) of its fields
CONSUMER_WORDS = {"pid": (0, 8), "heartbeat_ns": (8, 8), "uid": (16, 40), "name": (56, 32)}


def consumer_entry(k):
    """Offset of consumer entry ``k`` in the block."""
    return CONSUMERS_OFFSET + CONSUMER_ENTRY_SIZE * k


def roundup(value, multiple):
    return (value + multiple - 1) // multiple * multiple


def blake(data):
    return hashlib.blake2b(bytes(data), digest_size=32).digest()


def layout_checksum(n, page, s, f, ctype, policy, sync):
    return blake(struct.pack("<IIIQBBBB", n, page, s, f, ctype, policy & 0xFF, sync & 0xFF, 0))


def geometry(n, s, f):
    n = n or 1
    d = roundup(4096 + 97 * n, 4096)
    return {"slots": SLOTS_OFFSET, "checksums": slot_entry(n), "flex": d, "ring": d + f,
            "total": roundup(d + f + n * s, 4096)}


class Image:
    """A snapshot of a block's bytes, decoded with the spec's offsets."""

    def __init__(self, data):
        self.data = bytes(data)

    @classmethod
    def read(cls, path):
        with open(path, "rb") as f:
            return cls(f.read())

    def u(self, off, size):
        return int.from_bytes(self.data[off:off + size], "little")

    def text(self, off, size):
        return self.data[off:off + size].split(b"\0", 1)[0].decode()

    # -- header
    magic_bytes = property(lambda s: s.data[0:4])
    version = property(lambda s: (s.u(4, 2), s.u(6, 2)))
    total_block_size = property(lambda s: s.u(8, 8))
    policy = property(lambda s: s.u(148, 4))
    sync = property(lambda s: s.u(152, 4))
    page_size = property(lambda s: s.u(156, 4))
    stride = property(lambda s: s.u(160, 4))
    capacity = property(lambda s: s.u(164, 4) or 1)
    flex_size = property(lambda s: s.u(168, 4))
    checksum_type = property(lambda s: s.u(172, 1))
    checksum_policy = property(lambda s: s.u(176, 4))
    write_index = property(lambda s: s.u(184, 8))
    commit_index = property(lambda s: s.u(192, 8))
    read_index = property(lambda s: s.u(200, 8))
    active_consumers = property(lambda s: s.u(208, 4))
    total_slots_written = property(lambda s: s.u(432, 8))
    total_slots_read = property(lambda s: s.u(440, 8))
    creation_ns = property(lambda s: s.u(472, 8))
    hub_uid = property(lambda s: s.text(1520, 40))
    hub_name = property(lambda s: s.text(1560, 64))
    producer_uid = property(lambda s: s.text(1624, 40))
    producer_name = property(lambda s: s.text(1664, 64))
    layout_hash = property(lambda s: s.data[2496:2528])
    layout_checksum = property(lambda s: s.data[2528:2560])
    producer_pid = property(lambda s: s.u(2624, 8))
    producer_ns = property(lambda s: s.u(2632, 8))
    # -- our evidence (architecture.md)
    ev_marker_bytes = property(lambda s: s.data[2640:2644])
    ev_version = property(lambda s: s.u(2644, 2))
    ev_boot_id = property(lambda s: s.data[2648:2664])
    ev_producer_pid = property(lambda s: s.u(2664, 8))
    ev_producer_start = property(lambda s: s.u(2672, 8))
    evidence_area = property(lambda s: s.data[2640:4096])

    @property
    def geo(self):
        return geometry(self.capacity, self.stride, self.flex_size)

    def slot(self, i):
        e = slot_entry(i)
        words = {name: self.u(e + off, size)
                 for name, (off, size) in list(SLOT_WORDS.items()) + list(SLOT_EVIDENCE.items())}
        words["tail"] = self.data[e + SLOT_TAIL:e + SLOT_ENTRY_SIZE]
        return words

    def checksum(self, i):
        off = checksum_entry(i, self.capacity)
        return self.data[off:off + 32], self.data[off + 32]

    def data_offset(self, i):
        """Offset of slot ``i``'s data in the ring."""
        return self.geo["ring"] + self.stride * i

    def slot_data(self, i):
        off = self.data_offset(i)
        return self.data[off:off + self.stride]

    def checksum_valid(self, i):
        return self.checksum(i)[0] == blake(self.slot_data(i))

    def consumer(self, k):
        e = consumer_entry(k)
        return {name: (self.text if size > 8 else self.u)(e + off, size)
                for name, (off, size) in CONSUMER_WORDS.items()}

    def read_position(self, k):
        """Sequential_sync: consumer entry k's read position (next id to read)."""
        return self.u(2560 + 8 * k, 8)

    def consumer_evidence(self, k):
        e = 2688 + 32 * k
        return {"pid": self.u(e, 8), "start": self.u(e + 8, 8), "reading": self.u(e + 16, 8)}


def start_ticks(pid):
    """Field 22 of /proc/<pid>/stat, parsed after the last ')' (independent of _procinfo)."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


# -- pylabhub's own validate_integrity (no repair), as a test-side oracle ------------------
CHECKSUM_TYPE_UNSET = 255


def upstream_validate_integrity(image):
    """What pylabhub's ``datablock_validate_integrity(name, repair=false)`` returns for a
    block image: ``("SUCCESS" | "FAILED", [reasons])``.

    Written from its C++ (Qing-LAB/pylabhub ``src/utils/shm/data_block_recovery.cpp``)
    and the spec (section 8), pinned on the real fixtures (tests/fixtures/pylabhub-1.0,
    README: a, b, h, i SUCCESS; f, k FAILED; j, a flex-zone block, always FAILED):

    1. magic must be "PLHB"; version major 1, minor <= 0; the layout checksum must match;
    2. unless checksum_type is Unset, it attaches a consumer with a config built from the
       header, whose flex-zone size it leaves 0: any block with a flex zone fails to
       attach, and the whole check FAILS;
    3. slots: nothing when total_slots_written is 0; every slot once total_slots_written
       >= capacity, whatever its state (FREE and WRITING included); else slots
       0 .. commit_index mod capacity. A slot passes when its "verified" byte (entry + 32)
       is 1, without hashing; otherwise its stored BLAKE2b-256 must equal the hash of the
       full stride (an all-zero stored checksum fails).
    The checksum *policy* plays no part. ``image``: an :class:`Image` or bytes.
    """
    img = image if isinstance(image, Image) else Image(image)
    why = []
    if img.magic_bytes != MAGIC_BYTES:
        return "FAILED", ["magic %s" % img.magic_bytes.hex()]
    major, minor = img.version
    if major != 1 or minor > 0:
        why.append("version %d.%d" % (major, minor))
    if img.layout_checksum != layout_checksum(img.u(164, 4), img.page_size, img.stride,
                                              img.flex_size, img.checksum_type, img.policy,
                                              img.sync):
        why.append("layout checksum")
    if img.checksum_type != CHECKSUM_TYPE_UNSET:
        if img.flex_size:
            why.append("consumer attach fails: flex zone %d bytes vs 0 configured"
                       % img.flex_size)
            return "FAILED", why
        written, n = img.total_slots_written, img.capacity
        if written:
            checked = range(n) if written >= n else range(img.commit_index % n + 1)
            for i in checked:
                stored, verified = img.checksum(i)
                if verified == 1:
                    continue
                if not any(stored) or stored != blake(img.slot_data(i)):
                    why.append("slot %d checksum" % i)
    return ("FAILED" if why else "SUCCESS"), why
