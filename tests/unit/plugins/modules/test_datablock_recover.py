# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""datablock_recover on real blocks left by real SIGKILLed processes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _procinfo
from ansible_collections.pylabhub.recovery.plugins.modules import datablock_recover
from ansible_collections.pylabhub.recovery.tests.crashed_blocks import snapshot

FREE, WRITING, COMMITTED = 0, 1, 2


def test_release_writer_check_apply_idempotent(run, lab, name):
    slot, dead = lab.stuck_writer(name)
    args = {"name": name, "slot": slot, "action": "release_writer"}
    before = snapshot(name)

    checked = run(datablock_recover, args, check_mode=True)
    assert not checked.failed, checked
    assert checked["changed"] is True
    assert checked["recovery"]["dry_run"] is True
    assert snapshot(name) == before, "check mode wrote to the block"

    applied = run(datablock_recover, args)
    assert not applied.failed and applied["changed"] is True
    assert applied["recovery"]["dry_run"] is False
    assert applied["recovery"]["outcomes"][0]["result"] == "SUCCESS"
    assert applied["recovery"]["outcomes"][0]["holder"] == dict(
        applied["recovery"]["outcomes"][0]["holder"], pid=dead, state="dead")
    words = lab.slot_words(name, slot)
    assert words["write_lock"] == 0 and words["slot_state"] == FREE
    # the check-mode prediction named the same words the real run changed
    assert ([c["target"] for c in checked["recovery"]["changes"]]
            == [c["target"] for c in applied["recovery"]["changes"]])

    after = snapshot(name)
    again_check = run(datablock_recover, args, check_mode=True)
    again = run(datablock_recover, args)
    assert not again_check.failed and again_check["changed"] is False
    assert not again.failed and again["changed"] is False
    assert again["recovery"]["outcomes"][0]["result"] == "NOT_STUCK"
    assert snapshot(name) == after


def test_diff_shows_each_touched_slot_before_and_after(run, lab, name):
    slot, dead = lab.stuck_writer(name)
    out = run(datablock_recover, {"name": name, "slot": slot, "action": "release_writer"},
              check_mode=True, diff=True)
    diff = out["diff"]
    assert diff["before_header"].startswith(name)
    before, after = diff["before"], diff["after"]
    assert "slot[%d]:" % slot in before and "slot[%d]:" % slot in after
    assert "write_lock: %d (dead)" % dead in before and "write_lock: 0" in after
    assert "slot_state: WRITING" in before and "slot_state: FREE" in after
    assert "header:" in before and "write_index:" in before
    assert "last_error_timestamp_ns: now" in after
    # the real run's diff is the one check mode showed
    real = run(datablock_recover, {"name": name, "slot": slot, "action": "release_writer"},
               diff=True)
    assert real["diff"] == diff
    # no diff unless asked for
    assert "diff" not in run(datablock_recover, {"name": name, "slot": slot,
                                                 "action": "release_writer"},
                             check_mode=True).result


def test_msg_in_the_tense_of_the_run(run, lab, name):
    """msg says what the task did, or in check mode what it would do; a refusal says who
    holds the slot, the same in both."""
    slot, dead = lab.stuck_writer(name)
    args = {"name": name, "slot": slot, "action": "release_writer"}
    checked = run(datablock_recover, args, check_mode=True)
    assert checked["msg"] == ("%s: slot %d: would release the write lock of dead pid %d "
                              "(WRITING → FREE) and scrub the torn bytes to zeros"
                              % (name, slot, dead)), checked["msg"]
    applied = run(datablock_recover, args)
    assert applied["msg"] == ("%s: slot %d: released the write lock of dead pid %d "
                              "(WRITING → FREE) and scrubbed the torn bytes to zeros"
                              % (name, slot, dead)), applied["msg"]
    assert run(datablock_recover, args)["msg"] == "%s: nothing to do" % name
    other = name + "_live"
    lslot, live = lab.live_writer(other)
    refusals = [run(datablock_recover, {"name": other, "slot": lslot,
                                        "action": "release_writer"}, check_mode=check)["msg"]
                for check in (True, False)]
    assert refusals[0] == refusals[1] and "pid %d, verdict alive" % live in refusals[0]
    assert "would" not in refusals[0] and "released" not in refusals[0]


def test_slot_all_and_digit_strings(run, lab, name):
    slot, _dead = lab.stuck_writer(name)
    out = run(datablock_recover, {"name": name, "slot": "all", "action": "release_writer"},
              check_mode=True)
    assert not out.failed and out["changed"] is True
    assert len(out["recovery"]["outcomes"]) == 4
    assert out["recovery"]["result"] == "SUCCESS"
    out = run(datablock_recover, {"name": name, "slot": str(slot), "action": "release_writer"})
    assert not out.failed and out["changed"] is True and out["recovery"]["slot"] == slot


def test_live_holder_is_refused_with_pid_and_verdict(run, lab, name):
    slot, live = lab.live_writer(name)
    before = snapshot(name)
    for check_mode in (True, False):
        out = run(datablock_recover, {"name": name, "slot": slot, "action": "release_writer"},
                  check_mode=check_mode)
        assert out.failed, out
        assert "pid %d" % live in out["msg"] and "verdict alive" in out["msg"]
        assert out["code"] == "holder-alive"
        assert out["changed"] is False
        assert out["recovery"]["refused"][0]["holder"]["pid"] == live
    assert snapshot(name) == before
    assert lab.slot_words(name, slot)["write_lock"] == live


def test_force_releases_a_live_holder_with_a_warning(run, lab, name):
    slot, live = lab.live_writer(name)
    out = run(datablock_recover, {"name": name, "slot": slot, "action": "release_writer",
                                  "force": True})
    assert not out.failed and out["changed"] is True
    assert any("FORCED" in w and str(live) in w for w in out.warnings)
    assert lab.slot_words(name, slot)["write_lock"] == 0


def test_release_readers_of_a_dead_consumer(run, lab, name):
    slot, _pid = lab.stuck_reader(name)
    args = {"name": name, "slot": slot, "action": "release_readers"}
    before = snapshot(name)
    assert run(datablock_recover, args, check_mode=True)["changed"] is True
    assert snapshot(name) == before
    out = run(datablock_recover, args, diff=True)
    assert out["changed"] is True
    assert "reader_count: 1" in out["diff"]["before"]
    assert "reader_count: 0" in out["diff"]["after"]
    assert lab.slot_words(name, slot)["reader_count"] == 0
    assert run(datablock_recover, args)["changed"] is False


def test_heal_composite(run, lab, name):
    slot, _dead = lab.stuck_writer(name)
    args = {"name": name, "action": "heal"}
    before = snapshot(name)
    checked = run(datablock_recover, args, check_mode=True)
    assert not checked.failed and checked["changed"] is True
    assert checked["recovery"]["operation"] == "heal"
    assert checked["recovery"]["healthy"] is True     # predicted
    assert snapshot(name) == before
    out = run(datablock_recover, dict(args, slot="all"))
    assert not out.failed and out["changed"] is True and out["recovery"]["healthy"] is True
    assert lab.slot_words(name, slot)["write_lock"] == 0
    assert run(datablock_recover, args, check_mode=True)["changed"] is False
    assert run(datablock_recover, args)["changed"] is False


def test_heal_refuses_nothing_on_live_holder_but_changes_nothing(run, lab, name):
    _slot, _live = lab.live_writer(name)
    out = run(datablock_recover, {"name": name, "action": "heal"})
    # an alive holder is simply not stuck: nothing to do
    assert not out.failed and out["changed"] is False


def test_nothing_to_do_on_a_healthy_block(run, lab, name):
    lab.healthy(name)
    out = run(datablock_recover, {"name": name, "slot": "all", "action": "force_reset"})
    assert not out.failed and out["changed"] is False
    assert out["recovery"]["result"] == "NOT_STUCK"


def test_missing_block(run, name):
    out = run(datablock_recover, {"name": name, "slot": 0, "action": "release_writer"})
    assert out.failed and out["code"] == "not-found"
    assert name in out["msg"] and out["error"]["code"] == "not-found"
    assert "recovery" not in out.result


def test_slot_out_of_range(run, lab, name):
    lab.healthy(name)
    out = run(datablock_recover, {"name": name, "slot": 9, "action": "release_writer"})
    assert out.failed and out["code"] == "slot-out-of-range"
    assert "0..3" in out["msg"] and out["error"]["capacity"] == 4


@pytest.mark.parametrize("args, needle", [
    ({"slot": 0}, "missing required arguments: action"),
    ({"action": "release_writer"}, "slot"),
    ({"slot": 0, "action": "explode"}, "value of action must be one of"),
    ({"slot": "first", "action": "release_writer"}, "slot must be a slot index or 'all'"),
    ({"slot": True, "action": "release_writer"}, "slot must be a slot index"),
    ({"slot": 1.5, "action": "release_writer"}, "slot must be a slot index"),
    ({"slot": 0, "action": "heal"}, "omit slot or give slot=all"),
    ({"action": "heal", "force": True}, "never forced"),
    ({"slot": 0, "action": "release_writer", "repair": True}, "only accepted with action=heal"),
])
def test_argument_errors(run, lab, name, args, needle):
    lab.healthy(name)
    before = snapshot(name)
    out = run(datablock_recover, dict(args, name=name))
    assert out.failed and needle in out["msg"], out
    assert snapshot(name) == before


def test_name_is_required(run):
    out = run(datablock_recover, {"slot": 0, "action": "release_writer"})
    assert out.failed and "name" in out["msg"]


def test_invalid_name(run):
    out = run(datablock_recover, {"name": "../etc/passwd", "slot": 0,
                                  "action": "release_writer"})
    assert out.failed and out["code"] == "invalid-name"


@pytest.mark.usefixtures("without_third_party_libraries")
def test_recovers_with_the_standard_library_only(run, lab, name):
    """No third-party library is needed, and none is reported: the result carries the
    recovery, not an inventory of the host's Python packages."""
    slot, _dead = lab.stuck_writer(name)
    out = run(datablock_recover, {"name": name, "slot": slot, "action": "release_writer"})
    assert not out.failed and out["changed"] is True
    assert lab.slot_words(name, slot)["write_lock"] == 0
    assert "optional_libraries" not in out.result


def test_heal_all_in_one_call(run, lab, name):
    """all=true heals every block (here: those matching the test's pattern) in one call:
    check mode predicts, apply fixes, a second apply changes nothing."""
    stuck = name + "_w"
    slot, dead = lab.stuck_writer(stuck)
    args = {"all": True, "pattern": name + "_*", "action": "heal"}
    before = snapshot(stuck)

    checked = run(datablock_recover, args, check_mode=True)
    assert not checked.failed, checked
    assert checked["changed"] is True and snapshot(stuck) == before
    assert [b["address"] for b in checked["blocks"]] == [stuck]

    applied = run(datablock_recover, args)
    assert not applied.failed and applied["changed"] is True and applied["healthy"] is True
    assert applied["blocks"][0]["recovery"]["outcomes"][0]["holder"]["pid"] == dead
    assert lab.slot_words(stuck, slot)["write_lock"] == 0

    again = run(datablock_recover, args)
    assert not again.failed and again["changed"] is False


def test_all_only_with_heal(run, lab, name):
    out = run(datablock_recover, {"all": True, "action": "release_writer", "slot": 0})
    assert out.failed and out["code"] == "usage" and "action=heal" in out["msg"]


def _stopped(pid):
    """SIGSTOP ``pid`` and wait (a deadline, not a sleep) until the kernel says so."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while _procinfo.process_state(pid) not in ("T", "t"):
        assert time.monotonic() < deadline, "pid %d did not stop" % pid
        time.sleep(0.01)


def test_force_refused_forces_only_the_slots_heal_refused(run, lab, name):
    """A writer paused (SIGSTOP) holding its lock is suspect-hung: heal refuses it. An
    entry of force_refused for another slot, or another block, enables nothing; one for
    this slot (or all) forces it in the same call - predicted apart in check mode (the
    refusal stays, nothing is written) - and the block is healed again."""
    slot, live = lab.live_writer(name)
    _stopped(live)
    try:
        out = run(datablock_recover, {"name": name, "action": "heal"})
        assert out.failed and out["code"] == "holder-alive", out
        (refused,) = out["recovery"]["refused"]
        assert refused["slot"] == slot and "suspect-hung" in refused["message"]
        assert out["recovery"]["forced"] == []

        others = [{"name": name, "slot": slot + 1, "action": "release_writer"},
                  {"name": name + "_other", "slot": "all", "action": "release_writer"}]
        out = run(datablock_recover, {"name": name, "action": "heal", "force_refused": others})
        assert out.failed and out["recovery"]["forced"] == []
        assert lab.slot_words(name, slot)["write_lock"] == live

        enabled = [{"name": name, "slot": "all", "action": "release_writer",
                    "reason": "paused by the test"}]
        before = snapshot(name)
        checked = run(datablock_recover, {"name": name, "action": "heal",
                                          "force_refused": enabled}, check_mode=True)
        (forced,) = checked["recovery"]["forced"]
        assert (forced["slot"], forced["action"], forced["result"]) == (
            slot, "release_writer", "SUCCESS")
        assert checked["changed"] is True and checked["recovery"]["refused"]
        assert snapshot(name) == before, "check mode wrote to the block"

        applied = run(datablock_recover, {"name": name, "action": "heal",
                                          "force_refused": enabled})
        assert not applied.failed, applied
        recovery = applied["recovery"]
        (forced,) = recovery["forced"]
        assert forced["reason"] == "paused by the test" and forced["changed"] is True
        assert forced["warnings"] and "FORCED" in forced["warnings"][0]
        assert recovery["refused"] == [] and recovery["healthy"] is True
        assert any(o.get("slot") == slot for o in recovery["released"])
        assert "FORCED" in applied.warnings[0]
        words = lab.slot_words(name, slot)
        assert words["write_lock"] == 0 and words["slot_state"] == FREE
    finally:
        os.kill(live, signal.SIGCONT)


def test_force_refused_only_with_heal(run, lab, name):
    out = run(datablock_recover, {"name": name, "slot": 0, "action": "release_writer",
                                  "force_refused": [{"name": name, "slot": 0,
                                                     "action": "release_writer"}]})
    assert out.failed and out["code"] == "usage" and "force_refused" in out["msg"]
