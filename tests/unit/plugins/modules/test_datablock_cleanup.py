# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""datablock_cleanup on consumers SIGKILLed while registered."""

from __future__ import annotations

import pytest

from ansible_collections.pylabhub.recovery.plugins.modules import datablock_cleanup
from ansible_collections.pylabhub.recovery.tests.crashed_blocks import snapshot


def test_check_apply_idempotent(run, lab, name):
    pids = lab.dead_consumers(name, dead=2)
    assert lab.consumer_pids(name) == pids
    before = snapshot(name)
    checked = run(datablock_cleanup, {"name": name}, check_mode=True, diff=True)
    assert not checked.failed and checked["changed"] is True and checked["cleaned"] == 2
    assert snapshot(name) == before
    diff = checked["diff"]
    assert "consumer[0]:" in diff["before"] and "consumer[1]:" in diff["after"]
    assert "consumer_pid: %d (dead)" % pids[0] in diff["before"]
    assert 'consumer_name: "crashlab-dead-0"' in diff["before"]
    assert 'consumer_name: ""' in diff["after"]
    assert "active_consumer_count: 2" in diff["before"]
    # msg: what check mode would do, in the conditional
    assert checked["msg"].startswith(name + ": ") and "would clear its entry" in checked["msg"]
    assert "cleared" not in checked["msg"]

    applied = run(datablock_cleanup, {"name": name}, diff=True)
    assert not applied.failed and applied["changed"] is True
    assert "cleared its entry" in applied["msg"] and "would" not in applied["msg"]
    assert applied["diff"] == diff           # check mode showed the real run's diff
    assert lab.consumer_pids(name) == []
    assert applied["cleanup"]["cleaned"] == 2

    after = snapshot(name)
    assert run(datablock_cleanup, {"name": name}, check_mode=True)["changed"] is False
    again = run(datablock_cleanup, {"name": name})
    assert again["changed"] is False and again["cleaned"] == 0
    assert snapshot(name) == after


def test_all_blocks_matching_a_pattern(run, lab, name):
    lab.dead_consumers(name + "_a", dead=1)
    lab.healthy(name + "_b")
    args = {"all": True, "pattern": name + "_*"}
    out = run(datablock_cleanup, args, check_mode=True, diff=True)
    assert not out.failed and out["changed"] is True and out["cleaned"] == 1
    assert [b["address"] for b in out["blocks"]] == [name + "_a", name + "_b"]
    assert isinstance(out["diff"], list) and len(out["diff"]) == 2
    out = run(datablock_cleanup, args)
    assert out["changed"] is True and lab.consumer_pids(name + "_a") == []
    assert run(datablock_cleanup, args)["changed"] is False


def test_all_skips_unsound_blocks_with_a_warning(run, lab, name):
    lab.healthy(name)
    with open("/dev/shm/" + name, "r+b") as f:
        f.seek(4)
        f.write(b"\x09\x00")
    out = run(datablock_cleanup, {"all": True, "pattern": name})
    assert not out.failed and out["changed"] is False
    assert out["blocks"][0]["skipped"] and out.warnings


@pytest.mark.parametrize("args, needle", [
    ({}, "one of name or all=true is required"),
    ({"name": "x", "all": True}, "not both"),
    ({"name": "x", "pattern": "x*"}, "pattern is only accepted with all=true"),
])
def test_argument_errors(run, args, needle):
    out = run(datablock_cleanup, args)
    assert out.failed and needle in out["msg"]


def test_missing_block(run, name):
    out = run(datablock_cleanup, {"name": name})
    assert out.failed and out["code"] == "not-found"
