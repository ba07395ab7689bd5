# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The datablock_watch role with real ansible-playbook runs on localhost (no systemd
here: datablock_watch_manage_service=false): the policy and the unit it writes, check
mode predicting the change, a second run changing nothing, the unit passing
``systemd-analyze verify``, the unit's own ExecStart run with ``--once`` healing a real
stuck block, and state absent removing unit, policy and state file but not the audit log."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from ansible_collections.pylabhub.recovery.tests.crashed_blocks import CrashedBlocks, unique_name

from ansible_collections.pylabhub.recovery.tests.integration.test_playbooks import (
    INVENTORY, RECAP, _run)

BIN = os.path.dirname(sys.executable)
pytestmark = pytest.mark.slow


def _play(tmp_path, role_vars, *args):
    play = {"hosts": "localhost", "gather_facts": False,
            "roles": [{"role": "pylabhub.recovery.datablock_watch", "vars": role_vars}]}
    (tmp_path / "play.yml").write_text(json.dumps([play]))
    out = _run([os.path.join(BIN, "ansible-playbook"), "-i", "inventory", "play.yml"]
               + list(args), tmp_path)
    recap = {m.group(1): int(m.group(3)) for m in RECAP.finditer(out)}
    return out, recap["localhost"]


def test_role_writes_verifiable_units_idempotently_and_removes_them(tmp_path):
    (tmp_path / "inventory").write_text(INVENTORY)
    name = unique_name("plhwatch")
    units, etc = tmp_path / "units", tmp_path / "etc" / "watch.json"
    units.mkdir()
    command = "%s -m pylabhub.recovery.cli" % sys.executable
    role_vars = {"datablock_watch_manage_service": False, "datablock_watch_blocks": [name],
                 "datablock_watch_interval": 5, "datablock_watch_delay": 0,
                 "datablock_watch_command": command,
                 "datablock_watch_policy_path": str(etc),
                 "datablock_watch_unit_dir": str(units),
                 "datablock_watch_state_file": str(tmp_path / "state" / "w.json")}
    unit = units / "pylabhub-recovery-watch.service"

    out, changed = _play(tmp_path, role_vars, "--check", "--diff")
    assert changed >= 2 and not unit.exists() and not etc.exists(), out
    out, changed = _play(tmp_path, role_vars)
    assert changed == 3, out                      # the directory, the policy, the unit
    out, changed = _play(tmp_path, role_vars)
    assert changed == 0, out
    out, changed = _play(tmp_path, role_vars, "--check", "--diff")
    assert changed == 0, out

    policy = json.loads(etc.read_text())
    assert policy == {"format": "pylabhub.recovery/watch-policy-v1", "blocks": [name],
                      "interval": 5, "delay": 0, "repair": False, "max_bytes": None,
                      "textfile": None, "state_file": str(tmp_path / "state" / "w.json")}
    text = unit.read_text()
    exec_start = [x for x in text.splitlines() if x.startswith("ExecStart=")][0]
    assert exec_start == "ExecStart=%s watch --policy %s" % (command, etc)

    analyze = shutil.which("systemd-analyze")
    if analyze:                                   # Debian 12 has it (package systemd)
        verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True,
                                text=True, timeout=120, check=False)
        assert verify.returncode == 0 and verify.stderr == "", verify

    # the service as systemd would start it, for one pass: it heals a real stuck block
    env = dict(os.environ, PYLABHUB_RECOVERY_AUDIT_LOG=str(tmp_path / "log" / "audit.jsonl"),
               PYLABHUB_RECOVERY_SNAPSHOT_DIR=str(tmp_path / "snaps"),
               PYLABHUB_RECOVERY_WATCH_LOCK=str(tmp_path / "run" / "watch.lock"),
               PYLABHUB_RECOVERY_SYSLOG="off")
    with CrashedBlocks() as lab:
        lab.stuck_writer(name)
        ran = subprocess.run(shlex.split(exec_start[len("ExecStart="):]) + ["--once", "--json"],
                             capture_output=True, text=True, env=env, timeout=120, check=False)
        assert ran.returncode == 0, ran
        doc = json.loads(ran.stdout)
        assert doc["healed"] == 1 and doc["blocks"][0]["healed"]["changed"], doc
    log = tmp_path / "log" / "audit.jsonl"
    assert [json.loads(x)["operation"] for x in log.read_text().splitlines()] == ["heal"]

    gone = dict(role_vars, datablock_watch_state="absent")
    out, changed = _play(tmp_path, gone, "--check")
    assert changed >= 1 and unit.exists(), out
    out, changed = _play(tmp_path, gone)
    assert changed == 1, out                      # one loop task: unit, policy, state file
    assert not unit.exists() and not etc.exists()
    assert not (tmp_path / "state" / "w.json").exists()
    assert log.exists() and os.listdir(str(tmp_path / "snaps")), "audit and snapshots stay"
    out, changed = _play(tmp_path, gone)
    assert changed == 0, out
