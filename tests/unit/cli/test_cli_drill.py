"""datablock-admin drill: the crash drill run for real (scratch blocks, forked producers and
consumers SIGKILLed at seeded protocol points, heal, invariants), its JSON against the
schema, repeatability by seed, its terminal output and its argument errors."""

from __future__ import annotations

import glob
import os

import pytest

SEED = 20240611


def _scratch():
    """Scratch blocks (plh_drill_<pid>_<i>) whose drill process is gone: a block the CLI
    run below left is among them once it has exited; a drill still running elsewhere on
    the machine (a parallel test run) is not ours to count."""
    return {path for path in glob.glob("/dev/shm/plh_drill_*")
            if not os.path.exists("/proc/%s" % os.path.basename(path).split("_")[2])}


def test_drill_survives_and_validates(cli):
    before = _scratch()
    r = cli("drill", "--iterations", "30", "--seed", str(SEED), "--json")
    assert r.rc == 0, r
    d = r.json                                   # validated against the schema by cli()
    assert (d["operation"], d["seed"], d["iterations"]) == ("drill", SEED, 30)
    assert d["ok"] is True and d["survived"] == d["iterations"] == 30, d["failures"]
    assert d["committed_lost"] == 0 and d["committed_checked"] > 0 and d["failures"] == []
    assert sum(d["points"].values()) == 30 and d["kills"] >= 30
    assert _scratch() <= before                  # every scratch block was removed


def test_same_seed_same_kill_points(cli):
    runs = [cli("drill", "--iterations", "12", "--seed", "7", "--json") for dummy in range(2)]
    assert [r.rc for r in runs] == [0, 0], runs
    first, second = (r.json for r in runs)
    assert first["points"] == second["points"] and first["kills"] == second["kills"]
    assert first["schedule"] == second["schedule"] and len(first["schedule"]) == 12
    assert first["configurations"] == second["configurations"]
    assert sum(first["configurations"]["checksum_policy"].values()) == 12
    other = cli("drill", "--iterations", "12", "--seed", "8", "--json").json
    assert other["seed"] == 8 and sum(other["points"].values()) == 12


def test_human_summary(cli):
    r = cli("drill", "--iterations", "8", "--seed", "3", "--capacity", "2")
    assert r.rc == 0, r
    assert r.stdout.startswith("crash drill: seed 3, 8 iteration(s)")
    for text in ("processes killed: ", "survived: 8/8", "checked, 0 lost", "kill points:",
                 "writer_locked", "deadlock", "result: ok", "configurations (",
                 "consumer_sync", "SEQUENTIAL_SYNC ", "checksum_policy",
                 "rerun: datablock-admin drill --iterations 8 --seed 3 --capacity 2\n"):
        assert text in r.stdout, (text, r.stdout)
    assert r.stderr == ""


def test_random_seed_is_reported(cli):
    r = cli("drill", "--iterations", "1", "--json")
    assert r.rc == 0 and isinstance(r.json["seed"], int) and r.json["iterations"] == 1


def test_failures_are_listed_and_valid_json(schema):
    from pylabhub.recovery import _render as R
    failure = {"iteration": 3, "point": "deadlock",
               "configuration": "SINGLE/SEQUENTIAL_SYNC/flex4096/MANUAL",
               "killed": 2, "committed_checked": 2,
               "committed_lost": 1, "changed": True, "ok": False,
               "problems": ["committed slot(s) [1] changed or lost", "not healthy after heal"]}
    d = {"schema": "pylabhub.recovery/v1", "operation": "drill", "seed": 1, "iterations": 4,
         "kills": 6, "survived": 3, "committed_checked": 9, "committed_lost": 1,
         "seconds": 0.5, "ok": False, "failures": [failure],
         "points": {"deadlock": 1, "random": 3}}
    assert schema.is_valid(d), list(schema.iter_errors(d))[:1]     # without the new fields
    d["configurations"] = {"policy": {"SINGLE": 4}, "consumer_sync": {"SEQUENTIAL_SYNC": 4},
                           "flex_size": {"4096": 4}, "checksum_policy": {"MANUAL": 4},
                           "cells": {"SINGLE/SEQUENTIAL_SYNC/flex4096/MANUAL": 4}}
    d["schedule"] = [{"iteration": i, "point": "deadlock" if i == 3 else "random",
                      "configuration": "SINGLE/SEQUENTIAL_SYNC/flex4096/MANUAL",
                      "ok": i != 3} for i in range(4)]
    assert schema.is_valid(d), list(schema.iter_errors(d))[:1]
    lines = R.render_drill(d, R.Style(False), "datablock-admin drill --iterations 4 --seed 1")
    assert "  survived: 3/4" in lines
    assert ("    iteration 3 (deadlock, SINGLE/SEQUENTIAL_SYNC/flex4096/MANUAL): committed "
            "slot(s) [1] changed or lost; not healthy after heal") in lines
    assert "  configurations (1 of the matrix's cells used):" in lines
    assert "  result: FAILED (1 iteration(s) failed)" in lines


@pytest.mark.parametrize("argv", [
    ["--iterations", "0"],
    ["--iterations", "-1"],
    ["--iterations", "many"],
    ["--seed", "-1"],
    ["--capacity", "0"],
    ["--stride", "100"],
    ["extra"],
], ids="_".join)
def test_bad_arguments_are_one_line_usage_errors(cli, argv):
    before = _scratch()
    r = cli("drill", *argv)
    assert r.rc == 2 and r.stdout == "", r
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith(
        ("datablock-admin drill: error: ", "datablock-admin: error: ")), r
    j = cli("drill", *(argv + ["--json"]))
    assert j.rc == 2 and j.json["error"]["code"] == "usage"
    assert _scratch() <= before


def test_help_documents_the_drill(cli):
    r = cli("drill", "--help")
    assert r.rc == 0
    for text in ("--iterations N", "--seed S", "--capacity N", "--stride S", "SIGKILL",
                 "--seed S --iterations N reruns", "1 when one failed",
                 "exit codes: see 'datablock-admin --help'"):
        assert text in r.stdout, text
    assert "drill" in cli("--help").stdout


def test_progress_bar_on_a_terminal(tty_cli):
    rc, terminal, stdout = tty_cli("drill", "--iterations", "30", "--seed", str(SEED),
                                   timeout=120)
    assert rc == 0, terminal
    assert "drill [" in terminal and "/30 iterations" in terminal
    assert "\r\x1b[K" in terminal                # erased before the summary
    assert "survived: 30/30" in stdout
