"""One corruption per field validate checks: validate flags exactly that finding, and
repair re-blesses committed slots' checksums only (never uncommitted slots, never the
header, never state words)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
from ansible_collections.pylabhub.recovery.plugins.module_utils._errors import NotADataBlock

from .helpers import COMMITTED, DEAD_PID, DRAINING, WRITING, codes, file_bytes, image, poke

import plh_spec as spec


def u(value, size):
    return value.to_bytes(size, "little")


def flip(name, offset):
    poke(name, offset, bytes([image(name).data[offset] ^ 0xFF]))


def slot(i, word=None):
    """Offset of slot ``i``'s entry, or of its ``word`` (a name of ``plh_spec.SLOT_WORDS``)."""
    return spec.slot_entry(i) + (spec.SLOT_WORDS[word][0] if word else 0)


def data_off(name, i):
    img = image(name)
    return img.geo["ring"] + img.stride * i


def checksum_off(i, capacity=4):
    return spec.checksum_entry(i, capacity)


def resize(name, delta):
    path = "/dev/shm/" + name
    os.truncate(path, os.path.getsize(path) + delta)


# name -> (mutation, expected {(code, field or slot)}, severity of the findings)
CASES = {
    "version": (lambda n: poke(n, 4, u(2, 2)), {("unsupported-layout", "version")}, "error"),
    "layout_hash": (lambda n: flip(n, 2500), {("unsupported-layout", "header_layout_hash")},
                    "error"),
    "layout_checksum": (lambda n: flip(n, 2530), {("unsupported-layout", "layout_checksum")},
                        "error"),
    "total_block_size": (lambda n: poke(n, 8, u(image(n).total_block_size - 4096, 8)),
                         {("unsupported-layout", "total_block_size")}, "error"),
    "file_grown": (lambda n: resize(n, 4096), {("unsupported-layout", "total_block_size")},
                   "error"),
    "file_truncated": (lambda n: resize(n, -4096), {("truncated", "total_block_size")},
                       "error"),
    "slot_state": (lambda n: poke(n, slot(1, "state"), b"\x07"), {("invalid-slot-state", 1)},
                   "error"),
    "writer_waiting": (lambda n: poke(n, slot(1, "waiting"), b"\x01"),
                       {("invalid-writer-waiting", 1)}, "warning"),
    "orphaned": (lambda n: poke(n, slot(3, "state"), bytes([WRITING])), {("orphaned-slot", 3)},
                 "warning"),
    "reader_underflow": (lambda n: poke(n, slot(1, "readers"), u(0xFFFFFFFF, 4)),
                         {("reader-count-underflow", 1)}, "error"),
    "readers_in_free": (lambda n: poke(n, slot(3, "readers"), u(2, 4)),
                        {("readers-in-unreadable-slot", 3)}, "error"),
    "consumer_count": (lambda n: poke(n, 208, u(2, 4)),
                       {("consumer-count-mismatch", "active_consumer_count")}, "warning"),
    # commit_index 3 (= write_index) also puts slot 3 (FREE, never written, checksum all
    # zero) among the slots pylabhub's validate_integrity hashes (0..commit_index mod 4):
    # pylabhub fails on it, so ours now says so too (issue 10, item 5)
    "commit_index": (lambda n: poke(n, 192, u(image(n).write_index, 8)),
                     {("index-inconsistent", "commit_index"),
                      ("uncommitted-checksum-mismatch", 3)}, "error"),
    # the same inconsistency where pylabhub's range is slot 0 only (4 mod 4): just that
    "commit_index_ahead": (lambda n: poke(n, 192, u(image(n).write_index + 1, 8)),
                           {("index-inconsistent", "commit_index")}, "error"),
    # a claimed slot id no writer holds, the producer dead: an error heal repairs
    "write_index_ahead": (lambda n: poke(n, 184, u(image(n).write_index + 1, 8)),
                          {("index-out-of-step", "write_index")}, "error"),
    # a FREE slot in pylabhub's range whose bytes do not match its checksum
    "free_slot_torn": (lambda n: (poke(n, 192, u(3, 8)), poke(n, 184, u(4, 8)),
                                  poke(n, 432, u(4, 8)), poke(n, data_off(n, 3), b"torn")),
                       {("uncommitted-checksum-mismatch", 3)}, "error"),
    "checksum_mismatch": (lambda n: flip(n, data_off(n, 1) + 7), {("checksum-mismatch", 1)},
                          "error"),
    # Enforced: pylabhub's reader rejects an all-zero hash at release, as a wrong one
    "checksum_missing": (lambda n: poke(n, checksum_off(1), bytes(32)),
                         {("checksum-missing", 1)}, "error"),
}
REPAIRED = {"checksum_mismatch", "checksum_missing"}


@pytest.mark.parametrize("evidence", [True, False], ids=["evidence", "plain"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_flags_exactly_that(lab, case, evidence):
    mutate, expected, severity = CASES[case]
    name = lab.create(capacity=4, evidence=evidence, commits=3)
    clean = E.validate(name)
    assert clean["ok"] and not clean["findings"], clean["findings"]
    mutate(name)
    result = E.validate(name)
    assert codes(result) == expected, result["findings"]
    assert {f["severity"] for f in result["findings"]} == {severity}
    assert result["ok"] is (severity != "error")
    assert result["changed"] is False
    before = file_bytes(name)
    repaired = E.validate(name, repair=True)
    if case in REPAIRED:
        assert repaired["ok"] and [r["slot"] for r in repaired["reblessed"]] == [1]
        img = image(name)
        assert img.checksum_valid(1)
        diff = {i for i in range(len(before)) if before[i] != img.data[i]}
        entry = checksum_off(1)
        assert diff and all(entry <= i < entry + spec.CHECKSUM_ENTRY_SIZE or 304 <= i < 312 or 368 <= i < 376
                            for i in diff)
        assert E.validate(name)["findings"] == []
    else:                         # header and state problems are reported, never "fixed"
        assert not repaired["changed"] and not repaired["reblessed"]
        assert codes(repaired) == expected
        assert file_bytes(name) == before


@pytest.mark.parametrize("magic", [0xDEADBEEF, 0])
def test_bad_magic_is_not_a_datablock(lab, magic):
    name = lab.create(capacity=2, commits=1)
    poke(name, 0, u(magic, 4))
    before = file_bytes(name)
    for call in (lambda: E.validate(name), lambda: E.validate(name, repair=True),
                 lambda: E.diagnose(name), lambda: E.heal(name)):
        with pytest.raises(NotADataBlock) as err:
            call()
        assert err.value.code == "not-a-datablock"
    assert file_bytes(name) == before


def test_flex_zone_checksum_mismatch(lab):
    """Under Enforced a flex-zone mismatch rejects every read: an error, and (its producer
    dead) repair re-blesses exactly the zone's checksum entry."""
    name = lab.create(capacity=8, stride=64, flex_size=4096, commits=8)
    img = image(name)
    assert img.geo["flex"] == 8192 and img.geo["ring"] == 12288
    zone = bytes((i * 7) & 0xFF for i in range(4096))
    poke(name, 8192, zone)
    poke(name, 1984, spec.blake(zone))
    assert E.validate(name)["findings"] == []
    flip(name, 8192 + 1000)
    result = E.validate(name)
    assert codes(result) == {("flexzone-checksum-mismatch", "flexzone_checksum")}
    assert not result["ok"] and result["findings"][0]["repairable"]
    before = file_bytes(name)
    repaired = E.validate(name, repair=True)
    assert repaired["ok"] and repaired["changed"]
    assert [r["target"] for r in repaired["reblessed"]] == ["flexzone_checksum"]
    after = file_bytes(name)
    assert after[1984:2016] == spec.blake(after[8192:8192 + 4096]) and after[2016] == 0
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert diff and all(1984 <= i < 2017 or 304 <= i < 312 or 368 <= i < 376 for i in diff)
    assert E.validate(name)["findings"] == []


@pytest.mark.parametrize("state", [WRITING, DRAINING])
def test_repair_never_touches_uncommitted_slots(lab, state):
    """A slot a (dead) writer holds keeps its bad checksum byte for byte: only COMMITTED
    slots are re-blessed."""
    name = lab.create(capacity=4, commits=3)
    poke(name, slot(1), u(DEAD_PID, 8))
    poke(name, slot(1, "state"), bytes([state]))
    if state == DRAINING:
        poke(name, slot(1, "waiting"), b"\x01")
    flip(name, data_off(name, 1) + 5)
    flip(name, data_off(name, 2) + 5)              # and a committed slot, repairable
    result = E.validate(name)
    if state == DRAINING:   # its data is still the committed data: checked, not repairable
        assert codes(result) == {("checksum-mismatch", 1), ("checksum-mismatch", 2)}
        assert [f["repairable"] for f in result["findings"]] == [False, True]
    else:                   # being written: no checksum to check
        assert codes(result) == {("checksum-mismatch", 2)}
    img0 = image(name)
    repaired = E.validate(name, repair=True)
    assert [r["slot"] for r in repaired["reblessed"]] == [2]
    img = image(name)
    assert img.slot(1) == img0.slot(1) and img.slot_data(1) == img0.slot_data(1)
    assert img.checksum(1) == img0.checksum(1) and not img.checksum_valid(1)
    assert img.checksum_valid(2) and img.slot(2)["state"] == COMMITTED
    assert repaired["ok"] is (state == WRITING)


def test_repair_skips_committed_slot_whose_lock_is_held(lab):
    """A COMMITTED slot whose lock a dead writer still holds is not re-blessed behind the
    lock (release the writer first): the attempt is reported and nothing changes."""
    name = lab.create(capacity=4, commits=3)
    poke(name, slot(1), u(DEAD_PID, 8))
    flip(name, data_off(name, 1) + 5)
    before = file_bytes(name)
    repaired = E.validate(name, repair=True)
    assert not repaired["ok"] and not repaired["reblessed"] and not repaired["changed"]
    (f,) = repaired["findings"]
    assert f["code"] == "checksum-mismatch" and "repair cannot re-bless it" in f["message"]
    assert file_bytes(name) == before
