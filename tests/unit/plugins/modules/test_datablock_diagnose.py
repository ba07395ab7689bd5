# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""datablock_diagnose: read-only, explains real crashed blocks."""

from __future__ import annotations

from ansible_collections.pylabhub.recovery.plugins.modules import datablock_diagnose
from ansible_collections.pylabhub.recovery.tests.crashlab import snapshot


def test_stuck_writer_is_explained(run, lab, name):
    slot, dead = lab.stuck_writer(name)
    before = snapshot(name)
    out = run(datablock_diagnose, {"name": name})
    assert not out.failed and out["changed"] is False
    diag = out["diagnosis"]
    assert diag["schema"] == "pylabhub.recovery/v1" and diag["operation"] == "diagnose"
    assert diag["healthy"] is False and diag["stuck_slots"] == [slot]
    assert [s["index"] for s in diag["slots"]] == [slot]       # the slots not plain
    entry = diag["slots"][0]
    assert entry["writer"]["pid"] == dead and entry["writer"]["state"] == "dead"
    assert entry["action"] == "release_writer"
    assert snapshot(name) == before


def test_check_mode_is_the_same_read(run, lab, name):
    lab.stuck_writer(name)
    out = run(datablock_diagnose, {"name": name}, check_mode=True, diff=True)
    assert not out.failed and out["changed"] is False and "diff" not in out.result


def test_dead_consumer_and_healthy(run, lab, name):
    pids = lab.dead_consumers(name, dead=1)
    diag = run(datablock_diagnose, {"name": name})["diagnosis"]
    assert [c["pid"] for c in diag["consumers"]] == pids
    assert diag["consumers"][0]["action"] == "cleanup" and diag["healthy"] is False


def test_healthy_block(run, lab, name):
    lab.healthy(name)
    diag = run(datablock_diagnose, {"name": name})["diagnosis"]
    assert diag["healthy"] is True and diag["stuck_slots"] == []


def test_one_slot(run, lab, name):
    """Only the slot asked for is explained, but the block's health and its stuck slots
    are the whole block's (issue 10: "--slot hides the jam"; before, stuck_slots was [] here
    and the block was called healthy)."""
    slot, _dead = lab.stuck_writer(name)
    other = (slot + 1) % 4
    diag = run(datablock_diagnose, {"name": name, "slot": str(other)})["diagnosis"]
    assert [s["index"] for s in diag["slots"]] == [other] and diag["stuck_slots"] == [slot]
    assert diag["healthy"] is False and diag["health"] == "stuck"
    assert {"operation": "recover", "slot": slot, "action": "release_writer",
            "force": False} in diag["next_steps"]


def test_failures(run, lab, name):
    out = run(datablock_diagnose, {"name": name})
    assert out.failed and out["code"] == "not-found"
    lab.healthy(name)
    out = run(datablock_diagnose, {"name": name, "slot": 4})
    assert out.failed and out["code"] == "slot-out-of-range"
    out = run(datablock_diagnose, {"name": name, "slot": "all"})
    assert out.failed and "slot" in out["msg"]
    out = run(datablock_diagnose, {})
    assert out.failed and "name" in out["msg"]
