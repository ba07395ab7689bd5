"""Never steal from the living (issue 10: D1, D2, D4): live holders whose RECORDS look
dead -- shifted by a time namespace, left behind by an earlier process with the same pid,
or not written yet -- are refused by every unforced action, because the kernel shows them
holding the block. Real processes (crash actors), real namespaces (unshare), deterministic
PID reuse (ns_last_pid). Each test failed on the liveness rules these replaced."""

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
    _actors as A, _engine as E, _runtime as R)

from .helpers import file_bytes, image

ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(not ROOT or not shutil.which("unshare")
                                or not shutil.which("nsenter"),
                                reason="needs root, unshare(1) and nsenter(1)")
NS = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
PID = 4242                  # the pid every reused-pid scenario hands out twice


@pytest.fixture
def pidns():
    """A PID namespace of our own where actors get chosen pids."""
    ns = A.ActorNamespace(NS)
    yield ns
    ns.close()


def cli(*argv):
    r = subprocess.run([sys.executable, "-m", "pylabhub.recovery"] + list(argv),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def inside(ns, code):
    """Run ``code`` (printing one JSON line) inside ``ns``'s PID and mount namespaces."""
    r = subprocess.run(["nsenter", "-t", str(ns.init_pid), "-p", "-m", sys.executable,
                        "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


RECOVER_INSIDE = textwrap.dedent("""
    import json
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
    out = E.recover(%r, %r, %r)
    print(json.dumps(out))
""")
CLEANUP_INSIDE = textwrap.dedent("""
    import json
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
    print(json.dumps({"cleanup": E.cleanup(%r), "heal": E.heal(%r)}))
""")


def refused_writer(result, pid):
    """The unforced release was refused with the live writer named, nothing written."""
    assert result["result"] == "UNSAFE" and not result["changed"], result
    (refused,) = result["refused"]
    holder = refused["holder"]
    assert holder["state"] == "alive" and holder["pid"] == pid, holder
    assert holder["process"]["holds"] == "mapped read-write", holder
    assert any("has the block mapped read-write" in e for e in holder["evidence"]), holder
    return holder


# ------------------------------------------------------------------ D1: time namespaces

@pytest.mark.parametrize("evidence,shift", [
    (True, ("--boottime", "-100")),          # our evidence: start ticks look "reused"
    (False, ("--monotonic", "500")),         # C++ block: heartbeat "from another boot"
], ids=["evidence-boottime", "cpp-monotonic"])
def test_d1_live_producer_in_a_time_namespace_is_never_released(
        shm_name, actors, evidence, shift):
    R.create(shm_name, capacity=4, evidence=evidence).close()
    w = actors(shm_name, [("producer",), ("publish", 1), ("acquire",)], pause="writing",
               nth=2, style="ours" if evidence else "cpp",
               wrap=["unshare", "--time"] + list(shift) + ["--fork", "--kill-child"])
    at = w.wait_point()
    slot = at["slot"]
    assert slot == 1 and image(shm_name).slot(1)["lock"] == w.pid
    before = file_bytes(shm_name)
    holder = refused_writer(E.recover(shm_name, slot, "release_writer"), w.pid)
    assert holder["process"]["pid"] == w.pid
    if evidence:      # the record is shifted by the time namespace: reported, not believed
        assert any("the record says" in e and "not proof" in e for e in holder["evidence"])
    rc, out, err = cli("recover", shm_name, "--slot", str(slot), "--action",
                       "release_writer", "--json")
    assert rc == 3, (rc, out, err)
    assert "refused" in err and json.loads(out)["refused"][0]["holder"]["state"] == "alive"
    healed = E.heal(shm_name)
    assert not healed["changed"] and not healed["refused"], healed
    assert file_bytes(shm_name) == before
    diag = E.diagnose(shm_name, slot)["slots"][0]
    assert not diag["is_stuck"] and not diag["suspect"], diag


# ------------------------------------------------------------------ D2: PID reuse

def _commit_and_exit(actors, ns, name, pid, commits):
    """Our producer with ``pid`` commits ``commits`` slots (our evidence in each) and exits."""
    p = actors(name, [("producer",), ("publish", commits), ("exit", 0)], namespace=ns,
               pid=pid)
    assert p.wait_exit() == 0
    time.sleep(0.05)          # the next process with this pid starts a few ticks later
    return p


@pytest.mark.parametrize("writer", ["cpp", "ours-before-evidence"])
def test_d2_reused_pid_with_stale_writer_evidence_is_never_released(shm_name, actors,
                                                                    pidns, writer):
    R.create(shm_name, capacity=2).close()
    old = _commit_and_exit(actors, pidns, shm_name, PID, 2)
    img = image(shm_name)
    assert img.slot(0)["ev_pid"] == PID and img.slot(0)["ev_start"] == old.start_ticks
    # a new writer gets the same pid and takes slot 0's lock: C++ style (no evidence), or
    # ours paused between its lock CAS and its evidence
    if writer == "cpp":
        w = actors(shm_name, [("producer",), ("acquire",)], pause="writing", style="cpp",
                   namespace=pidns, pid=PID)
    else:
        w = actors(shm_name, [("producer",), ("acquire",)], pause="locked",
                   namespace=pidns, pid=PID)
    at = w.wait_point()
    assert w.ns_pid == PID and at["slot"] == 0
    img = image(shm_name)
    assert img.slot(0)["lock"] == PID and img.slot(0)["ev_pid"] == PID
    assert img.slot(0)["ev_start"] == old.start_ticks != w.start_ticks   # stale evidence
    before = file_bytes(shm_name)
    # from inside the namespace (where pid 4242 is the number the block records)
    result = inside(pidns, RECOVER_INSIDE % (shm_name, 0, "release_writer"))
    refused_writer(result, PID)
    # and from the host (where the kernel shows NSpid [host pid, 4242])
    holder = refused_writer(E.recover(shm_name, 0, "release_writer"), PID)
    assert holder["process"]["nspid"] == [w.pid, PID]
    assert not E.heal(shm_name)["changed"]
    assert file_bytes(shm_name) == before


def test_d2_consumer_evidence_left_by_a_cpp_unregister_never_clears_a_live_consumer(
        shm_name, actors, pidns):
    R.create(shm_name, capacity=2).close()
    _commit_and_exit(actors, pidns, shm_name, PID + 1, 2)        # some committed data
    old = actors(shm_name, [("consumer", "old"), ("unregister", "cpp"), ("exit", 0)],
                 namespace=pidns, pid=PID)
    assert old.wait_exit() == 0
    time.sleep(0.05)
    img = image(shm_name)
    assert img.consumer(0)["pid"] == 0
    assert img.consumer_evidence(0)["pid"] == PID        # C++ unregister left ours behind
    live = actors(shm_name, [("consumer", "live")], style="cpp", namespace=pidns, pid=PID)
    at = live.wait_point()
    assert at["consumer"] == 0 and image(shm_name).consumer(0)["pid"] == PID
    before = file_bytes(shm_name)
    out = inside(pidns, CLEANUP_INSIDE % (shm_name, shm_name))
    assert out["cleanup"]["cleaned"] == 0 and not out["cleanup"]["changed"], out["cleanup"]
    assert not out["heal"]["changed"], out["heal"]
    verdicts = [c["verdict"] for c in E.diagnose(shm_name)["consumers"]]
    assert [v["state"] for v in verdicts] == ["alive"], verdicts
    assert E.cleanup(shm_name)["cleaned"] == 0
    assert file_bytes(shm_name) == before
    live.resume()                                        # it leaves normally, C++ style
    live.wait_exit()


# ------------------------------------------------------------------ D4: registering

def test_d4_consumer_paused_after_its_pid_cas_is_alive_and_keeps_its_entry(shm_name, actors):
    R.create(shm_name, capacity=2).close()
    prev = actors(shm_name, [("consumer", "previous"), ("unregister",), ("exit", 0)])
    assert prev.wait_exit() == 0
    left = image(shm_name).consumer(0)
    assert left["pid"] == 0 and left["heartbeat_ns"]      # unregister leaves the heartbeat
    time.sleep(0.05)                                      # the next consumer is younger
    new = actors(shm_name, [("consumer", "new"), ("unregister",)], pause="pid-cased")
    at = new.wait_point()
    assert at["consumer"] == 0
    img = image(shm_name)
    assert img.consumer(0)["pid"] == new.pid and img.active_consumers == 0
    assert img.consumer(0)["heartbeat_ns"] == left["heartbeat_ns"]     # the predecessor's
    (c,) = E.diagnose(shm_name)["consumers"]
    assert c["verdict"]["state"] == "alive", c
    assert c["verdict"]["process"]["pid"] == new.pid
    for run in (E.cleanup, E.heal):
        out = run(shm_name)
        assert out.get("cleaned", out.get("cleanup", {}).get("cleaned")) == 0, out
        assert image(shm_name).consumer(0)["pid"] == new.pid          # entry kept
        assert not [ch for ch in out["changes"] if ch["target"].startswith("consumer[")]
    # (active_consumer_count reconciled while it is paused is issue 10's D7, not this)
    new.resume()                      # it finishes registering and unregisters itself
    assert new.wait_point()["event"] == "done"
    assert image(shm_name).consumer(0)["pid"] == 0       # its own unregister CAS won
    new.resume()
    assert new.wait_exit() == 0


CHURN = textwrap.dedent("""
    import json, os, sys, time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _layout as L
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
    b = R.attach(sys.argv[1])
    lost = cycles = 0
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        c = R.Consumer(b, name="churn")
        base = L.consumer_entry(c.index)
        if b.get(L.CONSUMER["consumer_pid"], base) != c.pid:
            lost += 1                  # cleared while registering
        ok, seen = b.cas(L.CONSUMER["consumer_pid"], c.pid, 0, base)
        if not ok:
            lost += 1                  # our own unregister CAS failed: stolen
        else:
            b.add("active_consumer_count", -1)
        cycles += 1
    print(json.dumps({"lost": lost, "cycles": cycles}))
""")


def test_d4_race_cleanup_never_clears_a_registering_consumer(shm_name):
    """A plain race, bounded: consumers register and unregister as fast as they can
    (each predecessor's heartbeat left behind) while cleanup runs in a loop."""
    R.create(shm_name, capacity=2).close()
    seconds = 2.0
    procs = [subprocess.Popen([sys.executable, "-c", CHURN, shm_name, str(seconds)],
                              stdout=subprocess.PIPE) for dummy in range(2)]
    cleanups = 0
    while any(p.poll() is None for p in procs):
        E.cleanup(shm_name)
        cleanups += 1
    outs = [json.loads(p.stdout.read()) for p in procs]
    for p in procs:
        p.stdout.close()
    assert cleanups > 0 and all(o["cycles"] > 0 for o in outs), (cleanups, outs)
    assert [o["lost"] for o in outs] == [0, 0], outs
