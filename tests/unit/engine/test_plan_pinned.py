"""The plan's compare-and-swap rules pinned where mutation testing found them unpinned
(docs/reliability.md section 8, target ``plan``).

A word or a text field of a real block is changed by another mapping of the block
between the plan's look and its store, to a value below and above the one observed:
the real run's store and the dry run's prediction both refuse, and nothing is written.
A store of the value already there is no change at all (nothing to do = ``changed:
false``), whatever the size of the value."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _layout as L, _plan as P, _runtime as R, _snapshot)
from ansible_collections.pylabhub.recovery.plugins.module_utils._errors import ConcurrentChange

BLOCK_GEOMETRY = (2, 4 * L.PAGE)      # slots of four pages (the scrub test)
HEARTBEAT = L.CONSUMER["last_heartbeat_ns"]
NAME = L.CONSUMER["consumer_name"]
BASE = L.consumer_entry(0)
OBSERVED = 7_000_000_000_123          # a heartbeat-sized value (not a cached small int)


def store(name, fld, value):
    """Another writer: a second mapping of the block stores ``value``."""
    with R.attach(name) as b:
        b.set(fld, value, BASE)


def write_text(name, text):
    with R.attach(name) as b:
        b.write(BASE + NAME.offset, text.ljust(NAME.size, b"\0"))


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
@pytest.mark.parametrize("moved", [OBSERVED - 1, OBSERVED + 1, 0], ids=["lower", "higher", "zero"])
def test_a_cas_on_a_word_that_moved_refuses_in_the_real_and_the_dry_run(block_name, dry_run,
                                                                        moved):
    """The plan observes a word, another writer moves it (lower, higher, to zero), the
    plan's CAS from the observed value raises ConcurrentChange in a real run and in the
    dry run's prediction alike; the word keeps the other writer's value, no change is
    listed."""
    name = block_name
    store(name, HEARTBEAT, OBSERVED)
    with B.open_block(name, writable=not dry_run) as block:
        plan = P.Plan(block, dry_run)
        seen = plan.get(HEARTBEAT, BASE)
        assert seen == OBSERVED
        store(name, HEARTBEAT, moved)
        with pytest.raises(ConcurrentChange):
            plan.cas("consumer[0].last_heartbeat_ns", HEARTBEAT, BASE, seen, 12345)
        assert plan.changes == [] and not plan.changed
    with R.attach(name, writable=False) as b:
        assert b.get(HEARTBEAT, BASE) == moved


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
def test_a_cas_to_the_value_already_there_is_no_change(block_name, dry_run):
    """expected == new: nothing is stored, journaled or listed, for a large value too
    (equal values, distinct int objects, as two reads of a word give)."""
    name = block_name
    store(name, HEARTBEAT, OBSERVED)
    with B.open_block(name, writable=not dry_run) as block:
        plan = P.Plan(block, dry_run)
        seen = plan.get(HEARTBEAT, BASE)
        again = int(str(seen))               # the same number, another object
        assert seen == again and seen is not again
        plan.cas("consumer[0].last_heartbeat_ns", HEARTBEAT, BASE, seen, again)
        assert plan.changes == [] and not plan.changed
    with R.attach(name, writable=False) as b:
        assert b.get(HEARTBEAT, BASE) == OBSERVED


@pytest.mark.parametrize("moved", [b"alpha", b"zulu", b""], ids=["lower", "higher", "empty"])
def test_put_refuses_text_that_changed_under_us(block_name, moved):
    """A non-atomic put (a consumer's name, cleared by cleanup) compares the bytes with
    the ones observed: another writer's name, sorting before or after the observed one
    (or empty), makes it raise ConcurrentChange and write nothing."""
    name = block_name
    write_text(name, b"mike")
    with B.open_block(name, writable=True) as block:
        plan = P.Plan(block, False)
        before = plan.read(BASE + NAME.offset, NAME.size)
        assert before.startswith(b"mike\0")
        write_text(name, moved)
        with pytest.raises(ConcurrentChange):
            plan.put("consumer[0].consumer_name", BASE + NAME.offset, before,
                     b"\0" * NAME.size, text=True)
        assert plan.changes == [] and not plan.changed
    with R.attach(name, writable=False) as b:
        assert b.read(BASE + NAME.offset, NAME.size) == moved.ljust(NAME.size, b"\0")


@pytest.mark.parametrize("after", [b"zulu", b"alpha", b""], ids=["higher", "lower", "empty"])
def test_put_writes_and_lists_new_text_whichever_way_it_sorts(block_name, after):
    """A put of other bytes than the observed ones is made and listed, whether the new
    bytes sort after, before or empty; a put of the bytes already there is no change."""
    name = block_name
    write_text(name, b"mike")
    with B.open_block(name, writable=True) as block:
        plan = P.Plan(block, False)
        off = BASE + NAME.offset
        before = plan.read(off, NAME.size)
        plan.put("consumer[0].consumer_name", off, before, bytes(bytearray(before)), text=True)
        assert plan.changes == [] and not plan.changed
        plan.put("consumer[0].consumer_name", off, before, after.ljust(NAME.size, b"\0"),
                 text=True)
        assert [c.to_dict() for c in plan.changes] == [
            {"target": "consumer[0].consumer_name", "before": "mike", "after": after.decode()}]
    with R.attach(name, writable=False) as b:
        assert b.read(BASE + NAME.offset, NAME.size) == after.ljust(NAME.size, b"\0")


def data_pages(path, start, count):
    """Which of the ``count`` pages from ``start`` hold allocated data (not holes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pages = []
        for k in range(count):
            off = start + k * L.PAGE
            try:
                if os.lseek(fd, off, os.SEEK_DATA) == off:
                    pages.append(k)
            except OSError:                  # ENXIO: no data at or after off
                pass
        return pages
    finally:
        os.close(fd)


def test_scrub_zeroes_only_the_pages_that_hold_bytes(block_name):
    """Blocks are sparse: a scrub of a four-page slot whose only torn bytes are in its
    second page writes zeros to that page alone -- the others stay holes (no page
    allocated by recovery) -- and the whole range reads zero afterwards."""
    name = block_name
    path = os.path.join("/dev/shm", name)
    with R.attach(name) as b:
        start = b.geo.slot_data(0)
        assert start % L.PAGE == 0
        b.write(start + L.PAGE + 100, b"torn bytes")
    assert data_pages(path, start, 4) == [1]
    with B.open_block(name, writable=True) as block:
        plan = P.Plan(block, False)
        plan.scrub("slot[0].data", start, 4 * L.PAGE)
        assert [c.target for c in plan.changes] == ["slot[0].data"]
        # read back through the plan: the zeros now in the block (a scrub plans no
        # word value: its listed before/after are digests, not the bytes)
        assert plan.read(start, 4 * L.PAGE) == bytes(4 * L.PAGE)
        assert plan.data(start, 4 * L.PAGE) == bytes(4 * L.PAGE)
    assert data_pages(path, start, 4) == [1]
    with open(path, "rb") as f:
        f.seek(start)
        assert f.read(4 * L.PAGE) == bytes(4 * L.PAGE)


def test_commit_hands_back_the_steps_changes(block_name):
    """commit returns the changes of the step it ends (recover counts a recovery action
    and says "scrubbed" from them); a commit with no step open returns none."""
    name = block_name
    store(name, HEARTBEAT, OBSERVED)
    with B.open_block(name, writable=True) as block:
        plan = P.Plan(block, False)
        assert plan.commit() == []
        plan.begin()
        plan.cas("consumer[0].last_heartbeat_ns", HEARTBEAT, BASE, OBSERVED, 1)
        done = plan.commit()
        assert [c.to_dict() for c in done] == [{"target": "consumer[0].last_heartbeat_ns",
                                                "before": OBSERVED, "after": 1}]


def test_put_shows_bytes_as_hex_unless_told_they_are_text(block_name):
    """A put of bytes that are not text (a checksum) is listed in hex."""
    name = block_name
    with B.open_block(name, writable=True) as block:
        plan = P.Plan(block, False)
        off = BASE + NAME.offset
        before = plan.read(off, 4)
        plan.put("checksum", off, before, b"\x01\x02\xfe\xff")
        assert plan.change_dicts() == [{"target": "checksum", "before": "00000000",
                                        "after": "0102feff"}]


@pytest.mark.parametrize("after", [0, 9], ids=["to-zero", "to-nonzero"])
def test_rollback_gives_words_back_and_names_those_another_writer_took(block_name, after):
    """rollback undoes the step's CAS in reverse order: a word nobody touched since goes
    back to its observed value (whatever value the step had stored, zero included) and
    is not reported lost; a word another writer changed again after our store is left
    to that writer and reported lost."""
    name = block_name
    store(name, HEARTBEAT, OBSERVED)
    with R.attach(name) as b:
        b.set(L.CONSUMER["consumer_pid"], 4242, BASE)
    pid = L.CONSUMER["consumer_pid"]
    with B.open_block(name, writable=True) as block:
        plan = P.Plan(block, False)
        plan.begin()
        plan.cas("consumer[0].consumer_pid", pid, BASE, 4242, after)
        plan.cas("consumer[0].last_heartbeat_ns", HEARTBEAT, BASE, OBSERVED, 5)
        store(name, HEARTBEAT, 6)                       # another writer, after our store
        lost = plan.rollback()
        assert lost == ["consumer[0].last_heartbeat_ns"]
        assert plan.changes == []
    with R.attach(name, writable=False) as b:
        assert b.get(pid, BASE) == 4242
        assert b.get(HEARTBEAT, BASE) == 6


def test_the_journal_marks_the_lost_cas_failed_and_only_it(block_name, tmp_path):
    """A real run's write-ahead journal: a CAS that succeeds stays announced; one that
    loses (another writer moved the word) is marked failed, so an undo never "restores"
    a store that did not happen, and never skips one that did."""
    name = block_name
    store(name, HEARTBEAT, OBSERVED)
    directory = str(tmp_path / "journal")
    with B.open_block(name, writable=True) as block:
        journal = _snapshot.Journal("test", block, directory)
        plan = P.Plan(block, False, journal)
        plan.cas("consumer[0].last_heartbeat_ns", HEARTBEAT, BASE, OBSERVED, 1)
        store(name, HEARTBEAT, 5)
        with pytest.raises(ConcurrentChange):
            plan.cas("consumer[0].last_heartbeat_ns", HEARTBEAT, BASE, 1, 2)
        journal.finish({})
    with open(journal.path) as f:
        lines = [json.loads(line) for line in f]
    stores = [ln["seq"] for ln in lines if ln.get("kind") == "word"]
    failed = [ln["failed"] for ln in lines if "failed" in ln]
    assert len(stores) == 2 and failed == [stores[1]], lines
