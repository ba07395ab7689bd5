"""Spec section 7 (upstream's own recovery scenarios) through the engine's front door,
on blocks our runtime made (with and without recovery evidence) and on copies of the
real pylabhub fixtures; plus the fixtures' own crash states."""

from __future__ import annotations

import os

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
from ansible_collections.pylabhub.recovery.plugins.module_utils._errors import NotADataBlock

from .helpers import (COMMITTED, DEAD_PID, FREE, WRITING, assert_untouched, codes,
                      committed_snapshot, file_bytes, image, publish_in_child)

KINDS = ("evidence", "plain", "fixture")
RECOVERY_ACTIONS = 368


def poke(name: str, offset: int, size: int, value: int) -> None:
    fd = os.open("/dev/shm/" + name, os.O_RDWR)
    try:
        os.pwrite(fd, value.to_bytes(size, "little"), offset)
    finally:
        os.close(fd)


def slot_off(i: int) -> int:
    return 4096 + 64 * i


def make(lab, kind: str, committed: bool = True):
    """(name, writer slot, committed slot) for one kind of block.

    Runtime blocks: 2 slots x 4096, RingBuffer, Latest_only, created by a producer that
    committed slot 0 and exited. Fixture: a_committed (slots 0-2 committed, 3 FREE)."""
    if kind == "fixture":
        return lab.fixture("a_committed_producer_killed.bin"), 3, 0
    name = lab.create(capacity=2, stride=4096, evidence=(kind == "evidence"),
                      commits=1 if committed else 0)
    img = image(name)
    assert (img.capacity, img.stride, img.policy, img.sync) == (2, 4096, 2, 0)
    return name, 0, 0


@pytest.mark.parametrize("kind", KINDS)
def test_1_zombie_writer_released(lab, kind):
    name, s, unused_committed = make(lab, kind, committed=False)
    poke(name, slot_off(s), 8, DEAD_PID)
    poke(name, slot_off(s) + 12, 1, WRITING)
    result = E.recover(name, s, "release_writer")
    assert result["ok"] and result["changed"] and result["result"] == "SUCCESS"
    assert result["outcomes"][0]["holder"]["state"] == "dead"
    img = image(name)
    assert img.slot(s)["lock"] == 0 and img.slot(s)["state"] == FREE
    assert img.u(RECOVERY_ACTIONS, 8) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_2_zombie_readers_released_without_force(lab, kind):
    name, unused_writer, s = make(lab, kind)
    before = committed_snapshot(name)
    assert s in before
    poke(name, slot_off(s) + 8, 4, 3)
    result = E.recover(name, s, "release_readers")
    assert result["ok"] and result["result"] == "SUCCESS", result["outcomes"]
    img = image(name)
    assert img.slot(s)["readers"] == 0 and img.slot(s)["state"] == COMMITTED
    assert_untouched(name, before)
    assert img.u(RECOVERY_ACTIONS, 8) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_3_force_reset_of_dead_writer_needs_no_force(lab, kind):
    name, s, unused_committed = make(lab, kind, committed=False)
    poke(name, slot_off(s), 8, DEAD_PID)
    poke(name, slot_off(s) + 12, 1, WRITING)
    result = E.recover(name, s, "force_reset")
    assert result["ok"] and result["result"] == "SUCCESS" and not result["warnings"]
    slot = image(name).slot(s)
    assert (slot["lock"], slot["state"], slot["readers"]) == (0, FREE, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_4_dead_consumer_cleaned(lab, kind):
    name, unused_writer, unused_committed = make(lab, kind)
    count = image(name).active_consumers
    poke(name, 496, 8, DEAD_PID)
    poke(name, 208, 4, count + 1)
    result = E.cleanup(name)
    assert result["ok"] and result["changed"] and result["cleaned"] == 1
    img = image(name)
    assert img.consumer(0)["pid"] == 0
    assert img.active_consumers == count
    assert img.u(RECOVERY_ACTIONS, 8) >= 1


@pytest.mark.parametrize("kind", KINDS)
def test_5_liveness_dead_pid_dead_own_pid_alive(lab, kind):
    name, s, unused_committed = make(lab, kind, committed=False)
    poke(name, slot_off(s), 8, DEAD_PID)
    poke(name, slot_off(s) + 12, 1, WRITING)
    slot = E.diagnose(name, s)["slots"][0]
    assert slot["writer"]["state"] == "dead" and slot["is_stuck"]
    # Our own pid is alive as a holder while this process has the block mapped (a
    # process holds a block's words only through its mapping: kernel truth first).
    poke(name, slot_off(s), 8, os.getpid())
    with R.attach(name):
        slot = E.diagnose(name, s)["slots"][0]
        assert slot["writer"]["state"] == "alive" and not slot["is_stuck"]
        assert slot["writer"]["process"]["pid"] == os.getpid()
    # Changed rule (was: "own pid exists, so alive"): without the mapping this process
    # holds nothing in the block, so the pid is not the holder -- dead.
    slot = E.diagnose(name, s)["slots"][0]
    assert slot["writer"]["state"] == "dead" and slot["is_stuck"]
    assert any("exclusive lease" in e for e in slot["writer"]["evidence"]), slot["writer"]


@pytest.mark.parametrize("kind", KINDS)
def test_6_live_writer_refused(lab, kind):
    name, s, unused_committed = make(lab, kind, committed=False)
    poke(name, slot_off(s), 8, os.getpid())
    poke(name, slot_off(s) + 12, 1, WRITING)
    before = file_bytes(name)
    with R.attach(name):      # the live writer (this process) has the block mapped
        for action in ("force_reset", "release_writer"):
            result = E.recover(name, s, action)
            assert result["result"] == "UNSAFE" and not result["ok"] and not result["changed"]
            assert result["refused"] and result["refused"][0]["holder"]["state"] == "alive"
            assert "alive" in result["refused"][0]["message"]
    assert file_bytes(name) == before


@pytest.mark.parametrize("kind", KINDS)
def test_7_integrity(lab, kind):
    name, unused_writer, unused_committed = make(lab, kind, committed=False)
    assert E.validate(name)["ok"]
    publish_in_child(lab, name, 2)          # two checksummed writes
    result = E.validate(name)
    assert result["ok"] and not result["findings"], result["findings"]
    # a flipped layout checksum byte fails, even with repair, and repair writes nothing
    poke(name, 2528, 1, image(name).data[2528] ^ 0xFF)
    before = file_bytes(name)
    for repair in (False, True):
        result = E.validate(name, repair=repair)
        assert not result["ok"]
        assert codes(result) == {("unsupported-layout", "layout_checksum")}
    assert file_bytes(name) == before
    poke(name, 2528, 1, image(name).data[2528] ^ 0xFF)
    assert E.validate(name)["ok"]
    poke(name, 0, 4, 0xDEADBEEF)
    with pytest.raises(NotADataBlock):
        E.validate(name)
    with pytest.raises(NotADataBlock):
        E.validate(name, repair=True)


# -- the fixtures' own states ---------------------------------------------------------------
def test_fixture_a_diagnose_dead_producer_otherwise_healthy(lab):
    name = lab.fixture("a_committed_producer_killed.bin")
    result = E.diagnose(name)
    assert result["producer"]["verdict"]["state"] == "dead"
    assert [f["code"] for f in result["findings"]] == ["dead-producer"]
    assert result["healthy"] and not result["stuck_slots"] and not result["suspect_slots"]
    assert result["slots"] == [] and result["slot_counts"]["plain"] == 4   # listed: none
    every = E.diagnose(name, all_slots=True)["slots"]
    assert [s["state"] for s in every] == ["COMMITTED"] * 3 + ["FREE"]
    assert result["block"]["write_index"] == 3 and result["block"]["commit_index"] == 2
    assert E.validate(name)["ok"]


def test_fixture_b_stuck_writer_heals(lab):
    name = lab.fixture("b_stuck_writer.bin")
    img = image(name)
    assert img.slot(3)["state"] == WRITING and img.slot(3)["lock"] != 0
    before = committed_snapshot(name)
    assert sorted(before) == [0, 1, 2]
    diag = E.diagnose(name)
    assert diag["stuck_slots"] == [3] and [s["index"] for s in diag["slots"]] == [3]
    assert diag["slots"][0]["action"] == "release_writer"
    result = E.heal(name)
    assert result["ok"] and result["healthy"] and result["changed"], result
    img = image(name)
    assert (img.slot(3)["state"], img.slot(3)["lock"]) == (FREE, 0)
    assert img.write_index == 3 and img.commit_index == 2
    assert_untouched(name, before)
    assert E.heal(name)["changed"] is False


def test_fixture_b_release_writer(lab):
    name = lab.fixture("b_stuck_writer.bin")
    before = committed_snapshot(name)
    result = E.recover(name, 3, "release_writer")
    assert result["ok"] and result["result"] == "SUCCESS"
    targets = {c["target"]: (c["before"], c["after"]) for c in result["changes"]}
    assert targets["header.write_index"] == (4, 3)
    assert targets["slot[3].slot_state"] == (WRITING, FREE)
    img = image(name)
    assert (img.slot(3)["state"], img.slot(3)["lock"], img.write_index) == (FREE, 0, 3)
    assert_untouched(name, before)


def test_fixture_f_corrupt_slot(lab):
    name = lab.fixture("f_corrupt_slot.bin")
    result = E.validate(name)
    assert not result["ok"]
    assert codes(result) == {("checksum-mismatch", 1)}
    before = file_bytes(name)
    intact = committed_snapshot(name)
    repaired = E.validate(name, repair=True)
    assert repaired["ok"] and repaired["changed"]
    assert [r["slot"] for r in repaired["reblessed"]] == [1]
    assert {c["target"] for c in repaired["changes"]} >= {"slot[1].checksum"}
    assert not [c for c in repaired["changes"] if c["target"].startswith(("slot[0]", "slot[2]",
                                                                          "slot[3]"))]
    after = file_bytes(name)
    img = image(name)
    assert img.checksum_valid(1) and img.slot_data(1) == intact[1][1]
    assert_untouched(name, intact, skip=(1,))
    # outside slot 1's checksum entry and the recovery bookkeeping, nothing changed
    entry = 4096 + 64 * 4 + 33
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert diff and all(entry <= i < entry + 33 or 304 <= i < 312 or 368 <= i < 376
                        for i in diff), diff
    assert E.validate(name)["ok"]
    assert E.validate(name, repair=True)["changed"] is False
