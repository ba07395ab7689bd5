# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real ``ansible-playbook`` and ``ansible`` runs against localhost, on real crashed blocks.

For every mutating module the four-step pattern, each step its own ``ansible-playbook``
run: ``--check`` (changed, bytes unchanged), apply (changed, bytes fixed), ``--check``
again (not changed), apply again (not changed). Then the ad-hoc command of issue 5 run
with ``ansible``, the modules on the oldest target Python (standard library only), and the
``pylabhub.recovery.fleet_summary`` callback's table.

The root conftest exports ANSIBLE_COLLECTIONS_PATH pointing at the working tree.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from ansible_collections.pylabhub.recovery.tests.crashlab import (
    CrashLab, snapshot, unique_name)

BIN = os.path.dirname(sys.executable)
INVENTORY = ("localhost ansible_connection=local "
             "ansible_python_interpreter=\"{{ ansible_playbook_python }}\"\n")
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.M)
OLD_PYTHONS = sorted(glob.glob("/root/.pyenv/versions/3.8.*/bin/python3.8")
                     + glob.glob("/usr/bin/python3.8"))

pytestmark = pytest.mark.slow


@pytest.fixture
def lab():
    with CrashLab() as the_lab:
        yield the_lab


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "inventory").write_text(INVENTORY)
    return tmp_path


def _env(extra=None):
    env = dict(os.environ)
    env.update({
        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_DEPRECATION_WARNINGS": "False", "PYTHONWARNINGS": "ignore",
    })
    for key in ("ANSIBLE_CONFIG", "ANSIBLE_CALLBACKS_ENABLED", "ANSIBLE_LOAD_CALLBACK_PLUGINS"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def _run(cmd, cwd, extra_env=None, expect_rc=0):
    proc = subprocess.run(cmd, cwd=str(cwd), env=_env(extra_env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300,
                          check=False)
    if expect_rc is not None:
        assert proc.returncode == expect_rc, "%s\nrc=%d\n%s" % (
            " ".join(cmd), proc.returncode, proc.stdout)
    return proc.stdout


def playbook(workdir, tasks_yaml, *args, **kw):
    """Run one play on localhost with ``tasks_yaml``; return (output, recap dict)."""
    path = workdir / "play.yml"
    path.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n" + tasks_yaml)
    out = _run([os.path.join(BIN, "ansible-playbook"), "-i", "inventory", str(path)]
               + list(args), workdir, **kw)
    recap = {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                          "unreachable": int(m.group(4)), "failed": int(m.group(5))}
             for m in RECAP.finditer(out)}
    return out, recap


def four_steps(workdir, name, task, fixed):
    """The four-step pattern; ``fixed()`` asserts the bytes were repaired."""
    before = snapshot(name)
    out, recap = playbook(workdir, task, "--check", "--diff")
    assert recap["localhost"]["changed"] == 1, out
    assert snapshot(name) == before, "check mode wrote to the block:\n" + out
    diff_text = out

    out, recap = playbook(workdir, task)
    assert recap["localhost"]["changed"] == 1, out
    fixed()
    after = snapshot(name)

    out, recap = playbook(workdir, task, "--check", "--diff")
    assert recap["localhost"]["changed"] == 0, out
    out, recap = playbook(workdir, task)
    assert recap["localhost"]["changed"] == 0 and recap["localhost"]["failed"] == 0, out
    assert snapshot(name) == after
    return diff_text


def test_recover_release_writer_four_steps(workdir, lab):
    name = unique_name("plhint")
    slot, dead = lab.stuck_writer(name)
    task = ("    - pylabhub.recovery.datablock_recover:\n"
            "        name: %s\n        slot: %d\n        action: release_writer\n"
            % (name, slot))

    def fixed():
        words = lab.slot_words(name, slot)
        assert words["write_lock"] == 0 and words["slot_state"] == 0
    diff = four_steps(workdir, name, task, fixed)
    assert "write_lock: %d (dead)" % dead in diff and "slot_state: WRITING" in diff


def test_recover_release_readers_four_steps(workdir, lab):
    name = unique_name("plhint")
    slot, _pid = lab.stuck_reader(name)
    task = ("    - pylabhub.recovery.datablock_recover:\n"
            "        name: %s\n        slot: all\n        action: release_readers\n" % name)
    four_steps(workdir, name, task,
               lambda: lab.slot_words(name, slot)["reader_count"] == 0 or pytest.fail("readers"))


def test_recover_heal_four_steps(workdir, lab):
    name = unique_name("plhint")
    slot, _dead = lab.stuck_writer(name)
    task = ("    - pylabhub.recovery.datablock_recover:\n"
            "        name: %s\n        action: heal\n" % name)
    four_steps(workdir, name, task,
               lambda: lab.slot_words(name, slot)["write_lock"] == 0 or pytest.fail("lock"))


def test_cleanup_four_steps(workdir, lab):
    name = unique_name("plhint")
    lab.dead_consumers(name, dead=2)
    task = "    - pylabhub.recovery.datablock_cleanup:\n        name: %s\n" % name
    diff = four_steps(workdir, name, task,
                      lambda: lab.consumer_pids(name) == [] or pytest.fail("consumers"))
    assert 'consumer_name: "crashlab-dead-0"' in diff


def test_validate_repair_four_steps(workdir, lab):
    name = unique_name("plhint")
    lab.corrupt(name)
    task = ("    - pylabhub.recovery.datablock_validate:\n"
            "        name: %s\n        repair: true\n" % name)

    def fixed():
        out, recap = playbook(workdir, "    - pylabhub.recovery.datablock_validate:\n"
                                       "        name: %s\n" % name)
        assert recap["localhost"]["failed"] == 0, out
    diff = four_steps(workdir, name, task, fixed)
    assert "checksum:" in diff


def test_validate_corruption_fails_the_play(workdir, lab):
    name = unique_name("plhint")
    slot = lab.corrupt(name)
    out, recap = playbook(workdir, "    - pylabhub.recovery.datablock_validate:\n"
                                   "        name: %s\n" % name, expect_rc=2)
    assert recap["localhost"]["failed"] == 1 and "slot %d" % slot in out


def test_refusal_names_pid_and_verdict(workdir, lab):
    name = unique_name("plhint")
    slot, live = lab.live_writer(name)
    out, recap = playbook(workdir, "    - pylabhub.recovery.datablock_recover:\n"
                                   "        name: %s\n        slot: %d\n"
                                   "        action: release_writer\n" % (name, slot),
                          expect_rc=2)
    assert recap["localhost"]["failed"] == 1
    assert "pid %d, verdict alive" % live in out


def test_adhoc_command(workdir, lab):
    name = unique_name("plhint")
    slot, _dead = lab.stuck_writer(name)
    assert slot == 0
    cmd = [os.path.join(BIN, "ansible"), "localhost", "-m",
           "pylabhub.recovery.datablock_recover", "-a",
           "name=%s slot=0 action=release_writer" % name]
    out = _run(cmd, workdir)
    assert "localhost | CHANGED" in out and '"result": "SUCCESS"' in out, out
    assert lab.slot_words(name, 0)["write_lock"] == 0
    out = _run(cmd, workdir)
    assert "localhost | SUCCESS" in out and '"changed": false' in out, out


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python 3.8 on this machine")
def test_oldest_target_python_standard_library_only(workdir, lab):
    """The modules run on Python 3.8 with the standard library only (this Python has no
    third-party package), and say nothing about libraries they do not use."""
    name = unique_name("plhint")
    slot, _dead = lab.stuck_writer(name)
    python = OLD_PYTHONS[0]
    base = [os.path.join(BIN, "ansible"), "localhost", "-e",
            "ansible_python_interpreter=%s" % python, "-m"]
    out = _run(base + ["pylabhub.recovery.datablock_info", "-a", "pattern=%s validate=true"
                       % name], workdir)
    assert "localhost | SUCCESS" in out and '"healthy": false' in out, out
    assert "Traceback" not in out and "optional_libraries" not in out
    out = _run(base + ["pylabhub.recovery.datablock_recover", "-a",
                       "name=%s slot=%d action=release_writer" % (name, slot)], workdir)
    assert "localhost | CHANGED" in out, out
    assert lab.slot_words(name, slot)["write_lock"] == 0


FLEET_TASKS = """\
    - name: Survey
      pylabhub.recovery.datablock_info:
        pattern: "{prefix}_*"
        validate: true
    - name: Heal the stuck one
      pylabhub.recovery.datablock_recover:
        name: {prefix}_a
        action: heal
    - name: Try the one a live writer holds
      pylabhub.recovery.datablock_recover:
        name: {prefix}_d
        slot: all
        action: release_writer
      ignore_errors: true
    - name: Report corruption without failing
      pylabhub.recovery.datablock_validate:
        name: {prefix}_c
        fail_on_corruption: false
"""


def _table_row(out, host):
    m = re.search(r"^%s\s+(\d+)\s+(\d+)\s+(\d+\*?)\s+(\d+)\s+(\d+)\s+(\d+)\s*$"
                  % re.escape(host), out, re.M)
    assert m, out
    return m.groups()


def test_fleet_summary_callback(workdir, lab):
    prefix = unique_name("plhfleet")
    lab.stuck_writer(prefix + "_a")
    lab.healthy(prefix + "_b")
    lab.corrupt(prefix + "_c")
    lab.live_writer(prefix + "_d")
    (workdir / "inventory").write_text(
        INVENTORY + "nowhere ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh "
        "ansible_ssh_common_args='-o ConnectTimeout=3'\n")
    path = workdir / "fleet.yml"
    path.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n"
                    + FLEET_TASKS.format(prefix=prefix))
    env = {"ANSIBLE_CALLBACKS_ENABLED": "pylabhub.recovery.fleet_summary"}
    reports = workdir / "reports"
    out = _run([os.path.join(BIN, "ansible-playbook"), "-i", "inventory", str(path)],
               workdir, extra_env=dict(env, PYLABHUB_FLEET_SUMMARY_REPORT_DIR=str(reports)),
               expect_rc=4)   # 4: a host was unreachable
    assert "PYLABHUB FLEET SUMMARY" in out, out
    # blocks, healthy, recovered, refused, corrupt, unreachable
    assert _table_row(out, "localhost") == ("4", "3", "1", "1", "1", "0"), out
    assert _table_row(out, "nowhere") == ("0", "0", "0", "0", "0", "1"), out
    # the fleet report file: the table, and the real actions with their before-images
    [report] = list(reports.iterdir())
    text = report.read_text()
    assert "fleet report: %s" % report in out
    assert re.search(r"^\| localhost \| 4 \| 3 \| 1 \| 1 \| 1 \| 0 \|$", text, re.M), text
    healed = [line for line in text.splitlines()
              if line.startswith("| localhost |") and (prefix + "_a").replace("_", "\\_")
              in line and "| yes |" in line]
    assert healed and re.search(r"\| \d{8}T\d{6}\.\d{6}Z-heal-\d+-[0-9a-f]{8} \|$",
                                healed[0]), text

    # check mode: recoveries are predictions, marked with *
    out = _run([os.path.join(BIN, "ansible-playbook"), "-i", "inventory", "--limit",
                "localhost", "--check", str(path)], workdir, extra_env=env)
    assert _table_row(out, "localhost")[2] == "0"       # a is healed already
    assert "nowhere" not in out.split("PYLABHUB FLEET SUMMARY")[1]


def test_fleet_summary_adhoc(workdir, lab):
    name = unique_name("plhfleet")
    lab.stuck_writer(name)
    env = {"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
           "ANSIBLE_CALLBACKS_ENABLED": "pylabhub.recovery.fleet_summary"}
    cmd = [os.path.join(BIN, "ansible"), "localhost", "-m",
           "pylabhub.recovery.datablock_recover", "-a",
           "name=%s slot=0 action=release_writer" % name]
    out = _run(cmd + ["--check"], workdir, extra_env=env)
    assert _table_row(out, "localhost") == ("1", "0", "1*", "0", "0", "0"), out
    assert "check mode predicts" in out
    out = _run(cmd, workdir, extra_env=env)
    assert _table_row(out, "localhost") == ("1", "0", "1", "0", "0", "0"), out
    # without ANSIBLE_LOAD_CALLBACK_PLUGINS an ad-hoc run loads no extra callback
    out = _run(cmd, workdir, extra_env={"ANSIBLE_CALLBACKS_ENABLED":
                                        "pylabhub.recovery.fleet_summary"})
    assert "PYLABHUB FLEET SUMMARY" not in out


def test_drill_playbook_by_fqcn(workdir):
    """``ansible-playbook pylabhub.recovery.drill``: the drill runs on the host through the
    module and reports what it proved; a fixed seed makes the run repeatable."""
    out = _run([os.path.join(BIN, "ansible-playbook"), "-i", "inventory",
                "pylabhub.recovery.drill", "-e", "drill_iterations=12", "-e", "drill_seed=5"],
               workdir)
    assert "seed 5: 12/12 iterations survived" in out, out
    assert re.search(r"\b0 lost\b", out), out
    recap = {m.group(1): m.groups()[1:] for m in RECAP.finditer(out)}
    assert recap["localhost"][3] == "0", out   # failed=0
