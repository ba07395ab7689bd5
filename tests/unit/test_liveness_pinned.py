"""Liveness rules pinned by mutation testing (issue 10, scripts/mutation target
``liveness``): each test here kills mutants of ``_liveness.judge``/``_partial`` that the
rest of the suite let survive. Real processes, a real namespace host (complete scope),
a real other user; no mocks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _kernel as K, _liveness as liveness, _procinfo as procinfo, _runtime as R)
from ansible_collections.pylabhub.recovery.tests.support import in_namespace_host
from ansible_collections.pylabhub.recovery.tests.unit.test_liveness import (
    SHIM, _drop, _unprivileged_python)

judge = liveness.judge
ROOT = os.geteuid() == 0


@pytest.fixture
def attached(shm_name):
    """A block attached here (the engine's open file: the lease check needs it)."""
    b = R.create(shm_name, capacity=2)
    yield shm_name, K.BlockId.of(b)
    b.close()


@pytest.fixture
def reaped():
    """A pid that was a process a moment ago and is reaped now (ESRCH)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def children():
    procs = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, **kw)
        procs.append(p)
        return p
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


HOLD = textwrap.dedent("""
    import os, sys, time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
    keep = R.attach(sys.argv[1])
    print(os.stat("/proc/self/ns/pid").st_ino, flush=True)
    time.sleep(120)
""")


def test_pid_1_is_a_pid_judged_not_refused():
    v = judge(1)                 # only pid <= 0 means "no holder"
    assert v.pid == 1 and not v.is_dead


@pytest.mark.parametrize("size", [15, 17])
def test_a_boot_id_of_another_size_than_16_bytes_is_refused(size):
    with pytest.raises(ValueError, match="16 bytes"):
        judge(os.getpid(), recorded_boot_id=b"b" * size)


def test_a_lease_proves_death_where_the_per_pid_rules_cannot(attached, children):
    """Recorded in another PID namespace: the per-pid rules stay unknown; nobody else has
    the block open, so the kernel's lease proves the holder gone -- said so, and without
    a heartbeat age (a dead verdict reads the same from one run to the next)."""
    p = children(["sleep", "60"])
    ours = liveness.Snapshot.take().pidns
    ticks = int(procinfo.process_start_ticks(p.pid) or 0)
    assert ticks > 0
    v = judge(p.pid, block=attached[1], scans=K.Scans(), recorded_pidns=ours + 1,
              heartbeat_ns=time.monotonic_ns() - 3600 * 10**9, recorded_start_ticks=ticks)
    assert v.is_dead, v
    assert "exclusive lease" in v.evidence[-1], v
    assert not any(" old" in e for e in v.evidence), v
    assert "pid %d started at tick %d, as recorded" % (p.pid, ticks) in v.evidence, v
    # the process still runs (sleep): the evidence says why it is no holder nonetheless
    assert any(e.startswith("pid %d names a process here (state " % p.pid) and
               "that has neither mapped nor opened this block" in e for e in v.evidence), v


def test_a_dead_verdict_of_the_per_pid_rules_carries_no_heartbeat_age(block_name,
                                                                      children):
    p = children(["sleep", "60"])          # exists, does not hold the block: not the holder
    b = R.attach(block_name)
    ident = K.BlockId.of(b)
    b.close()
    v = judge(p.pid, block=ident, heartbeat_ns=time.monotonic_ns() - 3600 * 10**9)
    assert v.is_dead and "not the holder" in v.evidence[-1], v
    assert not any(" old" in e for e in v.evidence), v


def test_an_opener_the_scan_cannot_see_keeps_a_gone_pid_unknown(attached, children,
                                                                reaped):
    """Another process has the block open but the scan shows no holder (switched off
    here; in life: an unreadable process): ESRCH for the recorded pid proves nothing."""
    h = children([sys.executable, "-c", HOLD, attached[0]], stdout=subprocess.PIPE)
    assert h.stdout.readline().strip().isdigit()
    observed = time.monotonic_ns()
    K.set_scan_enabled(False)
    try:
        v = judge(reaped, block=attached[1], scans=K.Scans(), observed_ns=observed)
    finally:
        K.set_scan_enabled(True)
    assert v.state == liveness.UNKNOWN, v
    assert "none that this scan can see" in v.evidence[-1], v


def test_a_lower_recorded_pid_namespace_is_another_namespace_too(reaped):
    v = judge(reaped, recorded_pidns=1)          # any inode but ours
    assert v.state == liveness.UNKNOWN and "PID namespace 1" in v.evidence[-1], v


def test_kill_probe_evidence_says_exists(children):
    p = children(["sleep", "60"])
    v = judge(p.pid)
    assert "kill(%d, 0): success (process exists)" % p.pid in v.evidence, v


def test_kill_probe_evidence_says_eperm_for_another_users_process():
    exe = _unprivileged_python()
    if exe is None:
        pytest.skip("needs root and a python runnable by uid 65534")
    code = SHIM + textwrap.dedent("""
        import json, os
        print(json.dumps(liveness.judge(os.getppid()).to_dict()))
    """)
    r = subprocess.run([exe, "-c", code], preexec_fn=_drop, cwd="/", timeout=60,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    assert r.returncode == 0, r.stderr.decode()
    v = json.loads(r.stdout)
    assert "kill(%d, 0): EPERM (exists, owned by another user)" % os.getpid() in v["evidence"]


# ------------------------------------------------------------------ a complete scope
FRESHNESS = textwrap.dedent("""
    import subprocess, time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _kernel as K, _liveness as L, _runtime as R)
    b = R.create("fresh", capacity=2)
    ident = K.BlockId.of(b)
    b.close()
    old = K.HostScan.take()
    out = {"old_scope": old.scope(ident).to_dict()}
    # a holder in a nested PID namespace (pid 1 there) attaches after that scan
    h = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable,
                          "-c", %r, "fresh"], stdout=subprocess.PIPE)
    nested = int(h.stdout.readline())
    observed = time.monotonic_ns()            # the word naming it is read now
    kw = dict(block=ident, observed_ns=observed, recorded_pidns=nested)
    out["older_scan"] = L.judge(1, scan=old, **kw).to_dict()
    out["newer_scan"] = L.judge(1, scan=K.HostScan.take(), **kw).to_dict()
    out["holder"] = h.pid
    h.kill(); h.wait()                        # its child dies with it (--kill-child)...
    deadline = time.monotonic() + 30
    while K.HostScan.take().holders(ident.key) and time.monotonic() < deadline:
        time.sleep(0.01)                      # ...a moment later
    out["after_death"] = L.judge(1, scan=K.HostScan.take(), recorded_start_ticks=12345,
                                 heartbeat_ns=time.monotonic_ns() - 3600 * 10**9,
                                 **kw).to_dict()
    print(json.dumps(out))
""")


@pytest.mark.skipif(not ROOT or not shutil.which("unshare"), reason="needs root, unshare")
def test_absence_proves_death_only_in_a_complete_scan_younger_than_the_record():
    """In a namespace host (complete scope): a holder that attached after a scan is not
    proven dead by that scan's absence (unknown, with why); a newer scan finds it alive
    at its namespace's pid level; once it is gone, a newer scan proves it dead."""
    out = in_namespace_host(FRESHNESS % HOLD)
    assert out["old_scope"]["complete"], out
    older = out["older_scan"]
    assert older["state"] == "unknown", older
    assert any("older than the record" in e for e in older["evidence"]), older
    assert any("would be missed" in e for e in older["evidence"]), older
    newer = out["newer_scan"]
    assert newer["state"] == "alive", newer
    assert "mapped read-write" in newer["evidence"][-1], newer
    assert newer["process"]["nspid"][-1] == 1, newer
    dead = out["after_death"]
    assert dead["state"] == "dead" and "scan complete" in dead["evidence"][-1], dead
    assert any("the record says 12345" in e for e in dead["evidence"]), dead
    assert not any(" old" in e for e in dead["evidence"]), dead


HIDDEN = textwrap.dedent("""
    import subprocess
    # this host's /proc hides other users' processes (hidepid=2): uid 65534 can still
    # learn from kill() that pid 1 (root, this code) exists, but cannot read its stat
    subprocess.run(["mount", "-o", "remount,hidepid=2", "/proc"], check=True)
    code = %r + '''
    import json
    v = liveness.judge(1, block=kernel.BlockId(0, 1, 0, "shm", "/dev/shm/none"))
    print(json.dumps(v.to_dict()))
    '''
    def drop():
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    r = subprocess.run([%r, "-c", code], preexec_fn=drop, cwd="/", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, check=False)
    print(json.dumps({"rc": r.returncode, "out": r.stdout.decode(), "err": r.stderr.decode()}))
""")


@pytest.mark.skipif(not ROOT or not shutil.which("unshare"), reason="needs root, unshare")
def test_a_process_whose_stat_is_unreadable_is_unknown_never_dead():
    """kill(pid, 0) says it exists (EPERM) but /proc/PID/stat cannot be read (hidepid):
    nothing proves it gone."""
    exe = _unprivileged_python()
    if exe is None:
        pytest.skip("needs a python runnable by uid 65534")
    got = in_namespace_host(HIDDEN % (SHIM, exe))
    assert got["rc"] == 0, got
    v = json.loads(got["out"].strip().splitlines()[-1])
    assert v["state"] == "unknown", v
    assert any("EPERM" in e for e in v["evidence"]), v
    assert "/proc/1/stat unreadable" in v["evidence"][-1], v
