# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""datablock_drill: the crash drill run as a module (real forks, real SIGKILL)."""

from __future__ import annotations

import os

from ansible_collections.pylabhub.recovery.plugins.modules import datablock_drill


def _scratch():
    """This process's scratch blocks (the module runs in-process; other drills on the
    machine, such as a parallel test run's, are not ours to count)."""
    mine = "plh_drill_%d_" % os.getpid()
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(mine))


def test_drill_survives_and_leaves_nothing(run):
    before = _scratch()
    out = run(datablock_drill, {"iterations": 16, "seed": 7})
    assert not out.failed, out
    assert out["changed"] is False
    drill = out["drill"]
    assert drill["iterations"] == 16 and drill["survived"] == 16
    assert drill["committed_lost"] == 0 and drill["kills"] >= 16
    assert drill["seed"] == 7
    assert _scratch() == before, "scratch blocks left behind"


def test_same_seed_same_points(run):
    first = run(datablock_drill, {"iterations": 8, "seed": 99})["drill"]["points"]
    second = run(datablock_drill, {"iterations": 8, "seed": 99})["drill"]["points"]
    assert first == second


def test_check_mode_runs_nothing(run):
    before = _scratch()
    out = run(datablock_drill, {"iterations": 5}, check_mode=True)
    assert not out.failed and out["drill"] is None and out["changed"] is False
    assert "would run 5" in out["msg"]
    assert _scratch() == before


def test_bad_iterations_fail_cleanly(run):
    out = run(datablock_drill, {"iterations": 0})
    assert out.failed and out["code"] == "usage"
