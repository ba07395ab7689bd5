"""The kernel scan's rules pinned where mutation testing found them unpinned
(docs/reliability.md section 8, target ``kernel``). Real blocks, real processes, real
namespaces and capabilities."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _kernel as K, _runtime as R)
from ansible_collections.pylabhub.recovery.tests.support import fd_only, in_namespace_host

ROOT = os.geteuid() == 0
MU_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "plugins",
                      "module_utils")


def test_the_engine_mapping_is_left_out_by_its_address_not_the_whole_process(block_name):
    """The engine leaves out its own mapping of a block -- that mapping only, by its start
    address. The same process holding the block writable through another mapping (a
    Python program that produces and diagnoses) is a holder like any other: left out
    with the engine's, its live lock would look dead."""
    with R.attach(block_name) as engine, K.engine_mapping(engine):   # mapped, as to store
        assert K._own_maps(), "premise: the engine's mapping has an address"
        key = K.BlockId.of(engine).key
        assert os.getpid() not in {p.pid for p, h in K.HostScan.take().holders(key)}
        assert not K.process_hold(os.getpid(), key)
        with R.attach(block_name) as runtime:       # mapped writable at attach
            runtime.get("write_index")
            held = dict((p.pid, h) for p, h in K.HostScan.take().holders(key))
            assert held[os.getpid()].rw and not held[os.getpid()].ro, held
            assert K.process_hold(os.getpid(), key).rw


def test_a_lease_answer_is_not_reused_for_a_later_observation(block_name, actors):
    """``Scans.exclusive`` reuses a lease answer only while it is younger than the words
    it decides on: after a consumer maps the block, asked for an observation made after
    the first answer, it asks the kernel again (False), instead of the stale True."""
    with R.attach(block_name, writable=False) as b:
        bid = K.BlockId.of(b)
        scans = K.Scans()
        assert scans.exclusive(bid, time.monotonic_ns()) is True    # nobody else
        assert scans.exclusive(bid, None) is True                   # reused: no time given
        a = actors(block_name, [("consumer", "late")])
        a.wait_point()
        assert scans.exclusive(bid, time.monotonic_ns()) is False, "a stale lease answer"


@pytest.mark.skipif(not ROOT or not shutil.which("setpriv"), reason="needs root and setpriv")
@pytest.mark.parametrize("who", ["root-without", "nobody-with"])
def test_root_without_cap_sys_ptrace_is_a_partial_scope(block_name, who):
    """Root whose bounding set lacks CAP_SYS_PTRACE (a hardened container) may be unable to
    read other processes' maps: the scope says so and is never complete. Nor is a
    non-root user's, even one granted CAP_SYS_PTRACE: the rule asks for both."""
    code = textwrap.dedent("""
        import importlib, json, os, sys, types
        _pkg = types.ModuleType("_plh_mu"); _pkg.__path__ = [%r]; sys.modules["_plh_mu"] = _pkg
        K = importlib.import_module("_plh_mu._kernel")
        st = os.stat("/dev/shm/" + sys.argv[1])
        scan = K.HostScan.take()
        b = K.BlockId(st.st_dev, st.st_ino, 0, "shm", "/dev/shm/" + sys.argv[1])
        print(json.dumps({"euid": os.geteuid(), "can_ptrace": scan.can_ptrace,
                          "scope": scan.scope(b).to_dict()}))
    """)
    # a copy uid 65534 can read, wherever this tree is (a root-only temp dir, say)
    readable = tempfile.mkdtemp(prefix="plh-mu-")
    os.chmod(readable, 0o755)
    shutil.copytree(os.path.realpath(MU_DIR), os.path.join(readable, "mu"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = code % os.path.join(readable, "mu")
    setpriv = {"root-without": ["setpriv", "--bounding-set", "-sys_ptrace"],
               "nobody-with": ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "--inh-caps", "+sys_ptrace", "--ambient-caps", "+sys_ptrace"]}
    os.chmod("/dev/shm/" + block_name, 0o644)
    try:
        r = subprocess.run(setpriv[who] + [sys.executable, "-c", code, block_name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                           check=False, cwd="/")
    finally:
        shutil.rmtree(readable)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["scope"]["name"] == "partial" and not out["scope"]["complete"], out
    if who == "root-without":
        assert out["euid"] == 0 and out["can_ptrace"] is False, out
        assert out["scope"]["reason"].startswith("no CAP_SYS_PTRACE: "), out
    else:
        assert out["euid"] == 65534 and out["can_ptrace"] is True, out
        assert out["scope"]["reason"].startswith("not root: "), out


NOT_MOUNTED = """
import json, subprocess
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _kernel as K, _runtime as R)
R.create("plhmnt", capacity=2).close()
# a process in a mount namespace of its own, with a private tmpfs holding a copy of the block
child = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          "mkdir -p /mnt/plh && mount -t tmpfs plh /mnt/plh && "
                          "cp /dev/shm/plhmnt /mnt/plh/blk && echo ready && exec sleep 120"],
                         stdout=subprocess.PIPE)
assert child.stdout.readline() == b"ready\\n"
path = "/proc/%d/root/mnt/plh/blk" % child.pid          # reached through its root
out = {}
with R.attach(path, writable=False) as b:
    bid = K.BlockId.of(b)
    out["kind"] = bid.kind
    out["scope"] = K.HostScan.take([path]).scope(bid).to_dict()
    out["shm"] = K.HostScan.take().scope(K.BlockId.of(R.attach("plhmnt", writable=False))).to_dict()
child.kill()
print(json.dumps(out))
"""


@pytest.mark.skipif(not ROOT or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_a_block_on_a_filesystem_not_mounted_here_is_a_partial_scope():
    """In a nested PID namespace (a lab host), a block file reached through another mount
    namespace's root (``/proc/PID/root/...``) lives on a filesystem this mount namespace
    does not have: whether it is shared with processes outside cannot be told, so the
    scope is partial and says why; the host's own private /dev/shm stays complete."""
    out = in_namespace_host(NOT_MOUNTED)
    assert out["kind"] == "path", out
    assert out["scope"]["name"] == "partial", out
    assert "is not mounted in this mount namespace" in out["scope"]["reason"], out
    assert out["shm"]["name"] == "namespace", out


@pytest.mark.parametrize("new", [499, 501, 0], ids=["lower", "higher", "cleared"])
def test_a_word_that_changed_is_a_new_observation_whichever_way_it_moved(new):
    """``first_seen`` dates a holder word's value from its first read: a scan that started
    after that time may prove the holder absent. A lock that went from pid 500 to another
    pid -- lower or higher -- or to 0 is a new value, dated now: dated by the old value's
    first read, a scan taken before the new writer locked would "prove" it gone."""
    scans = K.Scans()
    word = ("blk", "lock", 1)
    assert scans.first_seen(word, 500, 1000) == 1000
    assert scans.first_seen(word, 500, 2000) == 1000         # the same value: first seen
    assert scans.first_seen(word, new, 3000) == 3000
    assert scans.first_seen(word, new, 4000) == 3000
    assert scans.first_seen(word, 500, 5000) == 5000         # back again: new again


HOLDER = r"""
import ctypes, json, mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
blk = mmap.mmap(fd, 0)                      # the block, shared and writable
os.close(fd)
ino = str(os.stat(sys.argv[1]).st_ino)


def lines():
    return [ln.split() for ln in open("/proc/self/maps").read().splitlines()]


start = int(next(f for f in lines() if len(f) > 5 and f[4] == ino)[0].split("-")[0], 16)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
hint = start - (1 << 24)                    # below the block: an earlier line of maps
if sys.argv[2] == "anon":                   # anonymous shared memory (/dev/zero (deleted))
    got = libc.mmap(hint, 8192, 3, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS, -1, 0)
else:                                       # a file whose name holds the marker
    fd = os.open(sys.argv[2], os.O_RDWR)
    flags = mmap.MAP_PRIVATE if sys.argv[2].endswith("private") else mmap.MAP_SHARED
    got = libc.mmap(hint, 4096, 3, flags, fd, 0)
    os.close(fd)
print(json.dumps({"other": got, "block": start}), flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("other", ["anon", "name", "private", "disk"], ids=[
    "anonymous-shared-first", "marker-twice-in-a-name-first",
    "a-private-mapping-named-with-the-marker-first", "a-disk-file-first"])
def test_a_holder_is_found_whatever_shared_mapping_comes_before_its_block(block_name, other):
    """The scan finds shared mappings by the perms marker ("-s ") and skips lines it has
    parsed or does not want -- never the rest of the maps text. Before the block's line:
    anonymous shared memory (on the memfd device, not a memfd: skipped), a file whose
    name (untrusted text) holds the marker twice (its line met twice), a PRIVATE mapping
    of a file whose name holds it (a line that is no shared mapping), or a shared file on
    a filesystem the scan does not index. The block's holder below is still found,
    writable."""
    key = (os.stat("/dev/shm/" + block_name).st_dev, os.stat("/dev/shm/" + block_name).st_ino)
    decoy = {"name": "/dev/shm/%s -s marker -s marker" % block_name,      # on /dev/shm
             "private": "/dev/shm/%s -s marker private" % block_name,     # not shared
             "disk": "/var/tmp/%s.shared" % block_name}.get(other)        # not indexed
    extra = "anon"
    if decoy:
        with open(decoy, "wb") as f:
            f.truncate(4096)
        extra = decoy
    p = subprocess.Popen([sys.executable, "-c", HOLDER, "/dev/shm/" + block_name, extra],
                         stdout=subprocess.PIPE)
    try:
        at = json.loads(p.stdout.readline())
        assert at["other"] == at["block"] - (1 << 24), at               # the premise
        held = dict((q.pid, h) for q, h in K.HostScan.take().holders(key))
        assert p.pid in held and held[p.pid].rw, held
    finally:
        p.kill()
        p.wait()
        if decoy:
            os.unlink(decoy)


def test_a_block_on_a_disk_filesystem_is_found_and_gets_no_lease_answer(tmp_path):
    """A block file on a disk filesystem (here the root filesystem; its device major is
    written in hex in /proc/PID/maps, e.g. fe for virtio-blk): the holder is found by the
    scan (device parsed as hex), and the lease check answers "cannot tell" (leases are
    trusted on tmpfs only). A process holding it by an fd alone is found too, also once
    the file is deleted (its fd then reads "PATH (deleted)")."""
    name = "plhdisk%d" % os.getpid()
    R.create(name, capacity=2).close()
    path = os.path.join("/var/tmp", name)
    shutil.copyfile("/dev/shm/" + name, path)
    os.unlink("/dev/shm/" + name)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, path, "anon"], stdout=subprocess.PIPE)
    fd_holder, fd = fd_only(path)
    try:
        json.loads(p.stdout.readline())
        with R.attach(path, writable=False) as b:
            bid = K.BlockId.of(b)
            assert bid.kind == "path"
            held = dict((q.pid, h) for q, h in K.HostScan.take([path]).holders(bid.key))
            assert p.pid in held and held[p.pid].rw, (os.major(bid.dev), held)
            assert held[fd_holder.pid] == K.Hold(fds=(fd,)), held
            assert K.exclusive(bid) is None
            os.unlink(path)             # deleted: its fds now read "PATH (deleted)"
            held = dict((q.pid, h) for q, h in K.HostScan.take([path]).holders(bid.key))
            assert held[fd_holder.pid] == K.Hold(fds=(fd,)), held
    finally:
        for q in (p, fd_holder):
            q.kill()
            q.wait()
        if os.path.exists(path):
            os.unlink(path)


def test_a_root_recovery_run_is_a_recovery_run_for_every_owner():
    """A recovery run registered by root is one for a block of any owner (root may
    recover every user's blocks); one registered by another user only for that user's."""
    assert K.Proc(7, (7,), "S", 0, 0, "x", recovery_uid=0).recovery_for(1000)
    assert K.Proc(7, (7,), "S", 0, 0, "x", recovery_uid=1000).recovery_for(1000)
    assert not K.Proc(7, (7,), "S", 0, 0, "x", recovery_uid=1000).recovery_for(1001)
    assert not K.Proc(7, (7,), "S", 0, 0, "x").recovery_for(0)


FORKED_ENGINE = r"""
import json, os, sys
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _kernel as K, _runtime as R)
with R.attach(sys.argv[1]) as block:            # the holder: mapped writable
    key = K.BlockId.of(block).key
    rd, wr = os.pipe()
    child = os.fork()
    if child == 0:                               # the engine, in a child of the holder
        try:
            os.close(rd)
            with K.engine_mapping(block):
                held = dict((q.pid, h) for q, h in K.HostScan.take().holders(key))
                direct = K.process_hold(os.getppid(), key)
                out = {"own": bool(K._own_maps()), "parent": os.getppid(),
                       "held": {str(k): v.rw for k, v in held.items()},
                       "direct": bool(direct and direct.rw)}
            os.write(wr, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        out = json.loads(f.read())
    os.waitpid(child, 0)
out.update(holder=os.getpid(), engine=child)
print(json.dumps(out))
"""


def test_a_process_that_forked_the_engine_is_still_a_holder(block_name):
    """The engine leaves out only ITS OWN process's mapping: a holder that forked it (the
    child inherits the mapping at the same address, and the same fd numbers) and has a
    lower pid is still found, writable, by the scan and by the direct read. (Both run in
    a fresh interpreter: a fork of the test runner would inherit its threads and fds.)"""
    r = subprocess.run([sys.executable, "-c", FORKED_ENGINE, block_name], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120, check=False)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["own"] and out["parent"] == out["holder"] < out["engine"], out    # the premise
    assert out["held"].get(str(out["holder"])) is True, out
    assert str(out["engine"]) not in out["held"], out
    assert out["direct"], out


ZOMBIE_LEADER = r"""
import json, os, subprocess, sys, time
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _kernel as K, _runtime as R)
R.create("plhzl", capacity=2).close()
code = '''
import ctypes, sys, threading, time
from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
keep = R.attach("plhzl")
threading.Thread(target=time.sleep, args=(120,)).start()
ctypes.CDLL(None).syscall(60, 0)
'''
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write("9998")                   # the leader gets 9999, its thread 10000
p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ))
deadline = time.monotonic() + 30
while True:
    stat = open("/proc/%d/stat" % p.pid).read()
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        break
    assert time.monotonic() < deadline, "the leader never became a zombie"
    time.sleep(0.01)
with R.attach("plhzl", writable=False) as b:
    key = K.BlockId.of(b).key
out = {"pid": p.pid, "tids": sorted(os.listdir("/proc/%d/task" % p.pid)),
       "scan": [q.pid for q, h in K.HostScan.take().holders(key) if h.rw],
       "direct": bool(K.process_hold(p.pid, key))}
p.kill()
print(json.dumps(out))
"""


@pytest.mark.skipif(not ROOT or not shutil.which("unshare") or os.uname().machine != "x86_64",
                    reason="needs root, unshare(1), x86-64 (the raw exit syscall's number)")
def test_a_zombie_leader_whose_thread_id_sorts_first_as_text_is_a_holder():
    """A zombie leader (pid 9999) whose live thread (tid 10000) holds the block: the
    thread is found whatever the two numbers' order as text ("10000" < "9999"), by the
    scan and by the direct read; the leader itself is skipped by number, not by text."""
    out = in_namespace_host(ZOMBIE_LEADER)
    assert out["pid"] == 9999 and out["tids"] == ["10000", "9999"], out     # the premise
    assert out["scan"] == [9999] and out["direct"], out


ENGINE_FORKS_A_HOLDER = r"""
import json, os, signal, sys, time
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _kernel as K, _runtime as R)
with R.attach(sys.argv[1]) as block, K.engine_mapping(block):   # the engine's mapping
    key = K.BlockId.of(block).key
    rd, wr = os.pipe()
    child = os.fork()
    if child == 0:                    # a holder the engine's process forked: same address
        os.close(rd)
        os.write(wr, b"x")
        time.sleep(120)
        os._exit(0)
    os.close(wr)
    os.read(rd, 1)
    hold = K.process_hold(child, key)
    held = dict((q.pid, h) for q, h in K.HostScan.take().holders(key))
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
print(json.dumps({"engine": os.getpid(), "child": child, "direct": bool(hold and hold.rw),
                  "scan": {str(k): v.rw for k, v in held.items()}}))
"""


def test_a_holder_the_engine_forked_is_a_holder(block_name):
    """The other way round: the engine's process forked a holder (a higher pid, the
    engine's mapping inherited at the same address): only the engine's own process
    leaves that address out; the child is a writable holder, read directly and by
    the scan."""
    r = subprocess.run([sys.executable, "-c", ENGINE_FORKS_A_HOLDER, block_name],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["child"] > out["engine"], out                                  # the premise
    assert out["direct"], out
    assert out["scan"].get(str(out["child"])) is True and str(out["engine"]) not in out["scan"], out
