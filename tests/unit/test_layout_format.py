"""Byte compatibility with pylabhub DataBlock 1.0.

Blocks made by our runtime are read back with ``plh_spec`` (the spec's tables as plain
struct offsets, independent of _layout), and the C++-written fixtures are attached and
decoded through the core, checked against the states their README gives.
"""

from __future__ import annotations

import os
import shutil
import stat
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _layout as L, _procinfo, _runtime as R)

import plh_spec as spec
from plh_spec import COMMITTED, FREE, WRITING, Image


def shm_path(name):
    return os.path.join("/dev/shm", name)


# ------------------------------------------------------------------ geometry

@pytest.mark.parametrize("n,s,f,flex,ring,total", [
    (2, 4096, 0, 8192, 8192, 16384),          # spec example 1
    (8, 64, 4096, 8192, 12288, 16384),        # spec example 2
    (3, 192, 4096, 8192, 12288, 16384),
    (42, 64, 0, 8192, 8192, 12288),           # 4096 + 97*42 = 8170 -> D = 8192
    (43, 64, 0, 12288, 12288, 16384),         # 4096 + 97*43 = 8267 -> D = 12288
])
def test_geometry_matches_spec(shm_name, n, s, f, flex, ring, total):
    assert spec.geometry(n, s, f) == {"slots": 4096, "checksums": 4096 + 64 * n, "flex": flex,
                                      "ring": ring, "total": total}
    g = L.Geometry(n, s, f)
    assert (g.slot_table, g.checksum_table, g.flex_offset, g.ring_offset, g.total_size) == (
        4096, 4096 + 64 * n, flex, ring, total)
    assert g.checksum_entry(1) == 4096 + 64 * n + 33 and g.slot_data(1) == ring + s
    # the runtime really puts slot i's data at ring + i*S of the file
    blk = R.create(shm_name, capacity=n, stride=s, flex_size=f)
    try:
        p = R.Producer(blk)
        for i in range(n):
            p.publish(bytes([i + 1]) * s)
    finally:
        blk.close()
    img = Image.read(shm_path(shm_name))
    assert len(img.data) == total and img.total_block_size == total
    for i in range(n):
        off = ring + i * s
        assert img.data[off:off + s] == bytes([i + 1]) * s, "slot %d misplaced" % i
        assert img.checksum(i)[0] == spec.blake(bytes([i + 1]) * s)
    assert img.data[flex:flex + f] == bytes(f)


def test_stored_zero_capacity_means_one():
    assert L.Geometry.from_stored(0, 64, 0) == L.Geometry(1, 64, 0)
    assert spec.geometry(0, 64, 0) == spec.geometry(1, 64, 0)


# ------------------------------------------------------------------ round trip

def test_runtime_block_reads_as_the_spec_says(shm_name):
    n, s, f = 3, 192, 4096
    t0 = time.monotonic_ns()
    blk = R.create(shm_name, capacity=n, stride=s, flex_size=f, policy=L.Policy.RING_BUFFER,
                   sync=L.ConsumerSync.SEQUENTIAL, checksum_policy=L.ChecksumPolicy.ENFORCED,
                   hub_name="hub-A", hub_uid="HUB-UID-1", producer_name="prod",
                   producer_uid="PROD-UID-9")
    try:
        t1 = time.monotonic_ns()
        img = Image.read(shm_path(shm_name))
        st = os.stat(shm_path(shm_name))
        assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode)
        assert img.magic_bytes == b"\x42\x48\x4c\x50" == b"BHLP"  # u32 0x504C4842 "PLHB"
        assert img.version == (1, 0)
        assert img.total_block_size == len(img.data) == st.st_size == 16384
        assert (img.capacity, img.stride, img.flex_size, img.page_size) == (n, s, f, 4096)
        assert (img.policy, img.sync, img.checksum_type, img.checksum_policy) == (2, 1, 0, 2)
        assert (img.write_index, img.read_index) == (0, 0)
        assert img.data[192:200] == b"\xff" * 8 and img.commit_index == spec.NO_COMMIT
        assert img.layout_hash == spec.LAYOUT_HASH
        record = bytes.fromhex("03000000 00100000 c0000000 0010000000000000 00 02 01 00")  # the 24-byte record
        assert len(record) == 24
        assert img.layout_checksum == spec.blake(record) == spec.layout_checksum(
            n, 4096, s, f, 0, 2, 1)
        assert (img.hub_name, img.hub_uid, img.producer_name, img.producer_uid) == (
            "hub-A", "HUB-UID-1", "prod", "PROD-UID-9")
        assert img.producer_pid == os.getpid() and t0 <= img.producer_ns <= t1
        assert t0 <= img.creation_ns <= t1
        for i in range(n):
            sl = img.slot(i)
            assert (sl["lock"], sl["readers"], sl["state"], sl["waiting"],
                    sl["generation"]) == (0, 0, FREE, 0, 0)
            assert img.checksum(i) == (bytes(32), 0)
        assert img.data[16:80] == bytes(64)                       # capability token
        assert img.data[496:1520] == bytes(1024)                  # no consumers
        # our evidence, in bytes pylabhub never uses
        assert img.ev_marker_bytes == b"PLRE" and img.ev_version == 1
        assert img.ev_boot_id == _procinfo.boot_id()

        p = R.Producer(blk)
        payloads = [bytes([0x10 + k]) * 100 for k in range(5)]
        p.publish(payloads[0])
        p.publish(payloads[1])
        img = Image.read(shm_path(shm_name))
        assert (img.write_index, img.commit_index, img.total_slots_written) == (2, 1, 2)
        assert img.ev_producer_pid == os.getpid()
        assert img.ev_producer_start == spec.start_ticks(os.getpid())
        for i in (0, 1):
            sl = img.slot(i)
            assert (sl["lock"], sl["readers"], sl["state"], sl["generation"]) == (
                0, 0, COMMITTED, 1)
            full = payloads[i] + bytes(s - 100)
            assert img.slot_data(i) == full
            cs_off = 4096 + 64 * n + 33 * i
            assert img.data[cs_off:cs_off + 32] == spec.blake(full)   # over the whole stride
            assert img.data[cs_off + 32] == 0
            assert img.data[cs_off:cs_off + 32] != spec.blake(payloads[i])
        assert img.slot(2)["state"] == FREE and img.checksum(2) == (bytes(32), 0)

        for k in range(2, 5):                                      # wraps onto slot 0, 1
            p.publish(payloads[k])
        img = Image.read(shm_path(shm_name))
        assert (img.write_index, img.commit_index, img.total_slots_written) == (5, 4, 5)
        assert [img.slot(i)["generation"] for i in range(n)] == [2, 2, 1]
        assert img.slot_data(1)[:100] == payloads[4] and img.checksum_valid(1)
        assert img.producer_pid == os.getpid()

        c = R.Consumer(blk, name="reader-1", uid="CONS-UID-7")
        t2 = time.monotonic_ns()
        img = Image.read(shm_path(shm_name))
        entry = img.consumer(0)
        assert (entry["pid"], entry["uid"], entry["name"]) == (os.getpid(), "CONS-UID-7",
                                                               "reader-1")
        assert t1 <= entry["heartbeat_ns"] <= t2
        assert img.active_consumers == 1 and img.consumer(1)["pid"] == 0
        rs = c.acquire()
        assert rs.index == 1 and rs.generation == 2
        assert c.read(rs)[:100] == payloads[4]
        img = Image.read(shm_path(shm_name))
        assert img.slot(1)["readers"] == 1
        assert img.consumer_evidence(0)["reading"] == 2             # slot id + 1
        c.release(rs)
        c.unregister()
        img = Image.read(shm_path(shm_name))
        assert img.slot(1)["readers"] == 0 and img.active_consumers == 0
        assert (img.consumer(0)["pid"], img.consumer(0)["uid"], img.consumer(0)["name"]) == (
            0, "", "")
        assert img.total_slots_read == 1
    finally:
        blk.close()


def test_checksum_policy_none_writes_no_checksum(shm_name):
    blk = R.create(shm_name, capacity=2, stride=64, checksum_policy=L.ChecksumPolicy.NONE)
    try:
        R.Producer(blk).publish(b"abc")
    finally:
        blk.close()
    img = Image.read(shm_path(shm_name))
    assert img.checksum_policy == 0 and img.slot(0)["state"] == COMMITTED
    assert img.checksum(0) == (bytes(32), 0)


def test_core_fields_agree_with_spec_reader(shm_name):
    """Every header/slot/consumer field _layout declares decodes like plh_spec does."""
    blk = R.create(shm_name, capacity=2, stride=128, hub_name="h", producer_uid="u")
    try:
        R.Producer(blk).publish(b"x" * 10)
        R.Consumer(blk, name="n", uid="c")
        img = Image.read(shm_path(shm_name))
        pairs = {"total_block_size": img.total_block_size, "policy": img.policy,
                 "consumer_sync_policy": img.sync, "logical_unit_size": img.stride,
                 "ring_buffer_capacity": img.capacity, "write_index": img.write_index,
                 "commit_index": img.commit_index, "active_consumer_count": img.active_consumers,
                 "total_slots_written": img.total_slots_written, "hub_name": img.hub_name,
                 "producer_uid": img.producer_uid, "header_layout_hash": img.layout_hash,
                 "layout_checksum": img.layout_checksum, "producer_heartbeat_pid":
                 img.producer_pid, "producer_heartbeat_ns": img.producer_ns,
                 "ev_producer_pid": img.ev_producer_pid, "ev_boot_id": img.ev_boot_id}
        for name, want in pairs.items():
            assert blk.get(name) == want, name
        assert blk.slot(0, "slot_state") == img.slot(0)["state"] == COMMITTED
        assert blk.slot(0, "write_generation") == img.slot(0)["generation"] == 1
        assert blk.slot(0, "ev_changed_ns") == img.slot(0)["ev_changed_ns"] > 0
        assert blk.consumer(0, "consumer_uid") == img.consumer(0)["uid"] == "c"
    finally:
        blk.close()


# ------------------------------------------------------------------ C++ fixtures

FIXTURES = {
    "a_committed_producer_killed.bin": "a",
    "b_stuck_writer.bin": "b",
    "f_corrupt_slot.bin": "f",
}


def _check_fixture_state(kind, img, blk):
    """The README's state, checked both on raw bytes (img) and through the core (blk)."""
    assert len(img.data) == 24576 and img.magic_bytes == spec.MAGIC_BYTES
    assert img.layout_hash == spec.LAYOUT_HASH and img.version == (1, 0)
    assert (img.capacity, img.stride, img.flex_size) == (4, 4096, 0)
    assert (img.policy, img.sync, img.checksum_type, img.checksum_policy) == (2, 0, 0, 2)
    assert img.layout_checksum == spec.layout_checksum(4, img.page_size, 4096, 0, 0, 2, 0)
    assert blk.geo == L.Geometry(4, 4096, 0) and blk.problems == []
    assert not blk.has_evidence and not any(img.evidence_area)
    assert blk.hdr("commit_index") == img.commit_index == 2
    assert blk.hdr("write_index") == img.write_index == (4 if kind == "b" else 3)
    assert all(img.consumer(k)["pid"] == 0 for k in range(8))
    for i in range(3):
        sl = img.slot(i)
        assert (sl["lock"], sl["readers"], sl["state"], sl["waiting"], sl["generation"]) == (
            0, 0, COMMITTED, 0, 1), (kind, i)
        assert blk.slot(i, "slot_state") == COMMITTED and blk.slot(i, "write_generation") == 1
        assert img.checksum(i)[1] == 0                               # verified flag 0
        assert any(img.checksum(i)[0])
        data = blk.read(blk.geo.slot_data(i), 4096)
        assert data == img.slot_data(i)
        valid = L.blake2b256(data) == blk.read(blk.geo.checksum_entry(i), 32)
        assert valid == img.checksum_valid(i) == (not (kind == "f" and i == 1)), (kind, i)
    s3 = img.slot(3)
    assert img.checksum(3) == (bytes(32), 0)
    if kind == "b":
        assert s3["state"] == WRITING and blk.slot(3, "slot_state") == WRITING
        assert s3["lock"] != 0 and s3["lock"] == blk.slot(3, "write_lock") == img.producer_pid
        assert s3["generation"] == 0 and s3["readers"] == 0
        assert img.slot_data(3) == b"\xee" * 100 + bytes(4096 - 100)
    else:
        assert (s3["state"], s3["lock"], s3["generation"]) == (FREE, 0, 0)
        assert img.slot_data(3) == bytes(4096)


@pytest.mark.parametrize("fname", sorted(FIXTURES))
def test_cpp_fixture_attaches_and_decodes(fixtures_dir, shm_name, fname):
    src = str(fixtures_dir / fname)
    kind = FIXTURES[fname]
    img = Image.read(src)
    # attach by absolute path (read-only, as it ships)
    with B.open_block(src, writable=False) as blk:
        assert blk.kind == "path"
        _check_fixture_state(kind, img, blk)
    # copied into /dev/shm under a unique name, attached by name (writable, like a tool)
    shutil.copyfile(src, shm_path(shm_name))
    os.chmod(shm_path(shm_name), 0o600)
    with R.attach(shm_name) as blk:
        assert blk.kind == "shm" and blk.name == shm_name
        _check_fixture_state(kind, img, blk)
    with R.attach("/" + shm_name, writable=False) as blk:            # shm_open spelling
        _check_fixture_state(kind, img, blk)
    assert Image.read(shm_path(shm_name)).data == img.data            # attach wrote nothing


def test_fixture_layout_hash_confirms_spec_constant(fixtures_dir):
    for fname in FIXTURES:
        assert Image.read(str(fixtures_dir / fname)).layout_hash == L.HEADER_LAYOUT_HASH
