"""Liveness verdicts and /proc parsing, judged on REAL processes (no behaviour mocked).

Self-contained: the core is imported under its collection name when the root conftest
provides it, else the module_utils folder is loaded as a throw-away package.
"""

from __future__ import annotations

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

MU_DIR = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"

# Loads the two core modules as a package from a path: used here as a fallback and in
# the unprivileged helper process (which cannot read root's private temp dirs).
SHIM = textwrap.dedent("""
    import importlib, sys, types
    _pkg = types.ModuleType("_plh_mu"); _pkg.__path__ = [%r]; sys.modules["_plh_mu"] = _pkg
    liveness = importlib.import_module("_plh_mu._liveness")
    procinfo = importlib.import_module("_plh_mu._procinfo")
""" % str(MU_DIR))

try:
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _liveness as liveness, _procinfo as procinfo)
except ImportError:
    _ns = {}  # type: dict
    exec(SHIM, _ns)
    liveness, procinfo = _ns["liveness"], _ns["procinfo"]

judge = liveness.judge
HOUR = 3600 * 10**9


def wait_state(pid, wanted, timeout=5.0):
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
    assert st == (b"x) (y) Z 1", "R", 22)
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


# ---------------------------------------------------------------- verdicts

def test_own_pid_alive():
    v = judge(os.getpid(), recorded_start_ticks=procinfo.own_start_ticks(),
              recorded_boot_id=procinfo.boot_id(), since_ns=time.monotonic_ns(),
              heartbeat_ns=time.monotonic_ns())
    assert v.state == liveness.ALIVE and not v.is_dead, v
    assert liveness.is_process_alive(os.getpid())
    d = v.to_dict()
    assert json.loads(json.dumps(d)) == d and d["pid"] == os.getpid()


def test_pid_zero_or_negative_is_not_judged():
    for bad in (0, -5, True):
        with pytest.raises(ValueError):
            judge(bad)


def test_reaped_child_dead(spawn):
    p = spawn(["true"])
    p.wait()
    v = judge(p.pid)
    assert v.is_dead and "ESRCH" in text(v), v
    assert not liveness.is_process_alive(p.pid)


def test_impossible_and_free_pids_dead():
    assert judge(procinfo.PID_MAX_LIMIT).is_dead
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    free = next(p for p in range(pid_max - 1, 1, -1) if not os.path.exists("/proc/%d" % p))
    v = judge(free)
    assert v.is_dead and "ESRCH" in text(v), v


def test_unreaped_zombie_dead(spawn):
    p = spawn(["true"])
    wait_state(p.pid, ("Z",))
    v = judge(p.pid, recorded_start_ticks=procinfo.process_start_ticks(p.pid))
    assert v.is_dead and "not yet reaped" in text(v), v


SYS_EXIT = {"x86_64": 60, "aarch64": 93}.get(platform.machine())


@pytest.mark.skipif(SYS_EXIT is None, reason="SYS_exit number unknown for this arch")
def test_zombie_leader_with_running_threads_not_dead(spawn):
    # The main thread leaves with the raw exit syscall (not exit_group): leader shows Z
    # while another thread keeps the process running.
    code = ("import ctypes, threading, time; "
            "threading.Thread(target=time.sleep, args=(60,)).start(); "
            "ctypes.CDLL(None).syscall(%d, 0)" % SYS_EXIT)
    p = spawn([sys.executable, "-c", code])
    wait_state(p.pid, ("Z",))
    assert procinfo.live_thread_count(p.pid) == 1
    v = judge(p.pid, recorded_start_ticks=procinfo.process_start_ticks(p.pid))
    assert not v.is_dead and "still run" in text(v), v
    assert liveness.is_process_alive(p.pid)


def test_stopped_child_suspect_hung_never_dead(spawn):
    p = sleeper(spawn)
    ticks = procinfo.process_start_ticks(p.pid)
    os.kill(p.pid, signal.SIGSTOP)
    wait_state(p.pid, ("T",))
    v = judge(p.pid, recorded_start_ticks=ticks, heartbeat_ns=time.monotonic_ns())
    assert v.state == liveness.SUSPECT_HUNG and "stopped" in text(v), v
    os.kill(p.pid, signal.SIGCONT)
    wait_state(p.pid, ("S",))
    v = judge(p.pid, recorded_start_ticks=ticks, heartbeat_ns=time.monotonic_ns())
    assert v.state == liveness.ALIVE, v


def test_stale_heartbeat_suspect_hung(spawn):
    p = sleeper(spawn)
    hb = time.monotonic_ns()  # beat after the child started, then 30 s of silence:
    snap = liveness.Snapshot.take()
    later = liveness.Snapshot(snap.monotonic_ns + 30 * 10**9, snap.boottime_ns + 30 * 10**9,
                              snap.boot_id, snap.clk_tck)
    v = judge(p.pid, heartbeat_ns=hb, now=later)
    assert v.state == liveness.SUSPECT_HUNG and "heartbeat 30." in text(v), v
    v = judge(p.pid, heartbeat_ns=hb, now=later, stale_after_ns=60 * 10**9)
    assert v.state == liveness.ALIVE and "consistent" in text(v), v
    # the same silence measured from before the child existed: it is not the holder
    v = judge(p.pid, heartbeat_ns=hb - 30 * 10**9)
    assert v.is_dead and "younger process" in text(v), v


def test_pid_reuse_by_start_ticks(spawn):
    p = sleeper(spawn)
    ticks = procinfo.process_start_ticks(p.pid)
    v = judge(p.pid, recorded_start_ticks=ticks - 3)
    assert v.is_dead and "pid reused" in text(v), v
    assert judge(p.pid, recorded_start_ticks=ticks).state == liveness.ALIVE


def test_since_before_process_start_dead_after_alive(spawn):
    t0 = time.monotonic_ns()
    time.sleep(0.1)  # 10 ticks at USER_HZ=100: well beyond the one-tick slack
    p = sleeper(spawn)
    t1 = time.monotonic_ns()
    for kw in ({"since_ns": t0}, {"heartbeat_ns": t0}):
        v = judge(p.pid, **kw)
        assert v.is_dead and "younger process" in text(v), (kw, v)
    v = judge(p.pid, since_ns=t1, heartbeat_ns=t1)
    assert v.state == liveness.ALIVE and "consistent" in text(v), v
    # identity confirmed by start ticks yet "held before it started": never dead
    v = judge(p.pid, since_ns=t0, recorded_start_ticks=procinfo.process_start_ticks(p.pid))
    assert v.state == liveness.UNKNOWN and "contradictory" in text(v), v


def test_other_boot_dead_same_boot_alive():
    other = bytes(range(1, 17))
    v = judge(os.getpid(), recorded_boot_id=other)
    assert v.is_dead and "another boot" in text(v) and "this is boot" in text(v), v
    assert judge(os.getpid(), recorded_boot_id=bytes(16)).state == liveness.ALIVE  # unknown
    assert judge(os.getpid(), recorded_boot_id=procinfo.boot_id()).state == liveness.ALIVE


def test_heartbeat_in_the_future_dead_unless_identity_confirmed(spawn):
    p = sleeper(spawn)
    future = time.monotonic_ns() + 3 * HOUR
    v = judge(p.pid, heartbeat_ns=future)
    assert v.is_dead and "in the future" in text(v) and "another boot" in text(v), v
    v = judge(p.pid, since_ns=future)
    assert v.is_dead, v
    for kw in ({"recorded_start_ticks": procinfo.process_start_ticks(p.pid)},
               {"recorded_boot_id": procinfo.boot_id()}):
        v = judge(p.pid, heartbeat_ns=future, **kw)
        assert v.state == liveness.UNKNOWN and "contradictory" in text(v), (kw, v)


def test_snapshot_fixed_is_deterministic_live_is_refreshed():
    snap = liveness.Snapshot.take()
    assert snap.live and snap.boot_id == procinfo.boot_id()
    fixed = liveness.Snapshot(snap.monotonic_ns + 60 * 10**9, snap.boottime_ns + 60 * 10**9,
                              snap.boot_id, snap.clk_tck)
    v = judge(os.getpid(), heartbeat_ns=snap.monotonic_ns, now=fixed)
    assert v.state == liveness.SUSPECT_HUNG and "60.0 s old" in text(v), v
    # a scan outlasting the tolerance: a heartbeat written after the snapshot is no proof
    # of another boot, because a live snapshot re-reads the clocks
    time.sleep(liveness.FUTURE_TOLERANCE_NS / 1e9 + 0.2)
    hb = time.monotonic_ns()
    assert judge(os.getpid(), heartbeat_ns=hb, now=snap).state == liveness.ALIVE
    frozen = liveness.Snapshot(snap.monotonic_ns, snap.boottime_ns, snap.boot_id, snap.clk_tck)
    assert judge(os.getpid(), heartbeat_ns=hb, now=frozen).is_dead


# ---------------------------------------------------------------- EPERM (another user)

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


def test_other_users_process_judged_by_start_time(spawn):
    exe = _unprivileged_python()
    if exe is None:
        pytest.skip("needs root and a python runnable by uid 65534")
    p = sleeper(spawn)  # root's process; probed from uid 65534 -> EPERM
    ticks = procinfo.process_start_ticks(p.pid)
    t0 = time.monotonic_ns() - 5 * 10**9
    code = SHIM + textwrap.dedent("""
        import json, time
        pid, ticks, t0 = %d, %d, %d
        out = {"uid": __import__("os").getuid(), "probe": procinfo.pid_probe(pid)}
        for name, kw in (("plain", {}), ("right", {"recorded_start_ticks": ticks}),
                         ("wrong", {"recorded_start_ticks": ticks + 1}),
                         ("older_since", {"since_ns": t0}),
                         ("fresh", {"since_ns": time.monotonic_ns(),
                                    "recorded_start_ticks": ticks})):
            out[name] = liveness.judge(pid, **kw).to_dict()
        print(json.dumps(out))
    """ % (p.pid, ticks, t0))
    r = subprocess.run([exe, "-c", code], preexec_fn=_drop, cwd="/", timeout=60,
                       check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["uid"] == 65534 and out["probe"] == "exists-other-user", out
    for name in ("plain", "right", "fresh"):
        assert out[name]["state"] == "alive", out[name]
        assert any("EPERM" in e for e in out[name]["evidence"]), out[name]
    assert out["wrong"]["state"] == "dead", out["wrong"]
    assert any("pid reused" in e for e in out["wrong"]["evidence"]), out["wrong"]
    assert out["older_since"]["state"] == "dead", out["older_since"]


def test_pid_of_another_pid_namespace_unknown_never_dead(spawn):
    """A pid recorded in another PID namespace (another container) names some other
    process here, or none: it is never probed by its number, the verdict is unknown."""
    own = procinfo.pid_namespace()
    assert own and procinfo.pid_namespace(os.getpid()) == own
    gone = spawn(["true"])
    gone.wait()
    for pid in (os.getpid(), gone.pid):          # a live process here, and no process here
        v = judge(pid, recorded_pidns=own + 1)
        assert v.state == liveness.UNKNOWN and "PID namespace" in text(v), v
    assert judge(os.getpid(), recorded_pidns=own).state == liveness.ALIVE
    assert judge(gone.pid, recorded_pidns=own).is_dead
    # another boot still wins: every pid of another boot is dead, whatever its namespace
    assert judge(os.getpid(), recorded_pidns=own + 1, recorded_boot_id=bytes(range(1, 17))
                 ).is_dead
