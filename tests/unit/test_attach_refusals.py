"""Attaching refuses anything that is not a sound DataBlock 1.0, says what mismatched, and
never changes a byte of what it refused. No access ever leaves the mapped file."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.pylabhub.recovery.tests.support import deadline
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _errors as E, _layout as L, _runtime as R)

import plh_spec as spec

N, S = 2, 4096          # total 16384 per the spec


def shm(name):
    return os.path.join("/dev/shm", name)


@pytest.fixture
def extra_paths():
    """Paths (files, links, FIFOs, dirs) a test places in /dev/shm; removed afterwards."""
    paths = []
    yield paths
    for p in reversed(paths):
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


@pytest.fixture
def block(shm_name):
    """A sound block with one commit; yields (name, path)."""
    blk = R.create(shm_name, capacity=N, stride=S)
    try:
        R.Producer(blk).publish(b"payload")
    finally:
        blk.close()
    return shm_name, shm(shm_name)


def poke(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def snapshot(path):
    """The bytes of a regular file; None for anything else (never opens a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        return os.pread(fd, st.st_size, 0) if stat.S_ISREG(st.st_mode) else None
    finally:
        os.close(fd)


def refused(address, cls, *needles, path=None, strict=True, modes=(True, False)):
    """open_block(address) raises ``cls`` (writable and read-only), the message names the
    address and every needle, and the file's bytes are unchanged."""
    path = path or (shm(address) if "/" not in address else address)
    before = snapshot(path) if "\0" not in path else None
    for writable in modes:
        with deadline(5.0, "open_block"):
            with pytest.raises(cls) as info:
                B.open_block(address, writable=writable, strict=strict)
        err = info.value
        # the exact class, not a subclass (WrongOwner is a PermissionDenied)
        assert err.__class__ is cls, (type(err), err)
        assert err.code == cls.code and err.exit_code == cls.exit_code
        msg = str(err).lower()
        for needle in needles:
            assert needle.lower() in msg, (needle, str(err))
        assert err.to_dict()["message"] == str(err)
        if "\0" not in path:
            assert snapshot(path) == before, "refused attach changed bytes"
    return err


# ------------------------------------------------------------------ header lies

def test_sound_block_attaches(block):
    name, path = block
    with B.open_block(name, writable=True) as blk:
        assert blk.problems == [] and blk.geo == L.Geometry(N, S, 0)
    with B.open_block(path) as blk:
        assert blk.kind == "path"


def test_wrong_magic(block):
    name, path = block
    poke(path, 0, struct.pack("<I", 0xDEADBEEF))
    err = refused(name, E.NotADataBlock, name, "magic", "0xdeadbeef")
    assert err.exit_code == E.EXIT_NO_BLOCK
    refused(name, E.NotADataBlock, "0xdeadbeef", strict=False)   # lenient refuses too


def test_wrong_version(block):
    name, path = block
    poke(path, 4, struct.pack("<HH", 2, 0))
    refused(name, E.UnsupportedLayout, name, "version is 2.0", "expected 1.0")
    poke(path, 4, struct.pack("<HH", 1, 7))
    refused(name, E.UnsupportedLayout, "version is 1.7")


def test_wrong_layout_hash(block):
    name, path = block
    poke(path, 2496, b"\x00\x11\x22\x33")
    refused(name, E.UnsupportedLayout, "header layout hash is 00112233")


def test_wrong_layout_checksum(block):
    name, path = block
    raw = snapshot(path)
    poke(path, 2528 + 5, bytes([raw[2528 + 5] ^ 0xFF]))
    refused(name, E.UnsupportedLayout, "layout checksum mismatch")


def test_policy_change_breaks_layout_checksum(block):
    name, path = block
    poke(path, 148, struct.pack("<I", 1))       # DoubleBuffer: covered by the checksum
    refused(name, E.UnsupportedLayout, "layout checksum")


def test_truncated_file(block):
    name, path = block
    os.truncate(path, 8192)
    refused(name, E.TruncatedBlock, "file is 8192 bytes", "16384")
    os.truncate(path, 100)
    refused(name, E.TruncatedBlock, "100 bytes", "header")
    refused(name, E.TruncatedBlock, "100 bytes", strict=False)     # below a header: always


def _set_geometry(path, capacity, stride=S, total=None):
    """Rewrite capacity/stride (and total_block_size) with a consistent layout checksum."""
    img = spec.Image.read(path)
    poke(path, 160, struct.pack("<II", stride, capacity))
    if total is None:
        total = spec.geometry(capacity, stride, 0)["total"]
    poke(path, 8, struct.pack("<Q", total))
    poke(path, 2528, spec.layout_checksum(capacity, img.page_size, stride, 0, 0,
                                          img.policy, img.sync))


def test_more_slots_than_the_file_holds(block):
    name, path = block
    _set_geometry(path, 64)                     # needs 4096*64+...: only the size check catches it
    img = spec.Image.read(path)
    assert img.total_block_size == spec.geometry(64, S, 0)["total"] > len(img.data)
    err = refused(name, E.TruncatedBlock, "file is 16384 bytes", "64 slots")
    assert err.details.get("field") == "total_block_size"
    # lenient (validate) attaches but trusts no geometry and never leaves the file
    before = snapshot(path)
    with B.open_block(name, writable=True, strict=False) as blk:
        assert blk.geometry is None
        assert [p.code for p in blk.problems] == ["truncated"]
        with pytest.raises(E.UnsupportedLayout):
            blk.slot(40, "write_lock")
        with pytest.raises(E.TruncatedBlock):
            blk.get(L.SLOT["write_lock"], spec.geometry(64, S, 0)["slots"] + 64 * 40 + 16384)
        with pytest.raises(E.TruncatedBlock):
            blk.write(16384 - 4, b"\xff" * 8)
    assert snapshot(path) == before


def test_impossible_stride(block):
    name, path = block
    _set_geometry(path, N, stride=100, total=16384)
    refused(name, E.UnsupportedLayout, "stride 100")


@pytest.mark.parametrize("claimed", [32768, 8192, 16384 + 1])
def test_total_block_size_lying(block, claimed):
    name, path = block
    poke(path, 8, struct.pack("<Q", claimed))
    refused(name, E.UnsupportedLayout, "total_block_size is %d" % claimed, "16384")


def test_file_larger_than_header_says(block):
    name, path = block
    os.truncate(path, 20480)
    refused(name, E.UnsupportedLayout, "file is 20480 bytes", "total_block_size is 16384")


def test_block_mid_creation_is_not_ready(block):
    name, path = block
    poke(path, 2496, bytes(64))                 # magic set, both hashes still zero
    refused(name, E.BlockNotReady, "being created", "retry")
    refused(name, E.BlockNotReady, strict=False)


# ------------------------------------------------------------------ not a block at all

def test_empty_file(shm_name):
    open(shm(shm_name), "wb").close()
    refused(shm_name, E.NotADataBlock, "0 bytes")


def test_foreign_file(shm_name):
    with open(shm(shm_name), "wb") as f:
        f.write(b"#!/bin/sh\necho not a block\n" * 400)
    refused(shm_name, E.NotADataBlock, "magic", "not a pylabhub")
    refused(shm_name, E.NotADataBlock, strict=False)


def test_missing_block(shm_name):
    err = refused(shm_name, E.BlockNotFound, "no such block")
    assert not os.path.exists(shm(shm_name))
    assert err.exit_code == E.EXIT_NO_BLOCK


def test_symlink_refused(block, extra_paths):
    name, path = block
    link = path + "_link"
    extra_paths.append(link)
    os.symlink(path, link)
    refused(os.path.basename(link), E.UnsafePath, "symlink")
    refused(link, E.UnsafePath, "symlink")
    with B.open_block(name):                     # the target itself is fine
        pass


def test_fifo_refused_without_hanging(shm_name, extra_paths):
    path = shm(shm_name)
    extra_paths.append(path)
    os.mkfifo(path, 0o600)
    refused(shm_name, E.UnsafePath, "fifo", path=path, modes=(False,))
    refused(shm_name, E.UnsafePath, "not a regular file", path=path, modes=(True,))


def test_directory_refused(shm_name, extra_paths):
    path = shm(shm_name)
    extra_paths.append(path)
    os.mkdir(path, 0o700)
    refused(shm_name, E.UnsafePath, "not a regular file", path=path, modes=(True,))
    refused(shm_name, E.UnsafePath, "a directory", path=path, modes=(False,))
    refused(path, E.UnsafePath, "directory", path=path, modes=(False,))


def test_memfd_address_must_be_a_memfd(block):
    name, path = block
    fd = os.open(path, os.O_RDONLY)
    try:
        address = "memfd:%d:%d" % (os.getpid(), fd)
        refused(address, E.UnsafePath, "not a memfd", path=path)
    finally:
        os.close(fd)


@pytest.mark.parametrize("bad", [
    "", "a/b", "..", ".", "../x", "./x", "x/../y", "/dev/shm/../etc/passwd", "a\0b",
    "x" * 256, "memfd:12", "memfd:a:b", "memfd:1:2:3", "memfd:-1:3",
])
def test_bad_names_refused(bad):
    listing = sorted(os.listdir("/dev/shm"))
    with pytest.raises(E.InvalidName) as info:
        B.open_block(bad)
    assert info.value.exit_code == E.EXIT_USAGE and str(info.value)
    with pytest.raises(E.InvalidName):
        R.create(bad) if bad and "memfd" not in bad else B.check_name(bad)
    assert sorted(os.listdir("/dev/shm")) == listing   # nothing created


def test_name_limits():
    assert B.resolve("x" * 255) == ("shm", "/dev/shm/" + "x" * 255)
    assert B.resolve("/blk") == ("shm", "/dev/shm/blk")
    assert B.resolve("/tmp/copy.bin") == ("path", "/tmp/copy.bin")
    assert B.resolve("memfd:12:7") == ("memfd", "/proc/12/fd/7")
    with pytest.raises(E.InvalidName):
        B.check_name("/tmp/copy.bin")           # create needs a plain shm name


# ------------------------------------------------------------------ bounds

def test_no_access_outside_the_mapped_file(block):
    name, path = block
    before = snapshot(path)
    size = len(before)
    with B.open_block(name, writable=True) as blk:
        assert blk.size == size
        assert blk.read(size - 8, 8) == before[-8:]
        for off, n in ((size - 7, 8), (size, 1), (-1, 1), (0, size + 1), (10**12, 8)):
            with pytest.raises(E.TruncatedBlock) as info:
                blk.read(off, n)
            assert "outside the %d-byte file" % size in str(info.value)
        with pytest.raises(E.TruncatedBlock):
            blk.view(size - 1, 2)
        with pytest.raises(E.TruncatedBlock):
            blk.get(L.SLOT["write_lock"], size)              # a word past the end
        with pytest.raises(E.TruncatedBlock):
            blk.get(L.HEADER["hub_name"], size - 10)         # text straddling the end
        with pytest.raises(E.TruncatedBlock):
            blk.set(L.SLOT["write_lock"], 1, size - 4)
        with pytest.raises(E.TruncatedBlock):
            blk.cas(L.SLOT["write_lock"], 0, 1, size)
        with pytest.raises(E.TruncatedBlock):
            blk.add(L.SLOT["reader_count"], 1, size)
        with pytest.raises(E.TruncatedBlock):
            blk.write(size - 2, b"abc")
        with pytest.raises(E.SlotOutOfRange):
            blk.slot(N, "write_lock")
        with pytest.raises(E.SlotOutOfRange):
            blk.slot(-1, "write_lock")
    assert snapshot(path) == before
    blk = B.open_block(name)
    blk.close()
    with pytest.raises(E.RecoveryError):
        blk.read(0, 4)                                      # closed: no dangling access


def test_read_only_attach_refuses_every_store(block):
    """A store through a read-only mapping would be SIGSEGV: it must raise instead. Run in
    a child so that a regression fails this test instead of killing the test run."""
    name, path = block
    before = snapshot(path)
    code = textwrap.dedent("""
        import sys
        from ansible_collections.pylabhub.recovery.plugins.module_utils import (
            _block as B, _errors as E, _layout as L)
        with B.open_block(sys.argv[1], writable=False) as blk:
            assert blk.get("write_index") == 1
            for call in (lambda: blk.write(4096, b"x"),
                         lambda: blk.set("write_index", 5),
                         lambda: blk.set("hub_name", "x"),
                         lambda: blk.cas("write_index", 1, 2),
                         lambda: blk.add("write_index", 1),
                         lambda: blk.cas(L.SLOT["write_lock"], 0, 1, blk.slot_base(0))):
                try:
                    call()
                except E.PermissionDenied as exc:
                    assert "read-only" in str(exc), exc
                else:
                    raise AssertionError("a store on a read-only block did not raise")
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code, name], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout == b"ok\n", (r.returncode, r.stderr.decode())
    assert snapshot(path) == before
