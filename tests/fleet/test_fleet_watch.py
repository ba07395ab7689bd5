# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The watch on a 3-host fleet lab (lab/fleetlab.py), through the datablock_watch role
over real ssh: the role writes each host's policy and unit (no systemd in a lab host:
datablock_watch_manage_service=false) and a second run changes nothing; then each host
runs its unit's ExecStart with ``--once`` inside its own namespaces, as systemd would
start it: the host with a writer SIGKILLed holding a slot and the host with dead
consumers are healed, the healthy host is left alone, and a second pass does nothing;
every host's watch lock is its own (/run is private); state absent removes the files."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
FLEETLAB = REPO / "lab" / "fleetlab.py"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
HOSTS = ("lab-01", "lab-02", "lab-03")
FAULTS = (("lab-01", "stuck_writer"), ("lab-02", "dead_consumers"), ("lab-03", "healthy"))

sys.path.insert(0, str(FLEETLAB.parent))
import fleetlab  # noqa: E402

_MISSING = fleetlab.missing_prerequisites() or (
    None if PLAYBOOK.exists() else "ansible-playbook not installed beside %s" % sys.executable)
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def lab():
    lab_dir = Path(tempfile.mkdtemp(prefix="fleetwatch-", dir="/tmp"))  # short: ssh sockets
    fleetlab.up(lab_dir, len(HOSTS), 0)
    try:
        for host, scenario in FAULTS:
            fleetlab.inject(lab_dir, host, scenario)
        for host in HOSTS:
            (lab_dir / "watch" / host / "units").mkdir(parents=True)
        yield lab_dir
    finally:
        if (lab_dir / fleetlab.STATE_FILE).exists():
            fleetlab.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)


def role(lab_dir, state="present"):
    """The role on every host (per-host paths: the lab's hosts share one filesystem)."""
    where = str(lab_dir / "watch") + "/{{ inventory_hostname }}"
    play = [{"hosts": "all", "gather_facts": False, "roles": [{
        "role": "pylabhub.recovery.datablock_watch",
        "vars": {"datablock_watch_state": state, "datablock_watch_manage_service": False,
                 "datablock_watch_delay": 0, "datablock_watch_interval": 5,
                 "datablock_watch_command": "%s -m pylabhub.recovery.cli" % sys.executable,
                 "datablock_watch_policy_path": where + "/watch.json",
                 "datablock_watch_unit_dir": where + "/units",
                 "datablock_watch_state_file": where + "/state.json"}}]}]
    path = lab_dir / "watch" / "play.yml"
    path.write_text(json.dumps(play))
    env = dict(os.environ, ANSIBLE_CONFIG=str(lab_dir / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default")
    proc = subprocess.run([str(PLAYBOOK), "-i", str(lab_dir / "inventory.ini"), str(path)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    changed = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in HOSTS and len(parts) > 3 and parts[1] == ":":
            changed[parts[0]] = int(parts[3].split("=")[1])
    return changed


def service_once(lab_dir, host):
    """The unit's ExecStart, run inside the host with --once --json (its own /run, so
    its own watch lock; its audit log and before-images in the lab directory)."""
    unit = lab_dir / "watch" / host / "units" / "pylabhub-recovery-watch.service"
    line = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")][0]
    argv = shlex.split(line[len("ExecStart="):]) + ["--once", "--json"]
    env = fleetlab._host_env(fleetlab.Lab(lab_dir).load(), host)  # pylint: disable=protected-access
    src = str(REPO / "src")
    env["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + src
    env.update(PYLABHUB_RECOVERY_AUDIT_LOG=str(lab_dir / "watch" / host / "audit.jsonl"),
               PYLABHUB_RECOVERY_SNAPSHOT_DIR=str(lab_dir / "watch" / host / "snaps"),
               PYLABHUB_RECOVERY_SYSLOG="off")
    env.pop("PYLABHUB_RECOVERY_WATCH_LOCK", None)
    res = fleetlab.exec_in(lab_dir, host, argv, env=env, capture_output=True, text=True,
                           timeout=180)
    assert res.returncode == 0, (host, res.stdout, res.stderr)
    return json.loads(res.stdout)


def test_the_role_then_the_service_heals_each_host_once(lab):
    assert role(lab) == {h: 2 for h in HOSTS}         # policy, unit (the directory is there)
    assert role(lab) == {h: 0 for h in HOSTS}
    first = {h: service_once(lab, h) for h in HOSTS}
    assert first["lab-01"]["healed"] == 1 and first["lab-02"]["healed"] == 1, first
    assert first["lab-03"]["healed"] == 0 and first["lab-03"]["stuck"] == 0, first
    for host in ("lab-01", "lab-02"):
        healed = [b for b in first[host]["blocks"] if b["healed"]]
        assert healed[0]["healed"]["changed"] and healed[0]["healed"]["ok"], first[host]
        log = lab / "watch" / host / "audit.jsonl"
        assert [json.loads(x)["operation"] for x in log.read_text().splitlines()] == ["heal"]
    assert not (lab / "watch" / "lab-03" / "audit.jsonl").exists()
    second = {h: service_once(lab, h) for h in HOSTS}
    assert all(d["healed"] == 0 and d["stuck"] == 0 for d in second.values()), second
    assert all(d["pass"] == 2 for d in second.values()), second
    assert role(lab, "absent") == {h: 1 for h in HOSTS}
    for host in HOSTS:
        left = sorted(os.listdir(str(lab / "watch" / host)))
        assert "watch.json" not in left and "state.json" not in left, left
        assert not os.listdir(str(lab / "watch" / host / "units"))
    assert (lab / "watch" / "lab-01" / "audit.jsonl").exists()
