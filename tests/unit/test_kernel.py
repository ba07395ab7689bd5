"""The kernel scan (_kernel): who has which block mapped or open, whether the scan is
complete for a block (scope), recovery processes, and the Scene interface built on it
(openers, trusted evidence). Real processes, real namespaces (unshare), real users."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _kernel as K, _layout as L, _liveness as liveness,
    _observe as O, _plan as P, _procinfo as procinfo, _registry as G, _runtime as R)
from ansible_collections.pylabhub.recovery.tests.support import fd_only, in_namespace_host

_COUNTER = itertools.count(1)
BLOCK_GEOMETRY = (4, 4096)        # of the block_name fixture (tests/conftest.py)
ROOT = os.geteuid() == 0
MU_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "plugins",
                      "module_utils")
# loads the core from its folder: the uid 65534 helper cannot read root's temp dirs
SHIM = textwrap.dedent("""
    import importlib, sys, types
    _pkg = types.ModuleType("_plh_mu"); _pkg.__path__ = [%r]; sys.modules["_plh_mu"] = _pkg
    K = importlib.import_module("_plh_mu._kernel")
""" % os.path.realpath(MU_DIR))
needs_unshare = pytest.mark.skipif(not ROOT or not shutil.which("unshare"),
                                   reason="needs root and unshare(1)")


@pytest.fixture
def name(block_name):
    return block_name


def ident(name):
    with R.attach(name, writable=False) as b:
        return K.BlockId.of(b)


# ------------------------------------------------------------------ the scan itself

def test_scan_indexes_mappings_and_fds_by_device_and_inode(name, actors):
    bid = ident(name)
    rw = actors(name, [("producer",)])
    rw.wait_point()
    ro_code = ("import os, sys, mmap, time; fd = os.open('/dev/shm/' + sys.argv[1], os.O_RDONLY);"
               " m = mmap.mmap(fd, 4096, prot=mmap.PROT_READ); os.close(fd);"
               " print('ready', flush=True); time.sleep(60)")
    ro = subprocess.Popen([sys.executable, "-c", ro_code, name], stdout=subprocess.PIPE)
    fdp, fd = fd_only("/dev/shm/" + name)
    try:
        assert ro.stdout.readline() == b"ready\n"
        scan = K.HostScan.take()
        holds = {p.pid: h for p, h in scan.holders(bid.key)}
        assert holds[rw.pid].rw and not holds[rw.pid].ro
        assert holds[ro.pid].ro and not holds[ro.pid].rw     # (mmap keeps a dup'ed fd)
        assert holds[fdp.pid] == K.Hold(fds=(fd,)) and not holds[fdp.pid].mapped
        assert [p.pid for p, h in scan.holders(bid.key)] == sorted(holds)
        proc = scan.procs[rw.pid]
        assert proc.nspid == (rw.pid,) and proc.start_ticks == rw.start_ticks
        assert proc.comm == "python" or proc.comm.startswith("python")
        assert proc.pidns == procinfo.pid_namespace() and proc.recovery_uid is None
        # only the holders of the block asked about were identified (status read)
        assert set(scan.procs) == set(scan.holds[bid.key])
        assert all(k[0] in scan.devices for k in scan.holds
                   if any(h.mapped for h in scan.holds[k].values()))
        assert scan.with_pid(bid.key, rw.pid) == [(proc, holds[rw.pid])]
        assert scan.with_pid(bid.key, 2 ** 22 + 5) == []
    finally:
        for p in (ro, fdp):
            p.kill()
            p.wait()


def test_own_engine_mapping_is_left_out_other_own_mappings_are_not(name):
    bid = ident(name)
    with R.attach(name, writable=False) as engine:
        with K.engine_mapping(engine):
            assert os.getpid() not in {p.pid for p, h in K.HostScan.take().holders(bid.key)}
            assert not K.process_hold(os.getpid(), bid.key)
            with R.attach(name) as runtime:         # this process as a producer would
                held = dict((p.pid, h) for p, h in K.HostScan.take().holders(bid.key))
                assert held[os.getpid()].rw and not held[os.getpid()].ro   # engine's ro gone
                assert K.process_hold(os.getpid(), bid.key).rw
                del runtime
        # the mark is lifted with the context: now it is this process's mapping again
        assert os.getpid() in {p.pid for p, h in K.HostScan.take().holders(bid.key)}


def test_anonymous_shared_memory_is_not_indexed_as_a_block():
    """SysV and MAP_SHARED|MAP_ANONYMOUS memory live on the memfd filesystem too; they
    are never blocks, so the walk does not index them (nor read their owners' status)."""
    import mmap
    anon = mmap.mmap(-1, 8192)                     # shared anonymous: "/dev/zero (deleted)"
    try:
        anon[0] = 1
        lines = [line.split() for line in open("/proc/self/maps")
                 if line.split()[1].endswith("s") and "/dev/zero" in line]
        assert lines, "no shared anonymous mapping seen"
        ino = int(lines[0][4])
        scan = K.HostScan.take()
        assert scan.memfd_dev is not None and scan.memfd_dev in scan.devices
        assert (scan.memfd_dev, ino) not in scan.holds
    finally:
        anon.close()


def test_memfd_blocks_are_indexed(actors):
    fd = os.memfd_create("plh_shm_capability")
    try:
        data = bytes(16384)
        os.ftruncate(fd, len(data))
        st = os.fstat(fd)
        scan = K.HostScan.take()
        assert st.st_dev in scan.devices
        import mmap
        m = mmap.mmap(fd, 4096)
        try:
            scan = K.HostScan.take()
            (proc, hold), = scan.holders((st.st_dev, st.st_ino))
            assert proc.pid == os.getpid() and hold.rw and fd in hold.fds
        finally:
            m.close()
    finally:
        os.close(fd)


def test_unreadable_processes_are_counted_and_make_the_scope_partial(name):
    """As uid 65534 every other user's process is unreadable: never "not a holder"."""
    if not ROOT:
        pytest.skip("needs root to run a helper as uid 65534")
    code = SHIM + textwrap.dedent("""
        import json, os, sys
        scan = K.HostScan.take()
        b = K.BlockId(%d, %d, 0, "shm", "/dev/shm/x")
        print(json.dumps({"uid": os.getuid(), "unreadable": scan.unreadable,
                          "scope": scan.scope(b).to_dict()}))
    """)
    bid = ident(name)
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code % (bid.dev, bid.ino)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["uid"] == 65534
    assert os.getpid() in out["unreadable"]                # root's pytest: unreadable
    assert out["scope"]["name"] == "partial" and not out["scope"]["complete"]
    assert out["scope"]["reason"].startswith("not root: %d processes unreadable"
                                             % len(out["unreadable"])), out


def test_host_scope_in_the_initial_namespace_as_root(name):
    """Root in the initial PID namespace: complete ("host") when every process is
    readable. A process root cannot read (here: a VM agent that refuses ptrace access)
    makes it partial, naming that process -- never silently complete."""
    if not ROOT:
        pytest.skip("needs root")
    scan = K.HostScan.take()
    assert scan.init_pidns and scan.proc_is_ours and scan.can_ptrace
    scope = scan.scope(ident(name))
    if not scan.unreadable:
        assert (scope.name, scope.complete) == ("host", True), scope
        assert scope.reason == "initial PID namespace, every process readable"
        return
    assert scope.name == "partial" and not scope.complete
    for pid in scan.unreadable[:5]:
        assert "pid %d" % pid in scope.reason.replace(", ", " pid ").replace("(", "")
        with pytest.raises(PermissionError):
            os.open("/proc/%d/maps" % pid, os.O_RDONLY)


# ------------------------------------------------------------------ namespace hosts

NS_CODE = textwrap.dedent("""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _actors as A, _engine as E, _kernel as K, _liveness as V, _runtime as R)
    name = NAME
    b = R.create(name, capacity=2)
    bid = K.BlockId.of(b)
    b.close()
    scope = K.HostScan.take().scope(bid).to_dict()
    fd = os.memfd_create("plh_shm_capability"); os.ftruncate(fd, 4096)
    st = os.fstat(fd)
    memfd = K.HostScan.take().scope(K.BlockId(st.st_dev, st.st_ino, 0, "memfd", "m")).to_dict()
    out = {"scope": scope, "memfd": memfd}
    if WITH_HOLDERS:
        # a writer locks slot 1 and is killed; a process that reuses its pid (the same
        # start tick is written into the evidence, a fresh heartbeat too) but has never
        # mapped the block: in a complete scope that is dead, records or not. A live
        # bystander consumer keeps the block open, so the scan (not the exclusive lease)
        # has to decide.
        keep = A.Actor(name, [("consumer", "bystander")]).start()
        keep.wait_point()
        w = A.Actor(name, [("producer",), ("acquire",)], pause="writing").start()
        w.wait_point()
        slot = w.reports[-1]["slot"]
        victim = w.pid
        w.kill()
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(victim - 1))
        twin = os.fork()
        if twin == 0:
            time.sleep(60)
            os._exit(0)
        with open("/proc/%d/stat" % twin) as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        b = R.attach(name)
        base = b.geo.slot_entry(slot)
        b.set(R.SLOT["ev_writer_start"], ticks, base)
        b.set(R.SLOT["ev_locked_ns"], time.monotonic_ns(), base)
        b.set("producer_heartbeat_ns", time.monotonic_ns())
        b.close()
        diag = E.diagnose(name, slot=slot)
        out.update(twin=twin, victim=victim, writer=diag["slots"][0]["writer"],
                   producer=diag["producer"]["verdict"])
        heal = E.heal(name)
        out["healed_slot"] = [o for o in heal["outcomes"] if o.get("slot") == slot]
        out["bystander"] = [c["verdict"]["state"] for c in E.diagnose(name)["consumers"]]
        os.kill(twin, 9)
        keep.kill()
    os.unlink("/dev/shm/" + name)
    print(json.dumps(out))
""")


def ns_code(with_holders):
    return "WITH_HOLDERS = %r\nNAME = 'plhkern_ns_%d_%d'\n%s" % (
        with_holders, os.getpid(), next(_COUNTER), NS_CODE)


@needs_unshare
def test_namespace_host_is_complete_and_proves_a_reused_pid_dead():
    out = in_namespace_host(ns_code(True))
    assert out["scope"]["name"] == "namespace" and out["scope"]["complete"], out["scope"]
    assert out["memfd"]["name"] == "partial" and "memfd" in out["memfd"]["reason"]
    assert out["twin"] == out["victim"], out            # the pid really was reused
    w = out["writer"]
    assert w["state"] == "dead" and w["scope"]["name"] == "namespace", w
    assert any("no process that has this block mapped or open has pid %d" % out["victim"]
               in e and "scan complete" in e for e in w["evidence"]), w
    assert any("as recorded" in e for e in w["evidence"]), w   # the ticks DID match
    assert out["producer"]["state"] == "dead", out["producer"]
    (released,) = out["healed_slot"]
    assert released["result"] == "SUCCESS", released
    assert out["bystander"] == ["alive"]


@needs_unshare
def test_nested_namespace_with_an_inherited_dev_shm_is_partial():
    out = in_namespace_host(ns_code(False), private_shm=False)
    assert out["scope"]["name"] == "partial" and not out["scope"]["complete"]
    assert "mounted before this PID namespace began" in out["scope"]["reason"], out


@needs_unshare
def test_nested_namespace_with_a_shared_dev_shm_is_partial():
    code = ("import subprocess\nsubprocess.check_call(['mount', '--make-shared', '/dev/shm'])\n"
            + ns_code(False))
    out = in_namespace_host(code)
    assert out["scope"]["name"] == "partial", out
    assert "/dev/shm is shared:" in out["scope"]["reason"], out


# ------------------------------------------------------------------ Scans: freshness

def test_scans_judge_absence_only_with_a_scan_younger_than_the_record(name, actors):
    """A holder that attaches after a scan must not be judged by it: the verdict takes a
    new one. (A holder in a nested PID namespace: not visible by its pid out here.)"""
    if not ROOT or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1)")
    bid = ident(name)
    scans = K.Scans()
    old = scans.latest()
    assert scans.taken == 1 and scans.latest() is old and scans.current is old
    w = actors(name, [("producer",), ("acquire",)], pause="writing",
               wrap=["unshare", "--pid", "--fork", "--kill-child"])
    w.wait_point()
    assert w.ns_pid == 1 and w.pid != 1
    observed = time.monotonic_ns()          # "the word naming pid 1 was read now"
    assert not old.with_pid(bid.key, 1)
    v = liveness.judge(1, block=bid, scans=scans, observed_ns=observed)
    assert v.state == liveness.ALIVE and v.process["nspid"] == [w.pid, 1], v
    assert scans.taken == 2 and scans.current.started_ns > observed
    # and first_seen keeps the first time a word was read with its value
    assert scans.first_seen(("w",), 5, 100) == 100
    assert scans.first_seen(("w",), 5, 200) == 100
    assert scans.first_seen(("w",), 6, 300) == 300
    assert scans.after(50) is scans.current and scans.taken == 2
    assert scans.after(time.monotonic_ns()) is not old and scans.taken == 3


# ------------------------------------------------------------------ recovery processes

def test_registration_file_is_created_safely_and_removed(tmp_path):
    reg = tmp_path / "registry"
    assert not G.sound_directory(str(reg))
    reg.mkdir(mode=0o777)
    os.chmod(str(reg), 0o777)                           # world writable, no sticky bit
    with G.registration(str(reg)) as path:
        assert path is None                             # refused: not a sound directory
    os.chmod(str(reg), 0o1777)
    if not ROOT:
        pytest.skip("the registry must be root's")
    with G.registration(str(reg)) as path:
        assert path == str(reg / str(os.getpid()))
        assert int(open(path).read()) == procinfo.own_start_ticks()
        with G.registration(str(reg)) as inner:         # nested: the same entry
            assert inner == path
        assert os.path.exists(path)
        assert G.registrations(str(reg)) == {os.getpid(): (0, procinfo.own_start_ticks())}
    assert not os.path.exists(path)
    os.symlink("/etc/passwd", str(reg / str(os.getpid())))  # planted: replaced, never followed
    with G.registration(str(reg)) as path:
        assert os.path.isfile(path) and not os.path.islink(path)
    assert open("/etc/passwd").read().startswith("root:")


def _a_gone_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_entries_of_killed_recovery_runs_are_pruned_and_never_read_in_bulk(tmp_path):
    """A recovery run SIGKILLed mid-way leaves its entry. Thousands of them once made every
    engine call read thousands of files (a fuzz run went past its time limit): the next
    registration removes entries whose process is gone, and the engine asks per pid."""
    if not ROOT:
        pytest.skip("the registry must be root's")
    reg = tmp_path / "registry"
    reg.mkdir()
    os.chmod(str(reg), 0o1777)
    gone = _a_gone_pid()
    (reg / str(gone)).write_text("12345\n")             # left by a killed run
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        ticks = procinfo.process_stat(sleeper.pid).start_ticks
        (reg / str(sleeper.pid)).write_text("%d\n" % ticks)  # a live run: kept
        with G.registration(str(reg)) as path:
            assert path is not None
            left = sorted([str(sleeper.pid), str(os.getpid())])
            assert sorted(os.listdir(str(reg))) == left
            lazy = G.Registry(str(reg))
            assert lazy.get(sleeper.pid) == (0, ticks)
            assert lazy.get(gone) is None
            assert lazy.get(os.getpid()) == G.registrations(str(reg))[os.getpid()]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert G.prune(str(reg)) == 1 and os.listdir(str(reg)) == []   # the sleeper is gone too


HEAL_PAUSED = textwrap.dedent("""
    import os, signal, sys
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
    print("go", flush=True)
    # a real heal, stopped by its own validate progress callback: the block is mapped
    # read-write and the run is registered as a recovery process
    E.heal(sys.argv[1], progress=lambda done, total: os.kill(os.getpid(), signal.SIGSTOP))
""")


def test_a_registered_recovery_run_is_not_an_opener_an_unregistered_process_is(name, actors):
    if not ROOT:
        pytest.skip("registration needs the root-owned /run/pylabhub-recovery")
    producer = actors(name, [("producer",), ("publish", 1)])
    producer.wait_point()
    heal = subprocess.Popen([sys.executable, "-c", HEAL_PAUSED, name], stdout=subprocess.PIPE)
    try:
        assert heal.stdout.readline() == b"go\n"
        deadline = time.monotonic() + 20
        while procinfo.process_state(heal.pid) not in ("T", "t"):
            assert time.monotonic() < deadline and heal.poll() is None, "heal never paused"
            time.sleep(0.005)
        assert os.path.exists(os.path.join(G.REGISTRY_DIR, str(heal.pid)))
        with R.attach(name, writable=False) as b:
            scene = O.Scene(P.Plan(b, True))
            openers = {o.pid for o in scene.openers()}
            holders = {p.pid: p for p, h in scene.scan.holders(scene.id.key)}
        assert heal.pid in holders and holders[heal.pid].recovery_for(0)   # rw, registered
        assert heal.pid not in openers and producer.pid in openers
        # a registration by someone else than root or the block's owner does not count
        assert not K.Proc(1, (1,), "S", 0, 0, "x", recovery_uid=1000).recovery_for(0)
    finally:
        heal.kill()
        heal.wait()
        # a SIGKILLed run leaves its entry; it never matches a live process again (pid +
        # start ticks) and the next run with that pid replaces it
        stale = os.path.join(G.REGISTRY_DIR, str(heal.pid))
        if os.path.exists(stale):
            os.unlink(stale)


# ------------------------------------------------------------------ Scene interface

def test_openers_and_trusted_evidence(name, actors):
    bid = ident(name)
    prod = actors(name, [("producer",), ("publish", 2)])
    prod.wait_point()
    cons = actors(name, [("consumer", "c1"), ("read", 1)])
    cons.wait_point()
    cpp = actors(name, [("consumer", "cpp")], style="cpp")
    cpp.wait_point()
    with R.attach(name, writable=False) as b, K.engine_mapping(b):
        scene = O.Scene(P.Plan(b, True))
        openers = {o.pid: o for o in scene.openers()}
        assert set(openers) == {prod.pid, cons.pid, cpp.pid}
        c = openers[cons.pid]
        assert c.consumers == (cons.reports[-1]["consumer"],) and c.consumer is not None
        assert c.start_ticks == cons.start_ticks and c.nspid == (cons.pid,) and c.state == "S"
        assert openers[cpp.pid].consumers
        assert openers[prod.pid].consumers == ()
        views = {v.pid: v for v in scene.consumers}
        assert views[cons.pid].trusted is not None and views[cons.pid].reading == 1
        assert views[cons.pid].evidence.reading == 1 + 1                   # slot 1, as recorded
        assert views[cpp.pid].trusted is None and not views[cpp.pid].has_evidence
        # the trust rule: any mismatch and the evidence counts as absent
        ev = views[cons.pid].evidence
        for bad in (O.Evidence(ev.pid, ev.start + 1, ev.pidns),     # another incarnation
                    O.Evidence(ev.pid, ev.start, ev.pidns + 1),     # another PID namespace
                    O.Evidence(ev.pid + 1, ev.start, ev.pidns),     # another pid
                    O.Evidence(ev.pid, 0, ev.pidns)):               # nothing recorded
            assert scene.trusted(ev.pid, bad) is None, bad
        assert scene.trusted(ev.pid, ev).pid == cons.pid
    assert scene.scope.name in ("host", "partial") and scene.scan is scene.scans.current


def test_stale_consumer_evidence_of_an_earlier_process_is_not_trusted(name, actors):
    """Evidence left by an earlier consumer with the same entry must not tell where a
    live consumer is NOT reading: untrusted evidence is treated as absent."""
    prod = actors(name, [("producer",), ("publish", 2)])
    prod.wait_point()
    live = actors(name, [("consumer", "live"), ("read", 0)], style="cpp")
    live.wait_point()
    k = live.reports[-1]["consumer"]
    # a consumer of ours recorded "reading slot 0" and was killed before counting itself
    # in: its dead entry is attributed one reader of slot 0, which holds only the live one
    dead = actors(name, [("consumer", "dead"), ("read", 0)], pause="reading-recorded")
    dead.wait_point()
    dead.kill()
    with R.attach(name) as b:        # plant our evidence for that pid: another incarnation
        ev = L.consumer_evidence(k)
        b.set(L.CONSUMER_EVIDENCE["reading"], 0, ev)          # "reads nothing"
        b.set(L.CONSUMER_EVIDENCE["start"], live.start_ticks - 7, ev)
        b.set(L.CONSUMER_EVIDENCE["pidns"], procinfo.pid_namespace(), ev)
        b.set(L.CONSUMER_EVIDENCE["pid"], live.pid, ev)
    with R.attach(name, writable=False) as b, K.engine_mapping(b):
        scene = O.Scene(P.Plan(b, True))
        (view,) = [c for c in scene.consumers if c.pid == live.pid]
        assert view.evidence is not None and view.trusted is None
        assert not view.has_evidence and view.reading is None     # may be in any slot
        slot0 = scene.slot(0)
        assert slot0.reader_count == 1 and slot0.live_possible >= 1
        assert slot0.releasable_readers == 0
    out = E.recover(name, 0, "release_readers")
    assert out["result"] == "UNSAFE" and not out["changed"], out


@pytest.mark.skipif(not ROOT or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_evidence_of_a_process_in_another_time_namespace_is_not_trusted(name, actors):
    """Its start tick even matches ours (no boottime offset), yet a process in another
    time namespace writes stamps we cannot compare: its evidence is not trusted."""
    prod = actors(name, [("producer",), ("publish", 1)])
    prod.wait_point()
    shifted = actors(name, [("consumer", "t")],
                     wrap=["unshare", "--time", "--monotonic", "500", "--fork", "--kill-child"])
    shifted.wait_point()
    with R.attach(name, writable=False) as b, K.engine_mapping(b):
        scene = O.Scene(P.Plan(b, True))
        (view,) = [c for c in scene.consumers if c.pid == shifted.pid]
        assert view.verdict.state == "alive"
        assert view.evidence.start == shifted.start_ticks            # the ticks agree ...
        assert view.trusted is None and not view.has_evidence        # ... still distrusted


KEEP_OPEN = ("import os, sys, time; fds = [os.open('/dev/shm/' + n, os.O_RDONLY) "
             "for n in sys.argv[1:]]; print('ready', flush=True); time.sleep(60)")


def test_each_block_takes_one_scan_for_every_block(monkeypatch):
    """Every block's holder words are read before the one scan of each_block, so dead
    holders in many blocks are proven dead by that single scan."""
    prefix = "plhkern1_%d_" % os.getpid()
    names = [prefix + str(i) for i in range(3)]
    taken = []
    real = K.HostScan.take

    def counted(*args, **kw):
        scan = real(*args, **kw)
        taken.append(scan)
        return scan
    monkeypatch.setattr(K.HostScan, "take", counted)
    try:
        gone = os.fork()
        if gone == 0:
            os._exit(0)
        os.waitpid(gone, 0)                       # a pid no process has now (reaped)
        for n in names:
            with R.create(n, capacity=2) as b:
                base = b.geo.slot_entry(1)
                b.set(L.SLOT["write_lock"], gone, base)            # a writer that is gone
                b.set(L.SLOT["slot_state"], L.SlotState.WRITING, base)
                b.set("producer_heartbeat_pid", 0)
        # a live process keeps every block open: no exclusive lease, the scan decides
        keeper = subprocess.Popen([sys.executable, "-c", KEEP_OPEN] + names,
                                  stdout=subprocess.PIPE)
        assert keeper.stdout.readline() == b"ready\n"
        try:
            out = E.each_block("heal", prefix + "*")
        finally:
            keeper.kill()
            keeper.wait()
        assert [e["address"] for e in out["blocks"]] == names
        for e in out["blocks"]:
            (o,) = [o for o in e["result"]["outcomes"] if o["slot"] == 1]
            assert o["result"] == "SUCCESS" and o["holder"]["state"] == "dead", o
        assert len(taken) == 1, len(taken)
    finally:
        for n in names:
            os.unlink("/dev/shm/" + n)


def test_an_fd_table_root_may_list_but_not_read_counts_as_unreadable():
    """A process whose fd links cannot be read (ptrace refused) is unreadable, never
    "holds nothing": found here only where such a process exists (a VM agent as pid 1)."""
    if not ROOT:
        pytest.skip("needs root")
    for pid in K.HostScan.take().unreadable:
        try:
            names = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        if names:
            with pytest.raises(PermissionError):
                K._candidate_fds("/proc", pid, (), set())
            return
    pytest.skip("no process here whose fd table is listable but unreadable")


# ------------------------------------------------------------------ exclusive lease

def test_exclusive_lease_sees_every_opener(name, actors):
    with R.attach(name, writable=False) as b:
        bid = K.BlockId.of(b)
        assert K.exclusive(bid) is True                       # only the engine's file
        with R.attach(name, writable=False):                  # another file of ours
            assert K.exclusive(bid) is False
        a = actors(name, [("consumer", "c")])                 # another process
        a.wait_point()
        assert K.exclusive(bid) is False
        a.kill()
        assert K.exclusive(bid) is True
    fd = os.memfd_create("plh_shm_capability")
    try:
        st = os.fstat(fd)
        assert K.exclusive(K.BlockId(st.st_dev, st.st_ino, 0, "memfd", "m", fd)) is None
    finally:
        os.close(fd)
    assert K.exclusive(K.BlockId(bid.dev, bid.ino, 0, "shm", bid.path)) is None   # no fd


#: The engine takes the lease and is paused (1 s) before it lets go, as a scheduler may
#: pause it; prints "leased" then, and the answer at the end.
_PAUSED_IN_LEASE = textwrap.dedent("""
    import fcntl, os, sys, time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _kernel as K
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
    real = fcntl.fcntl
    def paused(fd, cmd, arg=0):
        got = real(fd, cmd, arg)
        if cmd == fcntl.F_SETLEASE and arg == fcntl.F_WRLCK:
            sys.stdout.write("leased\\n"); sys.stdout.flush()
            time.sleep(1.0)
        return got
    fcntl.fcntl = paused
    with R.attach(sys.argv[1], writable=False) as b:
        print(K.exclusive(K.BlockId.of(b)))
""")


def test_a_process_opening_the_block_during_the_lease_does_not_kill_the_engine(name):
    """Opening a leased file breaks the lease with a signal to its holder: SIGIO unless
    the holder chose another, and SIGIO's default action ends the process. The engine
    chooses SIGURG (ignored by default): a process opening the block while the engine
    holds the lease waits for it, and the engine goes on."""
    child = subprocess.Popen([sys.executable, "-c", _PAUSED_IN_LEASE, name],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "leased\n"
        t0 = time.monotonic()
        fd = os.open("/dev/shm/" + name, os.O_RDONLY)     # breaks the lease
        os.close(fd)
        waited = time.monotonic() - t0
        out = child.stdout.read()
        assert child.wait(timeout=60) == 0 and out == "True\n", (child.returncode, out)
        assert 0.3 < waited < 30, waited           # the open waited for the lease: it was held
    finally:
        child.kill()
        child.wait()


def test_a_block_nobody_has_open_proves_its_holders_dead_without_a_scan(name):
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    with R.attach(name) as b:
        b.set(L.SLOT["write_lock"], gone, b.geo.slot_entry(2))
    with R.attach(name, writable=False) as b, K.engine_mapping(b):
        scans = K.Scans()
        v = liveness.judge(gone, block=K.BlockId.of(b), scans=scans,
                           observed_ns=time.monotonic_ns())
    assert v.is_dead and "exclusive lease" in v.evidence[-1], v
    assert scans.taken == 0 and v.scope is None


@needs_unshare
def test_a_holder_the_kernel_counts_but_this_namespace_cannot_see_is_unknown(name, actors):
    """Recovery inside a container that shares /dev/shm with the host: a live writer out
    here holds slot 0 under a pid that names nobody in there. The per-pid rules would say
    "no such process: dead"; the kernel counts its open file, so it is unknown."""
    w = actors(name, [("producer",), ("acquire",)], pause="writing")
    w.wait_point()
    code = textwrap.dedent("""
        from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
        out = E.recover(%r, 0, "release_writer")
        print(json.dumps(out))
    """ % name)
    out = in_namespace_host(code, private_shm=False)
    assert out["result"] == "UNSAFE" and not out["changed"], out
    holder = out["refused"][0]["holder"]
    assert holder["state"] == "unknown" and holder["pid"] == w.pid, holder
    assert holder["scope"]["name"] == "partial"
    assert any("refused an exclusive lease" in e for e in holder["evidence"]), holder
