"""Liveness verdicts and /proc parsing, judged on REAL processes (no behaviour mocked).

Every rule of ``_liveness.judge`` is pinned here by a test that fails when the rule is
changed (docs/architecture.md, "Liveness"):

1. a process that has the block mapped or open has the pid (any PID-namespace level):
   alive, or suspect-hung when stopped -- whatever the records say;
2. complete scope (tests/unit/test_kernel.py runs those in a fleet-lab-like namespace
   host) and a scan younger than the record: dead;
3. partial scope: recorded other PID namespace -> unknown; ESRCH -> dead; exists but
   neither maps nor opens the block -> dead; zombie -> dead; unreadable -> unknown.

Records that used to prove death (start tick mismatch, a stamp "from the future", a
holder younger than the record, another boot) are supporting evidence only now.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _kernel as K, _liveness as liveness, _procinfo as procinfo, _runtime as R)

MU_DIR = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"
COLLECTIONS = os.environ.get("PYTHONPATH", "")
judge = liveness.judge
HOUR = 3600 * 10**9
_COUNTER = itertools.count(1)


def wait_state(pid, wanted, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procinfo.process_state(pid) in wanted:
            return
        time.sleep(0.005)
    pytest.fail("pid %d never reached state %s (now %s)"
                % (pid, wanted, procinfo.process_state(pid)))


@pytest.fixture
def spawn():
    """Start real child processes; SIGKILL and reap them all afterwards."""
    procs = []

    def _spawn(argv, **kw):
        p = subprocess.Popen(argv, **kw)
        procs.append(p)
        return p

    yield _spawn
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            except ProcessLookupError:
                pass
        p.wait()


@pytest.fixture
def block():
    """A real block in /dev/shm (unmapped here) and its kernel identity."""
    name = "plhlive_%d_%d" % (os.getpid(), next(_COUNTER))
    b = R.create(name, capacity=2, stride=4096)
    ident = K.BlockId.of(b)
    b.close()
    yield name, ident
    try:
        os.unlink("/dev/shm/" + name)
    except FileNotFoundError:
        pass


HOLD = textwrap.dedent("""
    import os, sys, time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
    how, name = sys.argv[1], sys.argv[2]
    if how == "fd":
        keep = os.open("/dev/shm/" + name, os.O_RDONLY)
    elif how == "ro":                   # a read-only shared mapping (our Block never makes one)
        import mmap
        with open("/dev/shm/" + name, "rb") as f:
            keep = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    else:
        keep = R.attach(name)
    print("ready", flush=True)
    time.sleep(120)
""")


def holder(spawn, how, name):
    """A live child with the block mapped read-write ("rw"), read-only ("ro"), or only
    an fd open ("fd")."""
    p = spawn([sys.executable, "-c", HOLD, how, name], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def sleeper(spawn):
    p = spawn(["sleep", "60"])
    wait_state(p.pid, ("S",))
    return p


def text(v):
    return " | ".join(v.evidence)


# ---------------------------------------------------------------- _procinfo

def test_parse_stat_comm_with_spaces_and_parens():
    rest = " ".join(str(i) for i in range(4, 53))  # fields 4..52
    data = ("42 (x) (y) Z 1) R %s\n" % rest).encode()
    st = procinfo.parse_stat(data)
    assert (st.comm, st.state, st.start_ticks) == (b"x) (y) Z 1", "R", 22)
    assert st == procinfo.ProcStat(b"x) (y) Z 1", "R", 22)
    assert procinfo.parse_stat(b"42 (x") is None and procinfo.parse_stat(b"garbage") is None


def test_real_process_renamed_to_a_hostile_comm(spawn):
    code = ("import sys, time; sys.stdin.readline(); "
            "open('/proc/self/comm', 'w').write('a) Z 1 2 3'); print('ok', flush=True); "
            "time.sleep(60)")
    p = spawn([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    plain = open("/proc/%d/stat" % p.pid, "rb").read().split()  # comm has no space yet
    ticks_before = int(plain[21])
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"ok\n"
    wait_state(p.pid, ("S",))
    raw = open("/proc/%d/stat" % p.pid, "rb").read()
    assert raw.split()[2] == b"Z"  # a naive split is fooled ...
    st = procinfo.process_stat(p.pid)  # ... the last-')' parse is not
    assert st.comm == b"a) Z 1 2 3" and st.state == "S" and st.start_ticks == ticks_before
    assert procinfo.process_start_ticks(p.pid) == ticks_before
    assert judge(p.pid, recorded_start_ticks=ticks_before).state == liveness.ALIVE


def test_procinfo_basics():
    bid = procinfo.boot_id()
    assert isinstance(bid, bytes) and len(bid) == 16
    assert bid.hex() == procinfo.boot_id_text().replace("-", "")
    assert procinfo.clock_ticks() > 0
    assert procinfo.own_start_ticks() == procinfo.process_start_ticks(os.getpid())
    assert procinfo.process_state(os.getpid()) == "R"
    assert procinfo.process_uid(os.getpid()) == os.getuid()
    mono = procinfo.monotonic_ns()
    assert procinfo.boottime_ns() >= mono  # boottime = monotonic + time suspended
    assert procinfo.pid_probe(os.getpid()) == procinfo.PROBE_EXISTS
    for bad in (0, -1, -os.getpid(), 2**31, 2**40, procinfo.PID_MAX_LIMIT):
        assert procinfo.pid_probe(bad) == procinfo.PROBE_NO_SUCH  # never kill(0 / -n)
        assert procinfo.process_stat(bad) is None


# ---------------------------------------------------------------- without a block

def test_own_pid_alive_without_a_block():
    v = judge(os.getpid(), recorded_start_ticks=procinfo.own_start_ticks(),
              recorded_boot_id=procinfo.boot_id(), since_ns=time.monotonic_ns(),
              heartbeat_ns=time.monotonic_ns())
    assert v.state == liveness.ALIVE and not v.is_dead, v
    assert liveness.is_process_alive(os.getpid())
    d = v.to_dict()
    assert json.loads(json.dumps(d)) == d and d["pid"] == os.getpid()
    assert d["scope"] is None and d["process"] is None      # no block, no scan


def test_pid_zero_or_negative_is_not_judged():
    for bad in (0, -5, True):
        with pytest.raises(ValueError):
            judge(bad)


def test_reaped_child_dead(spawn, block):
    p = spawn(["true"])
    p.wait()
    for kw in ({}, {"block": block[1]}):
        v = judge(p.pid, **kw)
        assert v.is_dead and "ESRCH" in text(v), v
        assert "holders' PID namespace" in text(v), v     # the assumption is stated
    assert not liveness.is_process_alive(p.pid)


def test_impossible_and_free_pids_dead(block):
    for pid in (procinfo.PID_MAX_LIMIT, 2147483647):
        scans = K.Scans()
        v = judge(pid, block=block[1], scans=scans, observed_ns=time.monotonic_ns())
        assert v.is_dead and "PID_MAX_LIMIT" in text(v), v
        assert scans.taken == 0                 # no process anywhere can have it: no walk
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    free = next(p for p in range(pid_max - 1, 1, -1) if not os.path.exists("/proc/%d" % p))
    v = judge(free)
    assert v.is_dead and "ESRCH" in text(v), v


def test_unreaped_zombie_dead(spawn, block):
    p = spawn(["true"])
    wait_state(p.pid, ("Z",))
    for kw in ({}, {"block": block[1]}):
        v = judge(p.pid, recorded_start_ticks=procinfo.process_start_ticks(p.pid), **kw)
        assert v.is_dead and "not yet reaped" in text(v), v


SYS_EXIT = {"x86_64": 60, "aarch64": 93}.get(platform.machine())


@pytest.mark.skipif(SYS_EXIT is None, reason="SYS_exit number unknown for this arch")
def test_zombie_leader_with_running_threads_not_dead(spawn, block):
    # The main thread leaves with the raw exit syscall (not exit_group): the leader shows
    # Z, its maps read empty, while another thread keeps the process -- and its mapping
    # of the block -- alive.
    code = textwrap.dedent("""
        import ctypes, sys, threading, time
        from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
        keep = R.attach(sys.argv[1])
        threading.Thread(target=time.sleep, args=(60,)).start()
        ctypes.CDLL(None).syscall(%d, 0)
    """ % SYS_EXIT)
    p = spawn([sys.executable, "-c", code, block[0]])
    wait_state(p.pid, ("Z",))
    assert procinfo.live_thread_count(p.pid) == 1
    assert open("/proc/%d/maps" % p.pid).read() == ""      # the leader's view is empty
    v = judge(p.pid, recorded_start_ticks=procinfo.process_start_ticks(p.pid))
    assert not v.is_dead and "still run" in text(v), v
    assert liveness.is_process_alive(p.pid)
    # with the block: its running thread has the block mapped -> a holder
    v = judge(p.pid, block=block[1])
    assert v.state == liveness.ALIVE and "mapped read-write" in text(v), v
    v = judge(p.pid, block=block[1], scans=K.Scans())
    assert v.state == liveness.ALIVE, v


def test_stopped_child_suspect_hung_never_dead(spawn, block):
    p = holder(spawn, "rw", block[0])
    ticks = procinfo.process_start_ticks(p.pid)
    os.kill(p.pid, signal.SIGSTOP)
    wait_state(p.pid, ("T",))
    for kw in ({}, {"block": block[1]}, {"block": block[1], "scans": K.Scans()}):
        v = judge(p.pid, recorded_start_ticks=ticks, heartbeat_ns=time.monotonic_ns(), **kw)
        assert v.state == liveness.SUSPECT_HUNG and "stopped" in text(v), (kw, v)
    os.kill(p.pid, signal.SIGCONT)
    wait_state(p.pid, ("S",))
    v = judge(p.pid, recorded_start_ticks=ticks, heartbeat_ns=time.monotonic_ns(),
              block=block[1])
    assert v.state == liveness.ALIVE, v


# ---------------------------------------------------------------- rule 1: kernel truth

@pytest.mark.parametrize("how,shown", [("rw", "mapped read-write"),
                                       ("ro", "mapped read-only"),
                                       ("fd", "open (fd")])
def test_a_process_holding_the_block_is_alive(spawn, block, how, shown):
    p = holder(spawn, how, block[0])
    for scans in (None, K.Scans()):
        v = judge(p.pid, block=block[1], scans=scans)
        assert v.state == liveness.ALIVE and shown in text(v), v
        assert v.process["pid"] == p.pid and v.process["nspid"][0] == p.pid, v
        assert v.process["holds"].startswith(shown.split(" (")[0]), v
        assert v.process["start_ticks"] == procinfo.process_start_ticks(p.pid)
    # the same pid not holding this block: another block is not this one
    other = K.BlockId(block[1].dev, block[1].ino + 1, 0, "shm", "/dev/shm/nope")
    v = judge(p.pid, block=other)
    assert v.is_dead and "has not mapped or opened this block" in text(v), v


def test_records_that_used_to_prove_death_prove_nothing_against_a_mapping(spawn, block):
    """Changed rules (D1, D2, D4): these records made a holder 'dead' before; a process
    with the block mapped is alive whatever they say, and they stay in the evidence."""
    p = holder(spawn, "rw", block[0])
    ticks = procinfo.process_start_ticks(p.pid)
    now = time.monotonic_ns()
    cases = {
        "tick mismatch (was 'pid reused')": (
            {"recorded_start_ticks": ticks - 3}, "the record says %d" % (ticks - 3)),
        "stamp from the future (was 'another boot')": (
            {"heartbeat_ns": now + 3 * HOUR}, "in the future of this monotonic clock"),
        "since from the future": ({"since_ns": now + 3 * HOUR}, "in the future"),
        "held before the process started (was 'a younger process')": (
            {"since_ns": 1, "heartbeat_ns": 1}, "heartbeat"),
        "another boot (was dead)": (
            {"recorded_boot_id": bytes(range(1, 17)), "recorded_start_ticks": ticks},
            "can outlive a boot"),
    }
    for label, (kw, shown) in cases.items():
        for scans in (None, K.Scans()):
            v = judge(p.pid, block=block[1], scans=scans, **kw)
            assert v.state == liveness.ALIVE, (label, v)
            assert shown in text(v), (label, v)


def test_a_stale_heartbeat_of_a_running_holder_is_alive_and_reported(spawn, block):
    """Decision: a running process with the block mapped is alive however old its
    heartbeat (an idle consumer goes quiet); the age is reported."""
    p = holder(spawn, "rw", block[0])
    snap = liveness.Snapshot.take()
    later = liveness.Snapshot(snap.monotonic_ns + 30 * 10**9, snap.boottime_ns + 30 * 10**9,
                              snap.boot_id, snap.clk_tck)
    v = judge(p.pid, block=block[1], heartbeat_ns=snap.monotonic_ns, now=later)
    assert v.state == liveness.ALIVE, v
    assert "heartbeat 30.0 s old (stale after 10.0 s" in text(v), v
    v = judge(p.pid, block=block[1], heartbeat_ns=snap.monotonic_ns, now=later,
              stale_after_ns=60 * 10**9)
    assert "heartbeat 30.0 s old" in text(v) and "stale" not in text(v), v


# ---------------------------------------------------------------- rule 3: partial scope

def test_partial_exists_but_does_not_hold_the_block_is_dead(spawn, block):
    """A pid that exists, readable, with the block neither mapped nor open is not the
    holder (its pid was reused), whatever its recorded ticks say."""
    p = sleeper(spawn)
    for kw in ({}, {"recorded_start_ticks": procinfo.process_start_ticks(p.pid)},
               {"heartbeat_ns": time.monotonic_ns()}):
        v = judge(p.pid, block=block[1], **kw)
        assert v.is_dead, (kw, v)
        assert "exists but has not mapped or opened this block" in text(v), v
        assert "holders' PID namespace" in text(v), v
    # ... and our own pid, while only the recovery engine maps the block, is not one
    with R.attach(block[0], writable=False) as b, K.engine_mapping(b):
        v = judge(os.getpid(), block=block[1])
        assert v.is_dead and "has not mapped" in text(v), v
    with R.attach(block[0], writable=False):            # mapped outside the engine
        assert judge(os.getpid(), block=block[1]).state == liveness.ALIVE


def test_partial_pid_of_another_pid_namespace_is_unknown_never_probed(spawn, block):
    """A pid recorded in another PID namespace (our evidence) names some other process
    here, or none: without a process holding the block under it, unknown."""
    own = procinfo.pid_namespace()
    assert own and procinfo.pid_namespace(os.getpid()) == own
    gone = spawn(["true"])
    gone.wait()
    live = sleeper(spawn)
    for pid in (live.pid, gone.pid):          # a live process here, and no process here
        v = judge(pid, block=block[1], recorded_pidns=own + 1)
        assert v.state == liveness.UNKNOWN and "PID namespace" in text(v), v
    assert judge(gone.pid, block=block[1], recorded_pidns=own).is_dead
    # Changed rule (was dead: "every pid of another boot is dead"): not any more
    v = judge(live.pid, block=block[1], recorded_pidns=own + 1,
              recorded_boot_id=bytes(range(1, 17)))
    assert v.state == liveness.UNKNOWN, v
    # a holder found by the kernel wins over the recorded namespace
    h = holder(spawn, "rw", block[0])
    assert judge(h.pid, block=block[1], recorded_pidns=own + 1).state == liveness.ALIVE


def test_scan_switched_off_is_partial_and_still_finds_direct_holders(spawn, block):
    K.set_scan_enabled(False)
    try:
        scans = K.Scans()
        p = sleeper(spawn)
        v = judge(p.pid, block=block[1], scans=scans, observed_ns=time.monotonic_ns())
        assert v.is_dead and v.scope.name == "partial" and "switched off" in v.scope.reason
        h = holder(spawn, "rw", block[0])
        assert judge(h.pid, block=block[1], scans=scans).state == liveness.ALIVE
    finally:
        K.set_scan_enabled(True)


# ---------------------------------------------------------------- another user

def _unprivileged_python():
    if os.geteuid() != 0:
        return None
    for exe in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"):
        try:
            r = subprocess.run([exe, "-c", "pass"], preexec_fn=_drop, timeout=30, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            continue
        if r.returncode == 0:
            return exe
    return None


def _drop():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


SHIM = textwrap.dedent("""
    import importlib, sys, types
    _pkg = types.ModuleType("_plh_mu"); _pkg.__path__ = [%r]; sys.modules["_plh_mu"] = _pkg
    liveness = importlib.import_module("_plh_mu._liveness")
    procinfo = importlib.import_module("_plh_mu._procinfo")
    kernel = importlib.import_module("_plh_mu._kernel")
""" % str(MU_DIR))


def test_other_users_holder_is_unknown_not_alive_not_dead(spawn, block):
    """Seen by uid 65534: root's processes exist (EPERM) but their maps are unreadable,
    so whether one holds the block cannot be told: unknown -- whatever the records say.
    (Changed rules: a tick mismatch or an older 'since' made it dead before.)"""
    exe = _unprivileged_python()
    if exe is None:
        pytest.skip("needs root and a python runnable by uid 65534")
    h = holder(spawn, "rw", block[0])
    ticks = int(procinfo.process_start_ticks(h.pid))
    gone = spawn(["true"])
    gone.wait()
    code = SHIM + textwrap.dedent("""
        import json, time
        pid, ticks, gone = %d, %d, %d
        b = kernel.BlockId(%d, %d, 0, "shm", %r)
        out = {"uid": __import__("os").getuid(), "probe": procinfo.pid_probe(pid)}
        for name, kw in (("plain", {}), ("right", {"recorded_start_ticks": ticks}),
                         ("wrong", {"recorded_start_ticks": ticks + 1}),
                         ("older_since", {"since_ns": 1}),
                         ("scan", {"scans": kernel.Scans()})):
            out[name] = liveness.judge(pid, block=b, **kw).to_dict()
        out["noblock"] = liveness.judge(pid).to_dict()
        out["gone"] = liveness.judge(gone, block=b, scans=kernel.Scans()).to_dict()
        print(json.dumps(out))
    """ % (h.pid, ticks, gone.pid, block[1].dev, block[1].ino, block[1].path))
    r = subprocess.run([exe, "-c", code], preexec_fn=_drop, cwd="/", timeout=60,
                       check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["uid"] == 65534 and out["probe"] == "exists-other-user", out
    for name in ("plain", "right", "wrong", "older_since", "scan"):
        assert out[name]["state"] == "unknown", (name, out[name])
        assert any("unreadable" in e for e in out[name]["evidence"]), out[name]
    assert out["scan"]["scope"]["name"] == "partial"
    assert out["scan"]["scope"]["reason"].startswith("not root"), out["scan"]
    assert out["noblock"]["state"] == "alive"              # EPERM: it exists
    assert out["gone"]["state"] == "dead"                  # ESRCH is ESRCH for anyone


# ---------------------------------------------------------------- snapshots

def test_snapshot_fixed_is_deterministic_live_is_refreshed(spawn, block):
    snap = liveness.Snapshot.take()
    assert snap.live and snap.boot_id == procinfo.boot_id()
    fixed = liveness.Snapshot(snap.monotonic_ns + 60 * 10**9, snap.boottime_ns + 60 * 10**9,
                              snap.boot_id, snap.clk_tck)
    h = holder(spawn, "rw", block[0])
    v = judge(h.pid, block=block[1], heartbeat_ns=snap.monotonic_ns, now=fixed)
    assert "60.0 s old" in text(v), v
    time.sleep(liveness.FUTURE_TOLERANCE_NS / 1e9 + 0.2)
    hb = time.monotonic_ns()
    # a live snapshot re-reads its clocks: a heartbeat written after it is not "future"
    assert "future" not in text(judge(h.pid, block=block[1], heartbeat_ns=hb, now=snap))
    frozen = liveness.Snapshot(snap.monotonic_ns, snap.boottime_ns, snap.boot_id, snap.clk_tck)
    v = judge(h.pid, block=block[1], heartbeat_ns=hb, now=frozen)
    assert "future" in text(v) and v.state == liveness.ALIVE, v   # reported, not decisive
