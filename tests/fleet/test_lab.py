"""The fleet lab: 3 namespace hosts with real sshd, reached by real ansible over ssh.

Brings up a lab, pings every host with ansible, leaves a stuck writer in lab-01 with the
fault injector (a real producer SIGKILLed mid-write), reads the bytes back from inside
lab-01, checks that lab-02 and the real /dev/shm do not see the block, and tears the
lab down checking that no process it started survives. Needs root, util-linux
(unshare, nsenter) and openssh-server; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
FLEETLAB = REPO / "lab" / "fleetlab.py"
ANSIBLE = Path(sys.executable).parent / "ansible"
HOSTS = ("lab-01", "lab-02", "lab-03")


sys.path.insert(0, str(FLEETLAB.parent))
import fleetlab  # noqa: E402

_MISSING = fleetlab.missing_prerequisites() or (
    None if ANSIBLE.exists() or shutil.which("ansible") else "ansible not installed")
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)


def _ansible(lab_dir, *args, timeout=90):
    env = dict(os.environ, ANSIBLE_CONFIG=str(lab_dir / "ansible.cfg"),
               ANSIBLE_DEPRECATION_WARNINGS="False")
    exe = str(ANSIBLE) if ANSIBLE.exists() else shutil.which("ansible")
    return subprocess.run([exe, "all", "-i", str(lab_dir / "inventory.ini")] + list(args),
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _lab_exec(lab_dir, host, *argv, timeout=30):
    return subprocess.run([sys.executable, str(FLEETLAB), "exec", "--dir", str(lab_dir), host,
                           "--"] + list(argv), capture_output=True, text=True, timeout=timeout,
                          check=False)


def _processes_mentioning(text):
    found = []
    for pid in fleetlab._all_pids():
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and pid != os.getpid():
            found.append((pid, cmd))
    return found


@pytest.fixture(scope="module")
def lab():
    # a short path: ssh control sockets live under it (108-byte sun_path limit)
    lab_dir = Path(tempfile.mkdtemp(prefix="fleetlab-", dir="/tmp"))
    state = fleetlab.up(lab_dir, len(HOSTS), 0)
    yield {"dir": lab_dir, "state": state}
    if (lab_dir / fleetlab.STATE_FILE).exists():
        fleetlab.down(lab_dir)
    shutil.rmtree(lab_dir, ignore_errors=True)


def test_up_is_fast_and_files_exist(lab):
    state, lab_dir = lab["state"], lab["dir"]
    assert state["seconds"] < 10
    assert [h["name"] for h in state["hosts"]] == list(HOSTS)
    inventory = (lab_dir / "inventory.ini").read_text()
    assert "[lab]" in inventory and "ansible_python_interpreter=%s" % state["python"] in inventory
    assert "pipelining = True" in (lab_dir / "ansible.cfg").read_text()
    assert (lab_dir / "collections/ansible_collections/pylabhub/recovery").resolve() == REPO


def test_ansible_pings_every_host_over_ssh(lab):
    res = _ansible(lab["dir"], "-m", "ansible.builtin.ping")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sum(res.stdout.count("%s | SUCCESS" % h) for h in HOSTS) == len(HOSTS), res.stdout
    res = _ansible(lab["dir"], "-m", "ansible.builtin.shell", "-a", "hostname")
    assert res.returncode == 0, res.stdout + res.stderr
    for h in HOSTS:   # each host answers with its own UTS hostname
        assert "%s | CHANGED | rc=0 >>\n%s\n" % (h, h) in res.stdout, res.stdout


READ_SLOT = textwrap.dedent("""
    import json, os, socket
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _layout as L
    from ansible_collections.pylabhub.recovery.plugins.module_utils._block import open_block
    from ansible_collections.pylabhub.recovery.plugins.module_utils._liveness import judge
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _kernel as K
    writer = E.diagnose("stuck_writer_block", slot=%d)["slots"][0]["writer"]
    with open_block("stuck_writer_block") as b:
        scope = K.HostScan.take().scope(K.BlockId.of(b)).to_dict()
        base = b.slot_base(%d)
        pid = b.get(L.SLOT["write_lock"], base)
        try:
            os.kill(pid, 0)
            exists = True
        except ProcessLookupError:
            exists = False
        print(json.dumps({"host": socket.gethostname(),
                          "state": L.enum_name(L.SlotState, b.get(L.SLOT["slot_state"], base)),
                          "lock": pid, "exists": exists, "verdict": judge(pid).state,
                          "engine": writer, "scope": scope,
                          "shm": sorted(os.listdir("/dev/shm"))}))
""")


def test_stuck_writer_injected_inside_one_host_only(lab):
    lab_dir = lab["dir"]
    report = fleetlab.inject(lab_dir, "lab-01", "stuck_writer")
    assert report["hostname"] == "lab-01" and report["block"] == "stuck_writer_block"
    slot = report["slot"]
    res = _lab_exec(lab_dir, "lab-01", "python", "-c", READ_SLOT % (slot, slot))
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    assert seen["host"] == "lab-01"
    assert seen["state"] == "WRITING"
    assert seen["lock"] == report["processes"][0]["pid"] and seen["lock"] > 0
    assert not seen["exists"] and seen["verdict"] == "dead"
    # the kernel proves the writer gone (nobody else has the block open at all), and a
    # lab host is a complete scope for its private /dev/shm (the scan could prove it too)
    engine = seen["engine"]
    assert engine["state"] == "dead", engine
    assert any("exclusive lease" in e for e in engine["evidence"]), engine
    assert seen["scope"]["name"] == "namespace" and seen["scope"]["complete"], seen
    assert seen["shm"] == ["stuck_writer_block"]
    # isolation: another host's /dev/shm and the real one do not have it
    res = _lab_exec(lab_dir, "lab-02", "ls", "-A", "/dev/shm")
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr
    assert not os.path.exists("/dev/shm/stuck_writer_block")


def test_down_leaves_no_lab_process(lab):
    lab_dir = lab["dir"]
    # a scenario that leaves a live process (a writer waiting in DRAINING) behind
    report = fleetlab.inject(lab_dir, "lab-03", "stuck_readers")
    waiting = [p for p in report["processes"] if p["state"] == "alive"]
    assert len(waiting) == 1 and waiting[0]["host_pid"]
    state = fleetlab.Lab(lab_dir).load()
    known = fleetlab._known_pids(state)
    assert all(fleetlab.alive(p, s) for p, s in known)
    fleetlab.down(lab_dir)
    assert not lab_dir.exists()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
            any(fleetlab.alive(p, s) for p, s in known) or _processes_mentioning(str(lab_dir))):
        time.sleep(0.05)
    assert not [p for p, s in known if fleetlab.alive(p, s)]
    assert not _processes_mentioning(str(lab_dir))
    assert all(fleetlab.port_free(h["port"]) for h in state["hosts"])
