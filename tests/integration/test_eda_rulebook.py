# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The example rulebook (extensions/eda/rulebooks/heal_on_stuck.yml) run by a real
ansible-rulebook with the collection's event source: two blocks left stuck by SIGKILLed
writers raise events, and the rule's run_playbook heals them on localhost.

ansible-rulebook needs Java and is not in requirements-dev.txt: the test runs when
``$ANSIBLE_RULEBOOK`` names its executable (or it is on PATH) and is skipped otherwise.
The rulebook is the shipped one with three lines added for the test's safety: the
source's ``match`` and ``host`` (the test's blocks only; the inventory's localhost) and
the heal's ``datablock_recovery_pattern`` (no other block of this machine is touched)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
from ansible_collections.pylabhub.recovery.tests.conftest import REPO_ROOT
from ansible_collections.pylabhub.recovery.tests.crashed_blocks import CrashedBlocks, unique_name

RULEBOOK = os.environ.get("ANSIBLE_RULEBOOK") or shutil.which("ansible-rulebook")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not RULEBOOK, reason="ansible-rulebook not installed (set ANSIBLE_RULEBOOK)")]


def test_the_rulebook_heals_the_host_whose_blocks_are_stuck(tmp_path):
    prefix = unique_name("plheda")
    text = (REPO_ROOT / "extensions" / "eda" / "rulebooks" / "heal_on_stuck.yml").read_text()
    text = text.replace("        interval: 10\n", "        interval: 2\n        match: %s*\n"
                        "        host: localhost\n" % prefix)
    text = text.replace("            heal_fail_when_unhealthy: false\n",
                        "            heal_fail_when_unhealthy: false\n"
                        "            datablock_recovery_pattern: %s*\n" % prefix)
    assert text.count(prefix) == 2
    (tmp_path / "rulebook.yml").write_text(text)
    (tmp_path / "inventory").write_text(
        "localhost ansible_connection=local ansible_python_interpreter=%s\n" % sys.executable)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    admin = bindir / "datablock-admin"
    admin.write_text("#!/bin/sh\nexec %s -m pylabhub.recovery.cli \"$@\"\n" % sys.executable)
    admin.chmod(0o755)
    env = dict(os.environ, PATH=os.pathsep.join([str(bindir), os.path.dirname(sys.executable),
                                                 os.environ.get("PATH", "")]),
               PYLABHUB_RECOVERY_AUDIT_LOG=str(tmp_path / "audit.jsonl"),
               PYLABHUB_RECOVERY_SNAPSHOT_DIR=str(tmp_path / "snaps"),
               PYLABHUB_RECOVERY_SYSLOG="off")
    names = [prefix + "_a", prefix + "_b"]
    with CrashedBlocks() as lab:
        for name in names:
            lab.stuck_writer(name)
        assert not any(E.diagnose(n)["healthy"] for n in names)
        log = open(str(tmp_path / "rulebook.log"), "w")
        proc = subprocess.Popen(
            [RULEBOOK, "-r", "rulebook.yml", "-i", "inventory", "-S",
             str(REPO_ROOT / "extensions" / "eda" / "plugins" / "event_source")],
            cwd=str(tmp_path), env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not all(E.diagnose(n)["healthy"] for n in names):
                assert proc.poll() is None, (tmp_path / "rulebook.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "rulebook.log").read_text()
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            log.close()
    records = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    healed = {r["block"]["address"] for r in records if r["operation"] == "heal" and r["changed"]}
    assert healed == set(names), records
