"""discover(): every DataBlock on the host, from /dev/shm and from memfds held by real
processes, with junk placed in /dev/shm ignored and dead producers reported dead."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ansible_collections.pylabhub.recovery.tests.support import deadline
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _discovery as D, _layout as L, _runtime as R)

import plh_spec as spec

MU_DIR = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"
DEAD_PID = 2147483647          # the spec's "dead PID" (>= PID_MAX_LIMIT)
_COUNTER = itertools.count(1)

HOLDER = textwrap.dedent("""
    import os, sys, time
    data = open(sys.argv[1], "rb").read()
    fd = os.memfd_create("plh_shm_capability")
    os.ftruncate(fd, len(data)); os.pwrite(fd, data, 0)
    fd2 = os.dup(fd)
    junk = os.memfd_create("plh_shm_capability")
    os.ftruncate(junk, 8192); os.pwrite(junk, b"junk" * 100, 0)
    print(fd, fd2, junk, flush=True)
    time.sleep(600)
""")

PRODUCER = textwrap.dedent("""
    import sys, time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
    b = R.attach(sys.argv[1])
    R.Producer(b).publish(b"from the child")
    print("ready", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def prefix():
    """A unique name prefix; everything under /dev/shm starting with it is removed after."""
    pre = "plhdisc_%d_%d_" % (os.getpid(), next(_COUNTER))
    yield pre
    for name in os.listdir("/dev/shm"):
        if name.startswith(pre):
            path = os.path.join("/dev/shm", name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


@pytest.fixture
def children():
    procs = []

    def start(code, *args):
        p = subprocess.Popen([sys.executable, "-c", code] + [str(a) for a in args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(p)
        line = p.stdout.readline().decode()
        if not line.strip():
            p.wait()
            pytest.fail("child failed: %s" % p.stderr.read().decode())
        return p, line.split()

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()


def discover(*args, **kw):
    with deadline(20.0, "discover()"):
        out = D.discover(*args, **kw)
    assert json.loads(json.dumps(out)) == out               # JSON-ready
    assert [e["address"] for e in out] == sorted(e["address"] for e in out)
    return out


def shm(name):
    return os.path.join("/dev/shm", name)


def make(name, **kw):
    blk = R.create(name, **kw)
    try:
        R.Producer(blk).publish(b"hello")
    finally:
        blk.close()
    with open(shm(name), "rb") as f:
        return f.read()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def by_address(entries):
    return {e["address"]: e for e in entries}


# ------------------------------------------------------------------ /dev/shm

def test_lists_shm_blocks_and_ignores_junk(prefix):
    a, b = prefix + "A", prefix + "B"
    raw = make(a, capacity=2, stride=4096, hub_name="hub-1", hub_uid="H1",
               producer_name="prod-1", producer_uid="P1")
    make(b, capacity=8, stride=64, flex_size=4096, evidence=False, mode=0o640,
         policy=L.Policy.SINGLE, sync=L.ConsumerSync.SEQUENTIAL_SYNC,
         checksum_policy=L.ChecksumPolicy.NONE)
    # junk that must be skipped without crashing or hanging
    write(shm(prefix + "foreign"), b"not a block at all\n" * 300)
    write(shm(prefix + "empty"), b"")
    os.symlink(shm(a), shm(prefix + "link"))
    os.symlink("/nonexistent", shm(prefix + "dangling"))
    os.mkfifo(shm(prefix + "fifo"))
    os.mkdir(shm(prefix + "dir"))
    write(shm(prefix + "dir") + "/inner", raw)
    # carry the magic but are broken: listed with the problem as status
    write(shm(prefix + "short"), raw[:2000])
    write(shm(prefix + "onepage"), raw[:4096])
    write(shm(prefix + "notready"), raw[:2496] + bytes(64) + raw[2560:])
    write(shm(prefix + "badver"), raw[:4] + struct.pack("<H", 2) + raw[6:])

    # this process is the producer of A and B: a live one only while it has them mapped
    held = [R.attach(a), R.attach(b)]          # mapped, as a producer has it
    out = by_address(discover(prefix + "*"))
    assert sorted(out) == sorted(prefix + s for s in (
        "A", "B", "short", "onepage", "notready", "badver")), sorted(out)
    st = os.stat(shm(a))
    ea = out[a]
    assert ea["kind"] == "shm" and ea["path"] == shm(a) and ea["name"] == a
    assert (ea["size"], ea["inode"], ea["owner_uid"], ea["mode"]) == (
        16384, st.st_ino, os.getuid(), "0600")
    assert (ea["status"], ea["problems"]) == ("ok", [])
    assert (ea["capacity"], ea["stride"], ea["flex_size"]) == (2, 4096, 0)
    assert (ea["policy"], ea["consumer_sync"], ea["checksum_policy"]) == (
        "RING_BUFFER", "LATEST_ONLY", "ENFORCED")
    assert (ea["hub_name"], ea["hub_uid"], ea["producer_name"], ea["producer_uid"]) == (
        "hub-1", "H1", "prod-1", "P1")
    assert ea["producer_pid"] == os.getpid() and ea["producer_alive"] is True
    assert ea["producer_verdict"]["state"] == "alive"
    assert ea["producer_verdict"]["process"]["pid"] == os.getpid()
    assert any("as recorded" in x for x in ea["producer_verdict"]["evidence"])  # start ticks used
    assert ea["has_evidence"] is True and ea["holders"] is None
    eb = out[b]
    assert (eb["capacity"], eb["stride"], eb["flex_size"], eb["size"], eb["mode"]) == (
        8, 64, 4096, 16384, "0640")
    assert (eb["policy"], eb["consumer_sync"], eb["checksum_policy"]) == (
        "SINGLE", "SEQUENTIAL_SYNC", "NONE")
    assert eb["has_evidence"] is False and eb["producer_alive"] is True
    assert not any("as recorded" in x for x in eb["producer_verdict"]["evidence"])
    assert out[prefix + "short"]["status"] == "truncated"
    assert out[prefix + "short"]["capacity"] is None
    assert out[prefix + "onepage"]["status"] == "truncated"
    assert "16384" in out[prefix + "onepage"]["problems"][0]
    assert out[prefix + "onepage"]["capacity"] == 2          # what the header claims
    assert out[prefix + "notready"]["status"] == "not-ready"
    assert out[prefix + "badver"]["status"] == "unsupported-layout"
    assert "version is 2.0" in out[prefix + "badver"]["problems"][0]
    # the whole host scan (with whatever else lives there) includes ours too
    everything = by_address(discover())
    assert set(out) <= set(everything) and everything[a] == dict(
        ea, producer_verdict=everything[a]["producer_verdict"])
    for blk in held:
        blk.close()
    # Changed rule (was alive: the pid exists): with the blocks unmapped this process
    # holds nothing in them, so their producer pid is not a live producer any more
    out = by_address(discover(prefix + "*"))
    assert out[a]["producer_alive"] is False and out[b]["producer_alive"] is False
    # listing changed nothing and left the FIFO alone
    with open(shm(a), "rb") as f:
        assert f.read() == raw
    assert os.path.exists(shm(prefix + "fifo"))


def test_pattern_filters_by_name(prefix):
    make(prefix + "alpha", capacity=1, stride=64)
    make(prefix + "beta", capacity=1, stride=64)
    assert [e["address"] for e in discover(prefix + "al*")] == [prefix + "alpha"]
    assert [e["address"] for e in discover(prefix + "*a")] == [prefix + "alpha",
                                                               prefix + "beta"]
    assert discover(prefix + "gamma*") == []


def test_other_directories_give_absolute_addresses(prefix, tmp_path):
    raw = make(prefix + "src", capacity=1, stride=64)
    write(str(tmp_path / "copy"), raw)
    os.mkfifo(str(tmp_path / "fifo"))
    out = discover(shm_dir=str(tmp_path), proc=str(tmp_path / "no-proc"))
    assert [e["address"] for e in out] == [str(tmp_path / "copy")]
    with B.open_block(out[0]["address"]) as blk:            # the address attaches
        assert blk.geo.capacity == 1
    assert discover(shm_dir=str(tmp_path / "missing"), proc=str(tmp_path / "no-proc")) == []


def test_cpp_fixture_with_dead_producer(prefix, fixtures_dir):
    name = prefix + "cpp_b"
    data = bytearray((fixtures_dir / "b_stuck_writer.bin").read_bytes())
    for off in (4096 + 64 * 3, 2624):                        # README: make the pids dead here
        assert struct.unpack_from("<Q", data, off)[0] != 0
        struct.pack_into("<Q", data, off, DEAD_PID)
    write(shm(name), bytes(data))
    (e,) = discover(name)
    assert (e["status"], e["has_evidence"], e["capacity"], e["stride"]) == ("ok", False, 4, 4096)
    assert (e["policy"], e["consumer_sync"], e["checksum_policy"]) == (
        "RING_BUFFER", "LATEST_ONLY", "ENFORCED")
    assert e["producer_pid"] == DEAD_PID and e["producer_alive"] is False
    assert e["producer_verdict"]["state"] == "dead"


def test_producer_evidence_is_used_only_when_it_names_that_pid(prefix):
    name = prefix + "ev"
    make(name, capacity=1, stride=64)
    path = shm(name)
    held = R.attach(name)      # mapped: the producer (us) has the block mapped
    (e,) = discover(name)
    ev = e["producer_verdict"]["evidence"]
    assert e["producer_alive"] is True
    assert any("as recorded" in x for x in ev)
    img = spec.Image.read(path)
    assert img.ev_producer_pid == os.getpid()

    def poke(off, data):
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(data)

    # Changed rule (was dead: "pid reused"): recorded start ticks that differ are only
    # supporting evidence -- the kernel shows this very pid with the block mapped.
    poke(2672, struct.pack("<Q", img.ev_producer_start + 1))   # another incarnation
    (e,) = discover(name)
    assert e["producer_alive"] is True and e["producer_verdict"]["state"] == "alive"
    assert any("the record says" in x and "not proof" in x
               for x in e["producer_verdict"]["evidence"])
    poke(2664, struct.pack("<Q", os.getpid() + 1))             # evidence of another pid:
    (e,) = discover(name)                                       # not trusted, not used
    assert e["producer_alive"] is True
    assert not any("as recorded" in x or "record says" in x
                   for x in e["producer_verdict"]["evidence"])
    poke(2664, struct.pack("<Q", os.getpid()))
    poke(2672, struct.pack("<Q", img.ev_producer_start))
    # Changed rule (was dead: "another boot"): a file block can outlive a boot; the boot
    # id is reported, the live mapping decides
    poke(2648, bytes(15) + b"\x01")                            # written on another boot
    (e,) = discover(name)
    assert e["producer_alive"] is True
    assert any("another boot" not in x and "outlive a boot" in x
               for x in e["producer_verdict"]["evidence"])
    held.close()
    (e,) = discover(name)                                       # unmapped: holds nothing
    assert e["producer_alive"] is False and e["producer_verdict"]["state"] == "dead"


def test_producer_alive_then_dead(prefix, children):
    name = prefix + "live"
    blk = R.create(name, capacity=2, stride=64)
    blk.set("producer_heartbeat_pid", 0)                      # nobody produces yet
    blk.close()
    (e,) = discover(name)
    assert e["producer_pid"] == 0 and e["producer_verdict"] is None
    assert e["producer_alive"] is None
    p = children(PRODUCER, name)[0]
    (e,) = discover(name)
    assert e["producer_pid"] == p.pid and e["producer_alive"] is True
    assert e["producer_verdict"]["state"] == "alive"
    p.kill()
    p.wait()
    (e,) = discover(name)
    assert e["producer_pid"] == p.pid and e["producer_alive"] is False
    assert e["producer_verdict"]["state"] == "dead"


# ------------------------------------------------------------------ memfd

def _memfd_entries(entries, inode):
    return [e for e in entries if e["kind"] == "memfd" and e["inode"] == inode]


def test_memfd_block_held_by_a_child(prefix, children):
    src = prefix + "memsrc"
    raw = make(src, capacity=2, stride=128, hub_name="memhub")
    holder, fds = children(HOLDER, shm(src))
    fd, fd2, junk = (int(x) for x in fds)
    os.unlink(shm(src))                                       # only the memfd remains
    inode = os.stat("/proc/%d/fd/%d" % (holder.pid, fd)).st_ino
    assert os.stat("/proc/%d/fd/%d" % (holder.pid, fd2)).st_ino == inode
    junk_inode = os.stat("/proc/%d/fd/%d" % (holder.pid, junk)).st_ino
    assert os.readlink("/proc/%d/fd/%d" % (holder.pid, fd)).startswith("/memfd:")

    everything = discover()
    (e,) = _memfd_entries(everything, inode)                  # two fds, one block
    assert not _memfd_entries(everything, junk_inode)        # no magic: not a block
    address = "memfd:%d:%d" % (holder.pid, min(fd, fd2))
    assert e["address"] == address and e["path"] == "/proc/%d/fd/%d" % (holder.pid, min(fd, fd2))
    assert e["holders"] == [holder.pid]
    assert (e["name"], e["status"], e["size"], e["hub_name"]) == (
        "plh_shm_capability", "ok", len(raw), "memhub")
    assert (e["capacity"], e["stride"], e["has_evidence"]) == (2, 128, True)
    # the producer pid is ours, but this process holds no mapping of the memfd (only the
    # holder child has it open): not a live producer of it (was alive: the pid exists)
    assert e["producer_pid"] == os.getpid() and e["producer_alive"] is False
    assert src not in {x["address"] for x in everything}
    assert any(x["address"] == address for x in discover("plh_shm_capability"))
    assert any(x["address"] == address for x in discover("memfd:%d:*" % holder.pid))

    with B.open_block(address) as blk:                        # the address attaches
        assert blk.kind == "memfd" and blk.inode[1] == inode
        assert blk.hdr("commit_index") == 0 and blk.hdr("hub_name") == "memhub"
        assert blk.read(blk.geo.slot_data(0), 5) == b"hello"

    # a producer in another process attaches by that address: same block, two holders
    prod = children(PRODUCER, address)[0]
    (e,) = _memfd_entries(discover(), inode)
    assert e["holders"] == sorted([holder.pid, prod.pid])
    assert e["address"].startswith("memfd:%d:" % min(holder.pid, prod.pid))
    assert e["producer_pid"] == prod.pid and e["producer_alive"] is True
    prod.kill()
    prod.wait()
    (e,) = _memfd_entries(discover(), inode)
    assert e["address"] == address and e["holders"] == [holder.pid]
    assert e["producer_pid"] == prod.pid and e["producer_alive"] is False
    assert e["producer_verdict"]["state"] == "dead"
    with B.open_block(address) as blk:
        assert blk.hdr("commit_index") == 1
        assert blk.read(blk.geo.slot_data(1), 14) == b"from the child"

    holder.kill()
    holder.wait()
    assert not _memfd_entries(discover(), inode)              # gone with its last holder


# ------------------------------------------------------------------ another user

SHIM = textwrap.dedent("""
    import importlib, sys, types, json
    _pkg = types.ModuleType("_plh_mu"); _pkg.__path__ = [%r]; sys.modules["_plh_mu"] = _pkg
    D = importlib.import_module("_plh_mu._discovery")
""" % str(MU_DIR))


def _drop():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def _unprivileged_python():
    for exe in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3",
                "/usr/local/bin/python3"):
        try:
            r = subprocess.run([exe, "-c", "import sys; assert sys.version_info >= (3, 8)"],
                               preexec_fn=_drop, timeout=30, cwd="/", check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            continue
        if r.returncode == 0:
            return exe
    return None


def test_unreadable_blocks_and_processes_are_skipped(prefix, children):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a helper as uid 65534")
    make(prefix + "private", capacity=1, stride=64)           # 0600, root's
    make(prefix + "public", capacity=1, stride=64, mode=0o644)
    raw = make(prefix + "memsrc", capacity=1, stride=64)
    holder = children(HOLDER, shm(prefix + "memsrc"))[0]
    os.unlink(shm(prefix + "memsrc"))
    assert raw
    code = SHIM + textwrap.dedent("""
        import os
        out = D.discover(%r)
        mem = [e for e in D.discover() if e["kind"] == "memfd"]
        print(json.dumps({"uid": os.getuid(), "out": out, "mem": mem}))
    """ % (prefix + "*"))
    exe = _unprivileged_python()
    if exe is None:
        pytest.skip("no python runnable by uid 65534")
    r = subprocess.run([exe, "-c", code], preexec_fn=_drop, cwd="/", check=False,
                       timeout=60, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    assert res["uid"] == 65534
    assert [e["address"] for e in res["out"]] == [prefix + "public"]
    (e,) = res["out"]
    # root's pid seen from uid 65534: it exists (EPERM) but its maps are unreadable, so
    # whether it holds the block cannot be told (was alive: "EPERM = exists")
    assert e["producer_alive"] is None and e["producer_verdict"]["state"] == "unknown"
    assert e["producer_verdict"]["scope"]["name"] == "partial"
    assert e["producer_verdict"]["scope"]["reason"].startswith("not root")
    assert not any(m["holders"] == [holder.pid] for m in res["mem"])
