# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The design card's ad-hoc form, ``ansible HOSTS -m datablock_recover -a "..."``, after
the one documented setup step (README, "Short module names"):

    eval "$(datablock-admin ansible-setup)"

Every module runs by its short name, ad hoc, in check mode and for real, on real blocks
left by real crashed processes; ``ansible-doc`` takes the short names too; and without
the step the short name does not resolve (so the step is what makes it work).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from ansible_collections.pylabhub.recovery.tests.crashed_blocks import (
    CrashedBlocks, snapshot, unique_name)
from ansible_collections.pylabhub.recovery.tests.integration.test_playbooks import _env

BIN = os.path.dirname(sys.executable)
MODULES = ("datablock_info", "datablock_diagnose", "datablock_recover", "datablock_cleanup",
           "datablock_validate", "datablock_drill", "datablock_undo")
#: Documented as an action plugin, which a module library path cannot provide: by its FQCN
#: only (its documentation says so).
ACTIONS = ("datablock_heal",)
SETUP_STEP = 'eval "$(datablock-admin ansible-setup)"'     # verbatim from the README
HEADLINE = re.compile(r"^(\S+) \| (SUCCESS|CHANGED|FAILED!) => ", re.M)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shell_bin(tmp_path_factory):
    """A directory holding ``datablock-admin`` (this checkout's CLI, as pip would install
    it) and the venv's ansible programs, for PATH."""
    d = tmp_path_factory.mktemp("bin")
    cli = d / "datablock-admin"
    cli.write_text('#!/bin/sh\nexec "%s" -m pylabhub.recovery "$@"\n' % sys.executable)
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR)
    return d


@pytest.fixture
def lab():
    with CrashedBlocks() as the_lab:
        yield the_lab


def shell(shell_bin, tmp_path, command, setup=True):
    """Run ``command`` in bash, after the README's setup step unless ``setup`` is false."""
    env = _env({"PATH": os.pathsep.join([str(shell_bin), BIN, os.environ.get("PATH", "")])})
    env.pop("ANSIBLE_LIBRARY", None)
    script = ("%s && %s" % (SETUP_STEP, command)) if setup else command
    proc = subprocess.run(["bash", "-c", script], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300, check=False)
    return proc


def adhoc(shell_bin, tmp_path, module, args, check=False):
    """``ansible localhost -m MODULE -a ARGS [--check]``: (status, result dict)."""
    command = "ansible localhost -m %s -a '%s'%s" % (module, args, " --check" if check else "")
    proc = shell(shell_bin, tmp_path, command)
    m = HEADLINE.search(proc.stdout)
    assert m, "%s\nrc=%d\n%s\n%s" % (command, proc.returncode, proc.stdout, proc.stderr)
    return m.group(2), json.loads(proc.stdout[m.end():])


def test_the_readme_gives_this_setup_step(repo_root):
    assert "\n%s\n" % SETUP_STEP in (repo_root / "README.md").read_text()


def test_every_module_is_run_here_by_its_short_name(repo_root):
    """A module added later is not left out of this file's ad-hoc runs."""
    shipped = sorted(p.stem for p in (repo_root / "plugins" / "modules").glob("datablock_*.py"))
    assert shipped == sorted(MODULES + ACTIONS)
    for action in ACTIONS:
        assert (repo_root / "plugins" / "action" / (action + ".py")).is_file()
        doc = (repo_root / "plugins" / "modules" / (action + ".py")).read_text()
        assert "covers the modules only" in doc                   # and says so


def test_setup_step_is_what_resolves_short_names(shell_bin, tmp_path):
    without = shell(shell_bin, tmp_path, "ansible localhost -m datablock_info", setup=False)
    assert without.returncode != 0
    assert "Cannot resolve 'datablock_info'" in without.stdout + without.stderr
    printed = shell(shell_bin, tmp_path, "datablock-admin ansible-setup", setup=False)
    assert printed.returncode == 0 and "export ANSIBLE_LIBRARY=" in printed.stdout, printed
    status, result = adhoc(shell_bin, tmp_path, "datablock_info", "pattern=plh_no_such_block*")
    assert status == "SUCCESS" and result["blocks"] == []
    # applying the step twice changes nothing (one entry, not two)
    twice = shell(shell_bin, tmp_path, '%s && printenv ANSIBLE_LIBRARY' % SETUP_STEP)
    assert twice.stdout.strip().count("plugins/modules") == 1, twice.stdout


def test_ansible_doc_takes_every_short_name(shell_bin, tmp_path):
    proc = shell(shell_bin, tmp_path, "ansible-doc %s" % " ".join(MODULES))
    assert proc.returncode == 0, proc.stderr
    for module in MODULES:
        assert re.search(r"MODULE \S*%s\S* \(" % module, proc.stdout), module
    without = shell(shell_bin, tmp_path, "ansible-doc datablock_recover", setup=False)
    assert "MODULE" not in without.stdout and "datablock_recover was not found" in without.stderr


def test_info_and_diagnose_by_short_name(shell_bin, tmp_path, lab):
    name = unique_name("plhshort")
    slot, _dead = lab.stuck_writer(name)
    for check in (True, False):
        status, result = adhoc(shell_bin, tmp_path, "datablock_info", "pattern=%s" % name,
                               check=check)
        assert status == "SUCCESS" and [b["address"] for b in result["blocks"]] == [name]
        assert result["blocks"][0]["health"]["stuck_slots"] == [slot]
        status, result = adhoc(shell_bin, tmp_path, "datablock_diagnose", "name=%s" % name,
                               check=check)
        assert status == "SUCCESS" and result["diagnosis"]["healthy"] is False
        assert slot in result["diagnosis"]["stuck_slots"]


def test_recover_by_short_name_the_design_card_form(shell_bin, tmp_path, lab):
    name = unique_name("plhshort")
    slot, _dead = lab.stuck_writer(name)
    args = "name=%s slot=%d action=release_writer" % (name, slot)
    before = snapshot(name)
    status, result = adhoc(shell_bin, tmp_path, "datablock_recover", args, check=True)
    assert status == "CHANGED" and result["recovery"]["dry_run"] is True
    assert snapshot(name) == before, "check mode wrote to the block"
    status, result = adhoc(shell_bin, tmp_path, "datablock_recover", args)
    assert status == "CHANGED" and result["recovery"]["result"] == "SUCCESS"
    assert lab.slot_words(name, slot)["write_lock"] == 0
    status, _result = adhoc(shell_bin, tmp_path, "datablock_recover", args)
    assert status == "SUCCESS"                       # idempotent: nothing left to do


def test_cleanup_by_short_name(shell_bin, tmp_path, lab):
    name = unique_name("plhshort")
    lab.dead_consumers(name, dead=2)
    before = snapshot(name)
    status, _result = adhoc(shell_bin, tmp_path, "datablock_cleanup", "name=%s" % name,
                            check=True)
    assert status == "CHANGED" and snapshot(name) == before
    status, _result = adhoc(shell_bin, tmp_path, "datablock_cleanup", "name=%s" % name)
    assert status == "CHANGED" and lab.consumer_pids(name) == []


def test_validate_by_short_name(shell_bin, tmp_path, lab):
    name = unique_name("plhshort")
    lab.corrupt(name)
    before = snapshot(name)
    args = "name=%s repair=true" % name
    status, _result = adhoc(shell_bin, tmp_path, "datablock_validate", args, check=True)
    assert status == "CHANGED" and snapshot(name) == before
    status, _result = adhoc(shell_bin, tmp_path, "datablock_validate", args)
    assert status == "CHANGED"
    status, result = adhoc(shell_bin, tmp_path, "datablock_validate", "name=%s" % name)
    assert status == "SUCCESS" and result["validation"]["valid"] is True


def test_drill_by_short_name(shell_bin, tmp_path):
    args = "iterations=2 seed=7"
    status, result = adhoc(shell_bin, tmp_path, "datablock_drill", args, check=True)
    assert status == "SUCCESS" and result["drill"] is None        # check mode: not run
    status, result = adhoc(shell_bin, tmp_path, "datablock_drill", args)
    assert status == "SUCCESS" and result["drill"]["survived"] == 2, result


def test_undo_by_short_name(shell_bin, tmp_path, lab):
    """A real recover by short name leaves a before-image; undo by short name puts the
    dead writer's lock back (check mode first: nothing written)."""
    name = unique_name("plhshort")
    slot, dead = lab.stuck_writer(name)
    stuck = lab.slot_words(name, slot)
    record = "snapshot_dir=%s audit_log=%s" % (tmp_path / "snapshots", tmp_path / "audit.jsonl")
    status, result = adhoc(shell_bin, tmp_path, "datablock_recover",
                           "name=%s slot=%d action=release_writer %s" % (name, slot, record))
    assert status == "CHANGED" and lab.slot_words(name, slot)["write_lock"] == 0
    args = "snapshot_id=%s %s" % (result["recovery"]["snapshot"]["id"], record)
    released = snapshot(name)
    status, result = adhoc(shell_bin, tmp_path, "datablock_undo", args, check=True)
    assert status == "CHANGED" and result["undo"]["dry_run"] is True, result
    assert snapshot(name) == released, "check mode wrote to the block"
    status, result = adhoc(shell_bin, tmp_path, "datablock_undo", args)
    assert status == "CHANGED", result
    assert lab.slot_words(name, slot) == stuck and stuck["write_lock"] != 0, (stuck, dead)


def test_ini_lines_work_as_an_ansible_cfg(shell_bin, tmp_path):
    """The permanent form: `ansible-setup --ini` pasted into ansible.cfg."""
    printed = shell(shell_bin, tmp_path, "datablock-admin ansible-setup --ini", setup=False)
    assert printed.returncode == 0, printed.stderr
    assert "[defaults]" in printed.stdout and "library = " in printed.stdout
    (tmp_path / "ansible.cfg").write_text(printed.stdout)
    proc = shell(shell_bin, tmp_path, "ANSIBLE_CONFIG=ansible.cfg ansible-doc datablock_drill",
                 setup=False)
    assert proc.returncode == 0 and re.search(r"MODULE \S*datablock_drill\S* \(", proc.stdout), (
        proc.stdout + proc.stderr)


def test_json_is_refused_with_one_line(shell_bin, tmp_path):
    proc = shell(shell_bin, tmp_path, "datablock-admin --json ansible-setup", setup=False)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["code"] == "usage"
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
