"""Healed means pylabhub agrees (issue 10, item 5).

A producer SIGKILLed mid-write in a ring that has wrapped leaves torn bytes under the old
checksum. pylabhub's own validate_integrity hashes every slot once the ring has wrapped,
FREE ones included (spec section 8), so a release that only turns WRITING into FREE leaves
a block pylabhub calls corrupt while ours called it valid. Releasing a dead writer now
scrubs the slot (zeros; under Enforced the matching checksum, verified byte 0), and our
validate flags a FREE slot pylabhub's check would fail. The verdicts are checked with the
test-side oracle ``plh_spec.upstream_validate_integrity``, independent of the core.
"""

from __future__ import annotations


import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E

from .helpers import (COMMITTED, FREE, WRITING, assert_untouched, file_bytes, image,
                      payload, poke, prove_works)

import plh_spec as spec

ENFORCED, MANUAL = 2, 1


def upstream(name):
    return spec.upstream_validate_integrity(image(name))


@pytest.mark.parametrize("evidence", [True, False], ids=["evidence", "plain"])
@pytest.mark.parametrize("point", ["mid_write", "before_commit", "acquired"])
def test_wrapped_ring_writer_killed_heal_passes_pylabhubs_check(lab, point, evidence):
    crash = lab.crashed(point, evidence)          # capacity 4, 5 commits: wrapped
    name, s = crash.name, crash.slot
    img = image(name)
    assert img.total_slots_written >= img.capacity and img.slot(s)["state"] == WRITING
    torn = point != "acquired"                     # "acquired": nothing written yet
    assert upstream(name)[0] == ("FAILED" if torn else "SUCCESS")
    # ours says so too before heal: the slot is stuck (a dead writer holds it)
    before = E.validate(name)
    assert before["health"] == "stuck" and before["stuck_slots"] == [s]

    healed = E.heal(name)
    assert healed["ok"] and healed["healthy"] and healed["health"] == "healthy", healed["after"]
    img = image(name)
    assert upstream(name) == ("SUCCESS", []), "pylabhub's own check fails after heal"
    assert E.validate(name)["valid"] and E.validate(name)["health"] == "healthy"
    assert img.slot(s)["state"] == FREE and img.slot(s)["lock"] == 0
    if torn:   # no torn byte is left: zeros, and the checksum of zeros, verified byte 0
        assert img.slot_data(s) == bytes(img.stride)
        assert img.checksum(s) == (spec.blake(bytes(img.stride)), 0)
        assert [c for c in healed["changes"] if c["target"] == "slot[%d].data" % s]
    else:      # the old committed bytes were never touched: nothing to scrub
        assert not [c for c in healed["changes"] if c["target"] == "slot[%d].data" % s]
    assert_untouched(name, crash.before, skip=(s,))
    assert img.write_index == crash.last_good + 1 and img.commit_index == crash.last_good
    prove_works(lab, name, crash.last_good)
    assert upstream(name)[0] == "SUCCESS"


def test_torn_slot_verified_byte_is_reset(lab):
    """A slot whose previous lap a reader had verified (byte 1): pylabhub would take the
    torn bytes as valid without hashing. After the release the entry is BLAKE2b(zeros) with
    the byte 0, so nothing vouches for bytes nobody checked."""
    crash = lab.crashed("mid_write")
    name, s = crash.name, crash.slot
    entry = 4096 + 64 * 4 + 33 * s
    poke(name, entry + 32, b"\x01")
    assert upstream(name)[0] == "SUCCESS"          # fooled by the byte
    assert E.heal(name)["healthy"]
    img = image(name)
    assert img.checksum(s) == (spec.blake(bytes(img.stride)), 0)
    assert img.slot_data(s) == bytes(img.stride)


def test_partial_write_after_heal_never_shows_torn_bytes(lab):
    """The next producer writes only 100 bytes into the scrubbed slot and commits: the
    committed stride (which the checksum covers) holds none of the dead writer's bytes."""
    crash = lab.crashed("mid_write")
    name, s = crash.name, crash.slot
    assert E.heal(name)["healthy"]
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
    block = R.attach(name)
    try:
        p = R.Producer(block)
        ws = p.acquire()
        assert ws.index == s
        p.write(ws, b"\x42" * 100)
        p.commit(ws)
    finally:
        block.close()
    img = image(name)
    dead_bytes = payload(crash.last_good + 1, img.stride)[:img.stride // 2]
    assert img.slot_data(s) == b"\x42" * 100 + bytes(img.stride - 100)
    assert dead_bytes[100:200] not in img.slot_data(s)
    assert upstream(name)[0] == "SUCCESS" and E.validate(name)["health"] == "healthy"


def test_manual_policy_scrubs_bytes_but_leaves_the_checksum(lab):
    """Under Manual only the producer writes checksums: the release zeroes the torn bytes
    (none stay behind) and leaves the checksum entry as it was."""
    crash = lab.crashed("mid_write")
    name, s = crash.name, crash.slot
    poke(name, 176, MANUAL.to_bytes(4, "little"))
    entry_before = image(name).checksum(s)
    result = E.recover(name, s, "release_writer")
    assert result["ok"] and result["result"] == "SUCCESS"
    img = image(name)
    assert img.slot_data(s) == bytes(img.stride) and img.checksum(s) == entry_before
    assert not [c for c in result["changes"] if c["target"].endswith(".checksum")]
    # pylabhub's check ignores the policy and fails on it; ours reports it as information
    assert upstream(name)[0] == "FAILED"
    found = E.validate(name)
    (f,) = [f for f in found["findings"] if f["code"] == "uncommitted-checksum-mismatch"]
    assert f["slot"] == s and f["severity"] == "info" and found["valid"]


def test_validate_flags_a_torn_free_slot_and_heal_scrubs_it(lab):
    """A torn FREE slot with no lock (left by an older release, or by a producer's own
    abort after a partial write): pylabhub fails, so ours is corrupt; heal scrubs it (it
    holds no committed data) and both pass; the dry run predicts it exactly."""
    name = lab.create(capacity=4, commits=5)       # wrapped
    img = image(name)
    s = 2
    poke(name, 4096 + 64 * s + 12, bytes([FREE]))    # as a release without scrub left it
    poke(name, img.geo["ring"] + img.stride * s + 10, b"torn bytes")
    assert upstream(name)[0] == "FAILED"
    found = E.validate(name)
    assert not found["valid"] and found["health"] == "corrupt"
    (f,) = found["findings"]
    assert (f["code"], f["slot"], f["severity"]) == ("uncommitted-checksum-mismatch", s, "error")
    assert {"operation": "heal"} in found["next_steps"]
    assert E.diagnose(name)["health"] == "corrupt"          # diagnose agrees
    before = file_bytes(name)
    dry = E.heal(name, dry_run=True)
    assert file_bytes(name) == before and dry["healthy"] and dry["changed"]
    real = E.heal(name)
    assert real["healthy"] and [(c["target"], c["before"], c["after"]) for c in real["changes"]
                                if "timestamp" not in c["target"]] == [
        (c["target"], c["before"], c["after"]) for c in dry["changes"]
        if "timestamp" not in c["target"]]
    assert upstream(name)[0] == "SUCCESS"
    img = image(name)
    assert img.slot(s)["state"] == FREE and img.slot(s)["lock"] == 0
    assert img.slot_data(s) == bytes(img.stride)
    again = E.heal(name)
    assert not again["changed"] and again["healthy"]


def test_draining_release_keeps_data_and_checksum(lab):
    """DRAINING -> COMMITTED: the writer had not started writing; nothing is scrubbed."""
    crash = lab.crashed("deadlock")
    name, s = crash.name, crash.slot
    before = image(name)
    assert E.heal(name)["healthy"]
    img = image(name)
    assert img.slot(s)["state"] == COMMITTED
    assert img.slot_data(s) == before.slot_data(s) and img.checksum(s) == before.checksum(s)
    assert upstream(name)[0] == "SUCCESS"
