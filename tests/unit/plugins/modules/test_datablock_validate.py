# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""datablock_validate: corruption fails by default; repair re-blesses committed slots."""

from __future__ import annotations

from ansible_collections.pylabhub.recovery.plugins.modules import datablock_validate
from ansible_collections.pylabhub.recovery.tests.crashed_blocks import snapshot


def test_corruption_fails_by_default(run, lab, name):
    slot = lab.corrupt(name)
    before = snapshot(name)
    out = run(datablock_validate, {"name": name})
    assert out.failed and out["code"] == "corrupt" and out["valid"] is False
    assert "slot %d" % slot in out["msg"] and out["changed"] is False
    assert out["validation"]["findings"][0]["code"] == "checksum-mismatch"
    out = run(datablock_validate, {"name": name, "fail_on_corruption": False})
    assert not out.failed and out["valid"] is False and out["changed"] is False
    assert snapshot(name) == before


def test_repair_check_apply_idempotent(run, lab, name):
    slot = lab.corrupt(name)
    args = {"name": name, "repair": True}
    before = snapshot(name)
    checked = run(datablock_validate, args, check_mode=True, diff=True)
    assert not checked.failed and checked["changed"] is True and checked["valid"] is True
    assert snapshot(name) == before
    assert "slot[%d]:" % slot in checked["diff"]["before"]
    assert "checksum:" in checked["diff"]["after"]

    applied = run(datablock_validate, args)
    assert not applied.failed and applied["changed"] is True
    assert applied["validation"]["reblessed"][0]["slot"] == slot
    after = snapshot(name)
    assert after != before

    assert run(datablock_validate, args, check_mode=True)["changed"] is False
    again = run(datablock_validate, args)
    assert not again.failed and again["changed"] is False and again["valid"] is True
    assert run(datablock_validate, {"name": name})["valid"] is True
    assert snapshot(name) == after


def test_all_with_pattern(run, lab, name):
    lab.corrupt(name + "_bad")
    lab.healthy(name + "_good")
    args = {"all": True, "pattern": name + "_*"}
    out = run(datablock_validate, args)
    assert out.failed and out["code"] == "corrupt" and name + "_bad" in out["msg"]
    assert {b["address"]: b["validation"]["valid"] for b in out["blocks"]} == {
        name + "_bad": False, name + "_good": True}
    out = run(datablock_validate, dict(args, fail_on_corruption=False))
    assert not out.failed and out["valid"] is False
    out = run(datablock_validate, dict(args, repair=True))
    assert not out.failed and out["changed"] is True and out["valid"] is True
    assert run(datablock_validate, dict(args, repair=True))["changed"] is False


def test_unsound_header_is_a_finding(run, lab, name):
    lab.healthy(name)
    with open("/dev/shm/" + name, "r+b") as f:
        f.seek(4)
        f.write(b"\x09\x00")
    out = run(datablock_validate, {"name": name, "fail_on_corruption": False})
    assert not out.failed and out["valid"] is False
    assert out["validation"]["findings"]


def test_missing_block_always_fails(run, name):
    out = run(datablock_validate, {"name": name, "fail_on_corruption": False})
    assert out.failed and out["code"] == "not-found"
