"""The repair rules pinned where mutation testing found them unpinned
(docs/reliability.md section 8, target ``repair``: ``_validate``'s index step, settling
and re-blessing).

The index step is judged on the words a dead producer leaves (written by hand). The
settling and re-blessing rules decide what a *changing* block means, so those tests
change it at a chosen point of our own run: a real Plan that, the n-th time it touches a
chosen word (or begins a step), lets another real process store into the block and waits
for it -- the scheduler pausing us there, made deterministic."""

from __future__ import annotations

import os

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _engine as E, _plan as P, _validate)

import plh_spec as spec

from .helpers import (COMMITTED, FREE, WRITING, InterruptedPlan, file_bytes, image, poke,
                      poke_header, poke_slot, reaped_pid, slot_store, stored)

U64 = (1 << 64) - 1
NO_COMMIT = U64
FLEX_HASH, FLEX_VERIFIED, FLEX_DATA, FLEX = 1984, 2016, 8192, 4096   # fixture j's layout


# -- the index step: claimed ids no writer explains -----------------------------------------
def step_of(name: str, write_index: int, commit_index: int, held=()) -> dict:
    """index_step on a 2-slot block whose header says ``write_index``/``commit_index``
    and whose slots ``held`` are locked WRITING by a dead pid (a writer's hold)."""
    poke_header(name, write_index=write_index, commit_index=commit_index)
    for s in held:
        poke_slot(name, s, lock=reaped_pid(), state=WRITING)
    with B.open_block(name, writable=False, strict=False) as block:
        return _validate.index_step(P.Plan(block, True))


@pytest.mark.parametrize("write_index,commit_index,held,step", [
    (1, NO_COMMIT, (), {"following": 0, "gap": 1, "unexplained": [0]}),
    (1001, 1000, (), None),
    (998, 1000, (), None),
    (1000, 1000, (), None),
    (1002, 1000, (1,), None),
    (1003, 1000, (0, 1), None),
    (1004, 1000, (0, 1), {"following": 1001, "gap": 3, "unexplained": []}),
], ids=["claim-before-the-first-commit", "in-step", "behind-by-three", "behind-by-one",
        "one-held-claim", "capacity-held-claims", "more-claims-than-slots"])
def test_the_index_step_counts_only_claims_no_writer_explains(
        lab, write_index, commit_index, held, step):
    """write_index is commit_index + 1 (0 before the first commit: commit_index is then
    2**64-1) plus one id per writer holding its slot. A claim before the first commit is a
    step (the "no commit" value is no index to compare); a write_index behind the commit
    is none (no id was claimed: the index findings report it); claims every slot's writer
    explains are none, up to one per slot; more claims than slots are one, even when
    every slot is held."""
    name = lab.create(capacity=2, commits=0)
    found = step_of(name, write_index, commit_index, held)
    if step is None:
        assert found is None, found
    else:
        assert found is not None and {k: found[k] for k in step} == step, found


def test_a_claim_whose_slot_is_locked_but_not_yet_writing_is_explained(lab):
    """Ids 0-3 committed; a producer has claimed id 4 and CASed its slot's (0) lock, not
    yet stored WRITING (the state still says COMMITTED): its lock explains the claim."""
    name = lab.create(capacity=2, commits=4)
    poke_slot(name, 0, lock=os.getpid())
    assert image(name).slot(0)["state"] == COMMITTED
    assert step_of(name, 5, 3) is None


# -- policies: what repair says it cannot re-bless, and why ---------------------------------
@pytest.mark.parametrize("policy,code,why", [
    (0, "checksums-not-checked", "under the None checksum policy no producer stamps: repair "
     "writes none"),
    (1, "checksum-unstamped", "the Manual checksum policy leaves stamping to the producer: "
     "repair never writes a checksum the producer would not"),
    (7, "checksum-unstamped", "repair writes no checksum under an unknown checksum policy"),
], ids=["None", "Manual", "unknown"])
def test_repair_says_why_it_writes_no_checksum_under_each_policy(lab, policy, code, why):
    name = lab.create(capacity=4, commits=4)
    poke_header(name, checksum_policy=policy)
    poke(name, image(name).data_offset(1) + 9, b"\xAA")
    before = file_bytes(name)
    out = E.validate(name, repair=True)
    (f,) = [f for f in out["findings"] if f["code"] == code]
    assert f["message"].endswith("; repair cannot re-bless it: " + why), f
    assert not out["reblessed"] and file_bytes(name) == before


# -- a block that changes while we look at it -------------------------------------------------
def slot_with_bad_data(lab):
    """A 4-slot Enforced block, its producer gone; slot 1's data no longer matches."""
    name = lab.create(capacity=4, commits=4)
    img = image(name)
    off = img.data_offset(1) + 9
    poke(name, off, bytes([img.data[off] ^ 0x5A]))
    return name, image(name)


def payload_hashing(img, above: bool) -> bytes:
    """Data for slot 1 whose hash sorts above (or below) its stored checksum."""
    stored = img.checksum(1)[0]
    for k in range(1000):
        data = bytes([k & 0xFF, k >> 8]) * (img.stride // 2)
        if (spec.blake(data) > stored) == above:
            return data
    raise AssertionError("no payload found")


@pytest.mark.parametrize("above", [True, False], ids=["hash-sorts-above", "hash-sorts-below"])
def test_a_slot_recommitted_while_being_checked_is_judged_on_its_new_bytes(lab, above):
    """Slot 1 failed its checksum in the bulk pass; before the settling look reads its
    words, a writer re-commits it (new data and their checksum, the same words). The
    look differs from what was hashed, so it is never trusted: the slot is hashed again,
    matches, and nothing is reported or re-blessed."""
    name, img = slot_with_bad_data(lab)
    data = payload_hashing(img, above)
    ring, entry = img.data_offset(1), spec.checksum_entry(1, img.capacity)
    with B.open_block(name, writable=True, strict=False) as block:
        plan = InterruptedPlan(block, lab, ("read", block.geo.slot_entry(1)),
                               [[(ring, data), (entry, spec.blake(data) + b"\0")]])
        out = _validate.validate(plan, repair=True)
        assert plan.fired == 1
    assert [f for f in out["findings"] if f.get("slot") == 1] == [], out["findings"]
    assert out["reblessed"] == [] and image(name).checksum(1) == (spec.blake(data), 0)


def test_a_slot_freed_while_being_checked_is_not_reported(lab):
    """Slot 1 failed its checksum; before the settling look, the slot is freed (state
    FREE, generation 2: a value that is also a state's). A slot no longer committed holds
    nothing to check: no finding, nothing re-blessed."""
    name, dummy = slot_with_bad_data(lab)
    with B.open_block(name, writable=True, strict=False) as block:
        plan = InterruptedPlan(block, lab, ("read", block.geo.slot_entry(1)),
                               [[slot_store(1, "generation", 2), slot_store(1, "state", FREE)]])
        out = _validate.validate(plan, repair=True)
        assert plan.fired == 1
    assert [f for f in out["findings"] if f.get("slot") == 1
            and f["code"].startswith("checksum")] == [], out["findings"]
    assert out["reblessed"] == []


def zones_around(stored: bytes, count: int, above: bool) -> list:
    """``count`` flex-zone contents whose hashes all sort above (below) ``stored``, in
    ascending (descending) order of hash."""
    found = []
    for k in range(4000):
        data = bytes([k & 0xFF, (k >> 8) & 0xFF, 7]) * (FLEX // 3) + bytes(FLEX % 3)
        if (spec.blake(data) > stored) == above:
            found.append(data)
    found.sort(key=spec.blake, reverse=not above)
    return found[:count]


@pytest.mark.parametrize("above", [True, False], ids=["hashes-rise", "hashes-fall"])
def test_a_flex_zone_that_keeps_changing_is_not_verified(lab, above):
    """Fixture j (Enforced, the zone's checksum wrong, producer dead). While we settle,
    the zone changes before every look (a live producer writing it): no look matches the
    one before, so the zone is reported unverified (information), never as corrupt, and
    nothing is re-blessed -- whichever way its hashes compare."""
    name = lab.fixture("j_flex_zone_corrupt.bin")
    stored = file_bytes(name)[FLEX_HASH:FLEX_HASH + 32]
    turns = [[(FLEX_DATA, z)] for z in zones_around(stored, 3, above)]
    with B.open_block(name, writable=True, strict=False) as block:
        plan = InterruptedPlan(block, lab, ("read", FLEX_HASH), turns, nth=2)
        out = _validate.validate(plan, repair=True)
        assert plan.fired == 3
    assert [f["code"] for f in out["findings"]] == ["flexzone-checksum-unverified"], out
    assert out["reblessed"] == [] and file_bytes(name)[FLEX_HASH:FLEX_HASH + 32] == stored


def test_a_flex_zone_restamped_at_the_last_look_is_accepted(lab):
    """The zone changes before the first two settling looks, and before the third its
    producer stamps it: the third look matches its own hash -- accepted, no finding."""
    name = lab.fixture("j_flex_zone_corrupt.bin")
    stored = file_bytes(name)[FLEX_HASH:FLEX_HASH + 32]
    first, second = zones_around(stored, 2, True)
    turns = [[(FLEX_DATA, first)], [(FLEX_DATA, second)],
             [(FLEX_HASH, spec.blake(second)), (FLEX_VERIFIED, b"\0")]]
    with B.open_block(name, writable=True, strict=False) as block:
        plan = InterruptedPlan(block, lab, ("read", FLEX_HASH), turns, nth=2)
        out = _validate.validate(plan, repair=True)
        assert plan.fired == 3
    assert [f for f in out["findings"] if f.get("field") == "flexzone_checksum"] == [], out
    assert out["reblessed"] == []


@pytest.mark.parametrize("what", ["hash", "verified-byte", "zone-hashing-above",
                                  "zone-hashing-below"])
def test_flex_rebless_refused_when_the_zone_or_its_entry_changed_since_checked(lab, what):
    """Fixture j: the zone is judged wrong, and just before the re-bless step begins a
    live producer stamps the entry, sets its "verified" byte, or rewrites the zone (its
    new hash sorting above or below the one judged): the re-bless is refused with the
    reason, and not one checksum byte is written."""
    name = lab.fixture("j_flex_zone_corrupt.bin")
    before = file_bytes(name)
    judged = spec.blake(before[FLEX_DATA:FLEX_DATA + FLEX])
    store = {"hash": (FLEX_HASH, spec.blake(b"another zone")),
             "verified-byte": (FLEX_VERIFIED, bytes([before[FLEX_VERIFIED] ^ 1])),
             "zone-hashing-above": (FLEX_DATA, zones_around(judged, 1, True)[0]),
             "zone-hashing-below": (FLEX_DATA, zones_around(judged, 1, False)[0])}[what]
    with B.open_block(name, writable=True, strict=False) as block:
        plan = InterruptedPlan(block, lab, "begin", [[store]])
        out = _validate.validate(plan, repair=True)
        assert plan.fired == 1
    assert out["reblessed"] == [], out
    (f,) = [f for f in out["findings"] if f.get("field") == "flexzone_checksum"]
    assert f["message"].endswith("; repair cannot re-bless it: the flexible zone or its "
                                 "checksum changed since it was checked"), f
    after = file_bytes(name)
    assert after[FLEX_HASH:FLEX_VERIFIED + 1] == stored(before, [store])[FLEX_HASH:FLEX_VERIFIED + 1]


@pytest.mark.parametrize("change", ["left-committed", "restamped"])
def test_a_slot_changed_before_its_rebless_is_skipped_and_the_next_reblessed(lab, change):
    """Slots 1 and 2 fail their checksums. Just before slot 1's re-bless step a live
    process makes it WRITING (it left COMMITTED) or re-stamps its checksum (a writer
    committed it): slot 1 is skipped with the reason, its lock given back, and slot 2 is
    still re-blessed."""
    name = lab.create(capacity=4, commits=4)
    img = image(name)
    for s in (1, 2):
        off = img.data_offset(s) + 9
        poke(name, off, bytes([img.data[off] ^ 0x5A]))
    img = image(name)
    entry = spec.checksum_entry(1, img.capacity)
    store = {"left-committed": slot_store(1, "state", WRITING),
             "restamped": (entry, spec.blake(img.slot_data(1)) + b"\0")}[change]
    with B.open_block(name, writable=True, strict=False) as block:
        plan = InterruptedPlan(block, lab, "begin", [[store]])
        out = _validate.validate(plan, repair=True)
        assert plan.fired == 1
    assert [r["slot"] for r in out["reblessed"]] == [2], out["reblessed"]
    (f,) = [f for f in out["findings"] if f.get("slot") == 1]
    reason = {"left-committed": "slot 1 is no longer COMMITTED",
              "restamped": "slot 1 was rewritten since it was checked"}[change]
    assert f["message"].endswith("; repair cannot re-bless it: " + reason), f
    assert image(name).slot(1)["lock"] == 0
