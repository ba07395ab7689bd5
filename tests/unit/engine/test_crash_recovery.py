"""Crash, then recover: real processes SIGKILLed at each protocol point, the matching
engine operation (or heal), then proof that the block works again and that no committed
slot's bytes or checksum changed."""

from __future__ import annotations

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E

from .helpers import (COMMITTED, DRAINING, FREE, SCENARIOS, WRITER_POINTS, assert_untouched,
                      complete_scope, image, payload, prove_works)

MATCHING = dict({p: ("release_writer",) for p in WRITER_POINTS},
                reader=("release_readers",), consumer=("cleanup",),
                draining_live_writer=("release_readers",), deadlock=("force_reset",))


def run(op, crash):
    if op == "heal":
        return E.heal(crash.name)
    action = MATCHING[crash.scenario][0]
    if action == "cleanup":
        return E.cleanup(crash.name)
    return E.recover(crash.name, crash.slot, action)


def check_stuck_before(crash, evidence):
    diag = E.diagnose(crash.name)
    if crash.scenario == "consumer":
        assert [c["verdict"]["state"] for c in diag["consumers"]] == ["dead"]
        assert not diag["stuck_slots"]
        return
    if crash.scenario == "draining_live_writer" and not (evidence
                                                         and complete_scope(crash.name)):
        # no evidence and a live producer, or a partial scope (an unseen process could
        # be inside): the readers cannot be proved dead
        assert not diag["stuck_slots"]
        return
    assert diag["stuck_slots"] == [crash.slot], diag["slots"]
    slot = {s["index"]: s for s in diag["slots"]}[crash.slot]   # the slots not plain
    expected = {"reader": "release_readers", "draining_live_writer": "release_readers",
                "deadlock": "force_reset"}.get(crash.scenario, "release_writer")
    assert slot["action"] == expected, slot


@pytest.mark.parametrize("evidence", [True, False], ids=["evidence", "plain"])
@pytest.mark.parametrize("op", ["matching", "heal"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_crash_then_recover(lab, scenario, op, evidence):
    crash = lab.crashed(scenario, evidence)
    name, s = crash.name, crash.slot
    check_stuck_before(crash, evidence)
    before_img = image(name)

    if scenario == "draining_live_writer" and not (evidence and complete_scope(name)):
        # refused without force (heal leaves it alone), the bytes stay; forcing frees it
        result = run(op, crash)
        if op == "matching":
            assert result["result"] == "UNSAFE" and not result["ok"] and not result["changed"]
        else:                               # heal clears the dead consumer's entry only
            assert not [c for c in result["changes"] if c["target"].startswith("slot")]
        assert image(name).slot(s) == before_img.slot(s)
        result = E.recover(name, s, "release_readers", force=True)
        assert result["ok"] and result["warnings"] and "FORCED" in result["warnings"][0]
    else:
        result = run(op, crash)
        assert result["ok"] and result["changed"], result
        if op == "heal":
            assert result["healthy"], result["after"]

    img = image(name)
    skip = ()
    if scenario in WRITER_POINTS:
        slot = img.slot(s)
        assert slot["lock"] == 0 and slot["waiting"] == 0
        if scenario == "locked":            # the lock was taken on a committed slot
            assert slot["state"] == COMMITTED
        else:                               # the dead writer's claim is undone
            assert slot["state"] == FREE
            assert img.write_index == crash.last_good + 1
            skip = (s,)
        assert img.commit_index == crash.last_good
    elif scenario == "reader":
        assert img.slot(s)["readers"] == 0 and img.slot(s)["state"] == COMMITTED
    elif scenario == "consumer":
        assert img.consumer(0)["pid"] == 0 and img.active_consumers == 0
    elif scenario == "draining_live_writer":
        ids = crash.writer.recv()["ids"]    # the writer finishes its commit
        assert len(ids) == 1
        crash.last_good = ids[0]
        crash.writer.kill()
        img = image(name)
        assert img.commit_index == ids[0] and img.slot(s)["state"] == COMMITTED
        assert img.slot_data(s) == payload(ids[0], img.stride) and img.checksum_valid(s)
        skip = (s,)
    elif scenario == "deadlock":
        slot = img.slot(s)
        assert (slot["lock"], slot["readers"], slot["waiting"]) == (0, 0, 0)
        assert slot["state"] == COMMITTED   # the writer never touched the data
        assert img.write_index == crash.last_good + 1
    assert_untouched(name, crash.before, skip=skip)
    assert not [x for x in range(img.capacity) if img.slot(x)["state"] == DRAINING]
    prove_works(lab, name, crash.last_good)
