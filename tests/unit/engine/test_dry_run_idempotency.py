"""Every mutating operation: the dry run writes nothing and predicts exactly the changes
and outcomes of the real run that follows; a second real run changes nothing."""

from __future__ import annotations

import os
import re

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
from ansible_collections.pylabhub.recovery.plugins.module_utils import _wording as W

from .helpers import (DEAD_PID, committed_snapshot, consumer_program, file_bytes, image,
                      slot_store)

import plh_spec as spec

STAMP = "header.last_error_timestamp_ns"


def flip_data_byte(name: str, slot: int) -> None:
    img = image(name)
    off = img.geo["ring"] + img.stride * slot + 100
    with open("/dev/shm/" + name, "r+b") as f:
        f.seek(off)
        f.write(bytes([img.data[off] ^ 0x5A]))


_BASE = {form: verb for verb, form in list(W.PAST.items()) + list(W.PARTICIPLE.items())}
_FORMS = re.compile(r"\b(%s)\b" % "|".join(
    re.escape(f) for f in sorted(_BASE, key=len, reverse=True)))
_PAST = re.compile(r"(?<!would be )\b(%s)\b" % "|".join(re.escape(f) for f in W.PAST_FORMS))


def neutral(obj):
    """``obj`` with every message in the bare infinitive: a dry run says "would release A
    and scrub B" where the real run says "released A and scrubbed B" (``_wording``);
    both read "release A and scrub B" here, so the facts can be compared."""
    if isinstance(obj, str):
        return _FORMS.sub(lambda m: _BASE[m.group(1)],
                          obj.replace("would be ", "").replace("would ", ""))
    if isinstance(obj, dict):
        return {k: neutral(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [neutral(v) for v in obj]
    return obj


def texts(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from texts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from texts(v)


def check_tense(dry: dict, real: dict) -> None:
    """Every message of a dry run in the conditional, of a real run in the past tense."""
    said = [t for t in texts(dry) if _PAST.search(t)]
    assert not said, said
    said = [t for t in texts(real) if any(w in t for w in W.CONDITIONAL_FORMS)]
    assert not said, said


def norm(result: dict, keys) -> dict:
    """The parts that must match: changes (a timestamp's new value aside) and outcomes,
    their messages in either tense (:func:`neutral`)."""
    changes, stamps = [], 0
    for c in result["changes"]:
        if c["target"] == STAMP:
            # "now" differs between the runs; a later stamp's "before" is an earlier "after"
            changes.append((STAMP, c["before"] if not stamps else None, None))
            stamps += 1
        else:
            changes.append((c["target"], c["before"], c["after"]))
    out = {"changed": result["changed"], "ok": result["ok"], "changes": changes}
    for k in keys:
        out[k] = neutral(result[k])
    return out


def setup_release_writer(lab, evidence):
    c = lab.crashed("mid_write", evidence)
    return (lambda dry: E.recover(c.name, c.slot, "release_writer", dry_run=dry)), c.name, \
        ("outcomes", "refused", "warnings", "result")


def setup_release_readers(lab, evidence):
    c = lab.crashed("reader", evidence)
    return (lambda dry: E.recover(c.name, c.slot, "release_readers", dry_run=dry)), c.name, \
        ("outcomes", "refused", "warnings", "result")


def setup_force_reset_all(lab, evidence):
    c = lab.crashed("deadlock", evidence)
    return (lambda dry: E.recover(c.name, "all", "force_reset", dry_run=dry)), c.name, \
        ("outcomes", "refused", "warnings", "result")


def setup_cleanup(lab, evidence):
    c = lab.crashed("reader", evidence)       # dead consumer still counted inside a slot
    victim = lab.child(consumer_program, c.name)
    victim.recv()
    victim.kill()                             # a second dead consumer, reading nothing
    return (lambda dry: E.cleanup(c.name, dry_run=dry)), c.name, \
        ("outcomes", "cleaned", "reconciled", "refused")


def setup_validate_repair(lab, evidence):
    name = lab.create(capacity=4, evidence=evidence, commits=4)
    flip_data_byte(name, 1)
    flip_data_byte(name, 3)
    return (lambda dry: E.validate(name, repair=True, dry_run=dry)), name, \
        ("findings", "reblessed", "valid")


def setup_heal(lab, evidence):
    c = lab.crashed("deadlock", evidence)     # dead writer draining behind a dead reader
    victim = lab.child(consumer_program, c.name)
    victim.recv()
    victim.kill()
    flip_data_byte(c.name, (c.slot + 1) % 4)  # and a corrupt committed slot
    return (lambda dry: E.heal(c.name, repair=True, dry_run=dry)), c.name, \
        ("outcomes", "cleanup", "refused", "validate", "after", "healthy", "warnings")


SETUPS = [setup_release_writer, setup_release_readers, setup_force_reset_all, setup_cleanup,
          setup_validate_repair, setup_heal]


@pytest.mark.parametrize("evidence", [True, False], ids=["evidence", "plain"])
@pytest.mark.parametrize("setup", SETUPS, ids=[s.__name__[6:] for s in SETUPS])
def test_dry_run_predicts_real_run_and_second_run_is_noop(lab, setup, evidence):
    op, name, keys = setup(lab, evidence)
    before = file_bytes(name)
    dry = op(True)
    assert dry["dry_run"] is True
    assert file_bytes(name) == before, "the dry run wrote to the block"
    assert dry["changed"] and dry["changes"] and dry["ok"], dry
    real = op(False)
    assert real["dry_run"] is False
    check_tense(dry, real)
    nd, nr = norm(dry, keys), norm(real, keys)
    assert nd["changes"] == nr["changes"], "\n".join(
        "%s %s" % (a, b) for a, b in zip(nd["changes"] + [None] * 99, nr["changes"]))
    assert nd == nr
    assert file_bytes(name) != before
    after = file_bytes(name)
    again = op(False)
    assert again["changed"] is False and again["changes"] == [] and again["ok"], again
    assert file_bytes(name) == after
    # and the dry run of a healthy block predicts nothing
    assert op(True)["changed"] is False


def test_dry_run_of_refusal_writes_nothing(lab):
    """A refused action predicts the same refusal, and neither run writes."""
    name = lab.create(capacity=2, evidence=True, commits=1)
    with open("/dev/shm/" + name, "r+b") as f:
        for off, data in (slot_store(1, "lock", os.getpid()), slot_store(1, "state", 1)):
            f.seek(off)
            f.write(data)
    before = file_bytes(name)
    # the holder (this process) must have the block mapped to be a live holder: a pid
    # that exists but does not map the block holds nothing in it (kernel truth first)
    with R.attach(name):
        dry = E.recover(name, 1, "force_reset", dry_run=True)
        real = E.recover(name, 1, "force_reset")
    keys = ("outcomes", "refused", "result")
    assert norm(dry, keys) == norm(real, keys)
    assert real["result"] == "UNSAFE" and not real["changed"]
    assert file_bytes(name) == before


def test_cleanup_counts_every_entry_once(lab):
    """Upstream bookkeeping: recovery_actions_count grows by the number of entries cleaned."""
    name = lab.create(capacity=2, evidence=False, commits=1)
    with open("/dev/shm/" + name, "r+b") as f:
        for k in (0, 3, 5):
            f.seek(spec.consumer_entry(k))
            f.write(DEAD_PID.to_bytes(8, "little"))
        f.seek(208)
        f.write((3).to_bytes(4, "little"))
    snap = committed_snapshot(name)
    result = E.cleanup(name)
    assert result["cleaned"] == 3 and result["ok"]
    img = image(name)
    assert img.u(368, 8) == 3 and img.active_consumers == 0
    assert committed_snapshot(name) == snap
