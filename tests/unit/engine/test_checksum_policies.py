"""Checksum policies and the flexible zone, judged as pylabhub's readers judge them.

pylabhub's ``release_consume_slot`` verifies the slot and the flexible zone (an all-zero
hash included, no cached "verified" byte honoured) only under the Enforced policy; the
producer stamps them at every commit only under Enforced (docs/configurations.md). So:

* Enforced: a wrong slot hash is an error; a wrong flex-zone hash rejects *every* read, a
  block-level error that diagnose, heal and validate all report; repair re-blesses it once
  no live producer can be writing the zone (real fixture j, our own producers);
* Manual: a stale or missing hash is information, the block healthy, repair writes no
  checksum (real fixture k, our own producers stamping some slots);
* None: nothing checked, nothing written.

Our producers and consumers run as real processes, killed (SIGKILL) or paused (SIGSTOP)
mid flex-zone update and mid-commit, in every policy with and without a flexible zone.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _layout as L, _runtime as R)

from .helpers import COMMITTED, FREE, WRITING, codes, file_bytes, image, payload

import plh_spec as spec

POLICIES = {"NONE": L.ChecksumPolicy.NONE, "MANUAL": L.ChecksumPolicy.MANUAL,
            "ENFORCED": L.ChecksumPolicy.ENFORCED}
CAPACITY, STRIDE, FLEX = 4, 4096, 4096
COMMITS = 6                       # one lap and a half: slots 0 and 1 hold a second lap
RECOVERY_BOOKKEEPING = set(range(304, 312)) | set(range(368, 376))
INFO_ONLY_CODES = {"checksum-unstamped", "flexzone-checksum-unstamped", "checksums-not-checked"}


def zone(lap: int) -> bytes:
    return bytes((i * 7 + lap * 131) & 0xFF for i in range(FLEX))


def poke(name: str, offset: int, data: bytes) -> None:
    fd = os.open("/dev/shm/" + name, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def changed_bytes(before: bytes, after: bytes) -> set:
    return {i for i in range(len(before)) if before[i] != after[i]}


def checksum_bytes(img: spec.Image) -> bytes:
    """Every byte a checksum lives in: the slot checksum table and the flex-zone entry."""
    table = img.geo["checksums"]
    return (img.data[table:table + spec.CHECKSUM_ENTRY_SIZE * img.capacity]
            + img.data[1984:2017])


def agree(name: str) -> tuple:
    """(diagnose healthy, validate ok, heal healthy, heal changed) of the block as it is;
    heal without repair, so it writes no checksum."""
    diag, valid, healed = E.diagnose(name), E.validate(name), E.heal(name)
    return diag["healthy"], valid["ok"], healed["healthy"], healed["changed"]


# -- processes ------------------------------------------------------------------------------
def producer_program(report, name: str, policy: int, flex: int, point: str) -> None:
    """Create a block of ``policy`` (and a flexible zone of ``flex`` bytes), commit
    ``COMMITS`` slots as a pylabhub producer of that policy does (Enforced stamps every
    commit and the zone; Manual stamps slot ids 0 and 3 and the zone once; None nothing),
    then stop at ``point``: mid_flex (half of a new zone written, no stamp), mid_commit
    (slot written, stamped as the policy does, generation bumped, still WRITING) or idle."""
    b = R.create(name, capacity=CAPACITY, stride=STRIDE, flex_size=flex, evidence=False,
                 checksum_policy=policy)
    p = R.Producer(b)
    if flex:
        p.write_flex(zone(0))
    for dummy in range(COMMITS):
        ws = p.acquire()
        p.write(ws, payload(ws.slot_id, STRIDE))
        if policy == L.ChecksumPolicy.MANUAL and ws.slot_id % 3 == 0:
            p.stamp_slot(ws)
            if flex and ws.slot_id == 0:
                p.stamp_flex()
        p.commit(ws)
    if point == "mid_flex":
        p.write_flex(zone(1)[:FLEX // 2])
    elif point == "mid_commit":
        ws = p.acquire()
        p.write(ws, payload(ws.slot_id, STRIDE))
        if policy == L.ChecksumPolicy.ENFORCED:
            p.stamp_slot(ws)
            if flex:
                p.stamp_flex()
        b.add(L.SLOT["write_generation"], 1, b.geo.slot_entry(ws.index))
    elif point != "idle":
        raise ValueError(point)
    report({"pid": os.getpid()})


def consumer_program(report, name: str) -> None:
    """A registered consumer reads the latest commit as pylabhub's reader of the block's
    policy does, unregisters, and reports whether the read was accepted."""
    b = R.attach(name)
    c = R.Consumer(b, name="policy-reader")
    rs = c.acquire()
    try:
        data = c.read(rs)
        ours_or_cpp = data == payload(rs.slot_id, STRIDE) or (   # fixtures: C++ payload
            data[:8] == b"INTEROP1" and int.from_bytes(data[8:16], "little") == rs.slot_id)
        verdict = "ok" if ours_or_cpp else "wrong data"
    except Exception as exc:  # the reader's own rejection, as pylabhub returns it
        verdict = "rejected: %s" % exc
    finally:
        c.release(rs)
        c.unregister()            # leaves no entry behind for the test's later verdicts
    report({"pid": os.getpid(), "read": verdict, "slot_id": rs.slot_id})


def read_now(lab, name: str) -> str:
    c = lab.child(consumer_program, name)
    verdict = c.recv()["read"]
    c.kill()
    return verdict


def crashed(lab, policy: str, flex: int, point: str) -> str:
    name = lab.name()
    w = lab.child(producer_program, name, POLICIES[policy], flex, point)
    w.recv()
    w.kill()
    return name


# -- the real fixtures --------------------------------------------------------------------
def test_fixture_j_flex_zone_mismatch_is_a_block_error_everywhere(lab):
    """Fixture j: one flipped flex-zone byte, the cached "verified" byte still 1. Every
    Enforced C++ read is rejected, so diagnose, validate and heal all say unhealthy (today
    diagnose said healthy); heal without repair writes nothing."""
    name = lab.fixture("j_flex_zone_corrupt.bin")
    img = image(name)
    assert img.checksum_policy == 2 and img.flex_size == FLEX and img.data[2016] == 1
    assert img.data[1984:2016] != spec.blake(img.data[8192:8192 + FLEX])
    before = file_bytes(name)

    diag = E.diagnose(name)
    (flex,) = [f for f in diag["findings"] if f["code"] == "flexzone-checksum-mismatch"]
    assert flex["severity"] == "error" and flex.get("slot") is None
    assert "every checksummed read is rejected" in flex["message"]
    assert "verified" in flex["message"]           # the stale cached byte is called out
    assert not diag["healthy"] and not diag["stuck_slots"]
    one_slot = E.diagnose(name, slot=1)            # a block finding shows on any slot's view
    assert "flexzone-checksum-mismatch" in {f["code"] for f in one_slot["findings"]}
    assert not one_slot["healthy"]

    result = E.validate(name)
    assert codes(result) == {("flexzone-checksum-mismatch", "flexzone_checksum")}
    assert not result["ok"] and result["findings"][0]["repairable"]
    assert result["checksum_policy"] == "ENFORCED"
    healed = E.heal(name)
    assert not healed["healthy"] and not healed["changed"]
    assert "flexzone-checksum-mismatch" in {f["code"] for f in healed["after"]["findings"]}
    assert file_bytes(name) == before              # re-blessed only with repair


def test_fixture_j_repair_reblesses_exactly_the_flex_checksum(lab):
    name = lab.fixture("j_flex_zone_corrupt.bin")
    before = file_bytes(name)
    slots_before = [image(name).slot(i) for i in range(CAPACITY)]
    dry = E.heal(name, repair=True, dry_run=True)
    assert dry["healthy"] and dry["changed"] and file_bytes(name) == before
    repaired = E.validate(name, repair=True)
    assert repaired["ok"] and repaired["changed"]
    assert repaired["reblessed"] == [{"target": "flexzone_checksum",
                                      "before": before[1984:2016].hex(),
                                      "after": spec.blake(before[8192:8192 + FLEX]).hex()}]
    assert [f.get("repaired") for f in repaired["findings"]] == [True]
    targets = [c["target"] for c in repaired["changes"]]
    assert targets[:2] == ["header.flexzone_checksum_verified", "header.flexzone_checksum"]
    assert [c["target"] for c in dry["changes"]][:2] == targets[:2]   # predicted exactly
    after = file_bytes(name)
    # the zone's hash, the "verified" byte cleared (fresh, unverified), the bookkeeping;
    # not one data, slot or slot-checksum byte
    assert after[1984:2016] == spec.blake(after[8192:8192 + FLEX]) and after[2016] == 0
    assert after[8192:] == before[8192:]
    assert changed_bytes(before, after) <= set(range(1984, 2017)) | RECOVERY_BOOKKEEPING
    assert [image(name).slot(i) for i in range(CAPACITY)] == slots_before
    assert E.diagnose(name)["healthy"] and E.validate(name)["ok"] and E.heal(name)["healthy"]
    again = E.validate(name, repair=True)
    assert again["ok"] and not again["changed"] and not again["reblessed"]
    assert read_now(lab, name) == "ok"             # a checksummed read is accepted again


def test_fixture_k_manual_stale_hashes_are_information(lab):
    """Fixture k (Manual): slots 0 and 3 keep the previous lap's hash. C++ reads of them
    succeed, so they are information only, the block is healthy, and repair writes no
    checksum the producer did not (today: errors, and repair would re-bless them)."""
    name = lab.fixture("k_manual_policy_stale_hash.bin")
    before = file_bytes(name)
    result = E.validate(name)
    assert result["ok"] and result["checksum_policy"] == "MANUAL"
    assert codes(result) == {("checksum-unstamped", 0), ("checksum-unstamped", 3)}
    assert {f["severity"] for f in result["findings"]} == {"info"}
    assert not any(f["repairable"] for f in result["findings"])
    assert agree(name) == (True, True, True, False)
    for call in (lambda: E.validate(name, repair=True), lambda: E.heal(name, repair=True)):
        out = call()
        assert not out["changed"] and not out["changes"]
        checked = out.get("validate", out)
        assert checked["valid"] and checked["reblessed"] == []
        assert all("repair cannot re-bless it: the Manual checksum policy" in f["message"]
                   for f in checked["findings"])
    assert file_bytes(name) == before
    assert read_now(lab, name) == "ok"             # id 9 (slot 1), as C++ reads it


def test_fixture_f_stays_an_error_under_enforced(lab):
    name = lab.fixture("f_corrupt_slot.bin")
    result = E.validate(name)
    assert result["checksum_policy"] == "ENFORCED" and not result["ok"]
    assert [(f["code"], f["severity"], f["slot"]) for f in result["findings"]] == [
        ("checksum-mismatch", "error", 1)]
    assert not E.heal(name)["healthy"]


# -- our own producers and consumers, every policy x flex zone ------------------------------
MATRIX = [(policy, flex) for policy in POLICIES for flex in (0, FLEX)]


@pytest.mark.parametrize("policy,flex", MATRIX, ids=["%s-flex%d" % m for m in MATRIX])
def test_idle_producer_every_policy(lab, policy, flex):
    """A producer of each policy commits past a wrap and dies idle; a consumer reads as the
    policy's C++ reader does. Only what that reader would reject is an error: nothing here;
    Manual's unstamped slots are information; repair writes no checksum."""
    name = crashed(lab, policy, flex, "idle")
    assert read_now(lab, name) == "ok"
    result = E.validate(name)
    assert result["ok"] and result["checksum_policy"] == policy
    found = codes(result)
    if policy == "ENFORCED":
        assert found == set()
    elif policy == "MANUAL":     # ids 4, 1, 2 never stamped (slot 0 keeps id 0's hash)
        assert found == {("checksum-unstamped", 0), ("checksum-unstamped", 1),
                         ("checksum-unstamped", 2)}
    else:
        assert found == {("checksums-not-checked", "checksum_policy")}
    assert {f["severity"] for f in result["findings"]} <= {"info"}
    assert agree(name) == (True, True, True, False)
    before = checksum_bytes(image(name))
    out = E.validate(name, repair=True)
    assert not out["changed"] and out["reblessed"] == []
    assert checksum_bytes(image(name)) == before


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_producer_killed_mid_flex_update(lab, policy):
    """Killed after writing half of a new flex zone, before stamping it. Under Enforced
    every C++ read is now rejected: diagnose, validate and heal all say unhealthy, until
    repair re-blesses the zone (the producer is dead); under Manual and None reads succeed,
    all three say healthy, and repair writes no checksum."""
    name = crashed(lab, policy, FLEX, "mid_flex")
    img = image(name)
    assert img.data[8192:8192 + FLEX // 2] == zone(1)[:FLEX // 2]
    if policy == "ENFORCED":
        assert read_now(lab, name).startswith("rejected: ")
        before = file_bytes(name)                  # after the reader's own counters moved
        assert agree(name) == (False, False, False, False)
        assert {f["code"] for f in E.diagnose(name)["findings"]} >= {
            "flexzone-checksum-mismatch"}
        assert file_bytes(name)[1984:2017] == before[1984:2017]
        healed = E.heal(name, repair=True)
        assert healed["healthy"] and [r["target"] for r in healed["validate"]["reblessed"]] \
            == ["flexzone_checksum"]
        after = file_bytes(name)
        assert after[1984:2016] == spec.blake(after[8192:8192 + FLEX])
        assert changed_bytes(before, after) <= set(range(1984, 2017)) | RECOVERY_BOOKKEEPING
        assert read_now(lab, name) == "ok"
    else:
        assert read_now(lab, name) == "ok"
        before = file_bytes(name)
        assert agree(name) == (True, True, True, False)
        healed = E.heal(name, repair=True)
        assert healed["healthy"] and not healed["changed"]
        assert checksum_bytes(image(name)) == checksum_bytes(spec.Image(before))
    assert agree(name) == (True, True, True, False)


@pytest.mark.parametrize("policy,flex", MATRIX, ids=["%s-flex%d" % m for m in MATRIX])
def test_producer_killed_mid_commit(lab, policy, flex):
    """Killed inside a commit (stamped as its policy stamps, generation bumped, still
    WRITING): the slot is stuck until heal releases it; then diagnose, validate and heal
    agree on healthy in every policy, and no checksum was written by recovery."""
    name = crashed(lab, policy, flex, "mid_commit")
    index = COMMITS % CAPACITY
    assert image(name).slot(index)["state"] == WRITING
    diag = E.diagnose(name)
    assert diag["stuck_slots"] == [index] and not diag["healthy"]
    before = checksum_bytes(image(name))
    healed = E.heal(name, repair=True)
    assert healed["healthy"] and healed["changed"] and healed["validate"]["reblessed"] == []
    img = image(name)
    assert img.slot(index)["state"] == FREE and img.slot(index)["lock"] == 0
    assert checksum_bytes(img) == before
    assert all(img.slot(i)["state"] == COMMITTED for i in range(CAPACITY) if i != index)
    assert agree(name) == (True, True, True, False)
    assert read_now(lab, name) == "ok"


# -- a live producer is never raced ---------------------------------------------------------
def test_flex_rebless_refused_while_the_producer_lives(lab):
    """Paused (SIGSTOP) mid flex-zone update, the producer is alive: the mismatch is an
    error, but repair does not re-bless a zone a live producer may be writing (it restamps
    it itself at its next commit). It says so and writes nothing; once the producer is
    dead, the same repair goes through."""
    name = lab.name()
    w = lab.child(producer_program, name, L.ChecksumPolicy.ENFORCED, FLEX, "mid_flex")
    w.recv()
    w.stop()
    before = file_bytes(name)
    repaired = E.validate(name, repair=True)
    assert not repaired["ok"] and not repaired["changed"] and repaired["reblessed"] == []
    (f,) = repaired["findings"]
    assert f["code"] == "flexzone-checksum-mismatch" and not f.get("repaired")
    assert "repair cannot re-bless it: producer pid %d" % w.pid in f["message"]
    healed = E.heal(name, repair=True)
    assert not healed["healthy"] and not healed["changed"]
    assert not E.diagnose(name)["healthy"]
    assert file_bytes(name) == before
    w.kill()
    assert E.validate(name, repair=True)["ok"]
    assert agree(name) == (True, True, True, False)


def test_flex_rebless_refused_while_a_live_process_holds_a_header_spinlock(lab):
    """pylabhub hands its header spinlocks to applications, which may guard the zone with
    one: a spinlock held by a possibly-live pid stops the re-bless."""
    name = lab.fixture("j_flex_zone_corrupt.bin")
    poke(name, 1728 + 32 * 2, os.getpid().to_bytes(8, "little"))
    before = file_bytes(name)
    out = E.validate(name, repair=True)
    assert not out["ok"] and not out["changed"]
    assert "header spinlock 2 is held by pid %d" % os.getpid() in out["findings"][0]["message"]
    assert file_bytes(name) == before


def test_flex_checksum_missing_after_commits_is_an_error(lab):
    """Under Enforced the producer stamps the zone at every commit and a reader rejects an
    all-zero hash: none at all, once slots were committed, rejects every read."""
    name = crashed(lab, "ENFORCED", FLEX, "idle")
    poke(name, 1984, bytes(33))
    result = E.validate(name)
    assert codes(result) == {("flexzone-checksum-missing", "flexzone_checksum")}
    assert not result["ok"] and not E.diagnose(name)["healthy"]
    assert read_now(lab, name).startswith("rejected: ")
    assert E.validate(name, repair=True)["ok"]
    assert read_now(lab, name) == "ok"


def test_unknown_checksum_policy_is_a_warning_and_checked_as_manual(lab):
    """A checksum_policy value the format does not define (the field is outside the layout
    checksum): pylabhub's readers then check nothing; we warn and report as under Manual,
    and repair writes no checksum."""
    name = crashed(lab, "ENFORCED", 0, "idle")
    poke(name, 176, (7).to_bytes(4, "little"))
    poke(name, spec.checksum_entry(1, CAPACITY) + 5, b"\xAA")     # slot 1's hash now wrong
    result = E.validate(name)
    assert result["ok"] and result["checksum_policy"] == "UNKNOWN(7)"
    assert codes(result) == {("checksum-policy-unknown", "checksum_policy"),
                             ("checksum-unstamped", 1)}
    before = file_bytes(name)
    assert not E.validate(name, repair=True)["changed"]
    assert file_bytes(name) == before
