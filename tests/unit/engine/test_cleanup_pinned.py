"""cleanup's rules pinned where mutation testing found them unpinned (docs/reliability.md
section 8, target ``cleanup``).

Each test kills surviving cosmic-ray mutants of ``_cleanup.py``: it fails when the rule
it names is changed. Real processes (crash actors killed or paused at protocol points),
real blocks; the count floor needs a complete scope, so that one runs on a fleet-lab-like
host (new PID and mount namespaces, private /dev/shm: scope ``namespace``)."""

from __future__ import annotations

import os
import shutil
import textwrap
import time
import types

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _cleanup, _engine as E, _layout as L, _runtime as R, _validate)
from ansible_collections.pylabhub.recovery.tests.support import STAND_IN, in_namespace_host, standing_in

NEEDS_NAMESPACES = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                      reason="needs root and unshare(1)")


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch):
    """Short settle looks. ``_cleanup`` imports ``_SETTLE_S`` by name: patching
    ``_validate`` alone left cleanup's settle at its full length."""
    monkeypatch.setattr(_validate, "_SETTLE_S", (0.002, 0.01, 0.02))
    monkeypatch.setattr(_cleanup, "_SETTLE_S", (0.002, 0.01, 0.02))


def words(name):
    """(active_consumer_count, registered entries, reader_count of every slot)."""
    with R.attach(name, writable=False) as b:
        registered = sum(1 for k in range(L.MAX_CONSUMERS)
                         if b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k)))
        readers = [b.get(R.SLOT["reader_count"], b.geo.slot_entry(i))
                   for i in range(b.geo.capacity)]
        return b.get("active_consumer_count"), registered, readers


def entry(name, k):
    """Consumer entry ``k`` as the block holds it (text fields up to their NUL), with
    our evidence words for it."""
    with R.attach(name, writable=False) as b:
        base, ev = L.consumer_entry(k), L.consumer_evidence(k)
        text = {n: b.read(base + L.CONSUMER[n].offset, L.CONSUMER[n].size).split(b"\0")[0]
                for n in ("consumer_uid", "consumer_name")}
        return {"pid": b.get(L.CONSUMER["consumer_pid"], base),
                "heartbeat": b.get(L.CONSUMER["last_heartbeat_ns"], base),
                "uid": text["consumer_uid"], "name": text["consumer_name"],
                "position": b.get(L.READ_POSITION, L.read_position(k)),
                "evidence": [b.get(L.CONSUMER_EVIDENCE[n], ev) for n in ("pid", "start", "reading")]}


CLEARED = {"pid": 0, "heartbeat": 0, "uid": b"", "name": b"", "position": 0, "evidence": [0, 0, 0]}


def dead_consumer(b, k, reading=0):
    """Entry ``k`` held by a reaped (certainly dead) pid, counted, with our evidence of
    it: ``reading`` is the raw word (slot index + 1; 0: none)."""
    from .helpers import reaped_pid
    pid = reaped_pid()
    b.set(L.CONSUMER["consumer_pid"], pid, L.consumer_entry(k))
    b.set(L.CONSUMER_EVIDENCE["pid"], pid, L.consumer_evidence(k))
    b.set(L.CONSUMER_EVIDENCE["reading"], reading, L.consumer_evidence(k))
    b.set("active_consumer_count", b.get("active_consumer_count") + 1)
    return pid


def live_and_dead_positions(name, live_pid, read_index, write_index, live_position,
                            dead_position):
    """Sequential_sync bookkeeping by hand: entry 0 a live consumer's (``live_pid``),
    entry 1 a dead one's (a reaped pid), each with its read position; the count says 2."""
    from .helpers import reaped_pid
    with R.attach(name) as b:
        b.set("read_index", read_index)
        b.set("write_index", write_index)
        b.set("active_consumer_count", 2)
        for k, (pid, position) in enumerate([(live_pid, live_position),
                                             (reaped_pid(), dead_position)]):
            b.set(L.CONSUMER["consumer_pid"], pid, L.consumer_entry(k))
            b.set(L.READ_POSITION, position, L.read_position(k))


@pytest.mark.parametrize("slot", [0, 3])
def test_cleanup_releases_the_read_a_dead_consumer_left_inside(block_name, actors, slot):
    """Step 1 of cleanup: a consumer of ours SIGKILLed inside a read of slot ``slot``
    (the first and the last slot of the ring: the index check's two ends), nobody else
    with the block open: cleanup itself -- not only heal -- releases its read (the
    reader rule proves it gone: exclusive lease), clears its entry and recounts 0."""
    name = block_name
    producer = actors(name, [("producer",), ("publish", slot + 1)])
    assert producer.wait_point()["event"] == "done"
    producer.resume()
    producer.wait_exit()
    reader = actors(name, [("consumer", "reader"), ("read", slot)], pause="inside")
    reader.wait_point()
    reader.kill()
    before = words(name)
    assert before[0] == 1 and before[1] == 1 and before[2][slot] == 1, before
    out = E.cleanup(name)
    released = [o for o in out["outcomes"] if o.get("slot") == slot]
    assert released and released[0]["result"] == "SUCCESS", out["outcomes"]
    assert out["cleaned"] == 1, out
    assert words(name) == (0, 0, [0] * 4), out
    assert entry(name, 0) == CLEARED, "the dead entry is cleared in full, our evidence too"
    (cleared,) = [o for o in out["outcomes"] if o.get("consumer") == 0]
    assert "(pid %d, reader, " % cleared["pid"] in cleared["message"], cleared
    assert {"target": "consumer[0].consumer_name", "before": "reader", "after": ""} \
        in out["changes"], "the name is shown as text: %s" % out["changes"]


HOST_PRELUDE = textwrap.dedent("""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _actors as A, _engine as E, _layout as L, _runtime as R)
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _cleanup, _validate
    _validate._SETTLE_S = _cleanup._SETTLE_S = (0.002, 0.01, 0.02)
    name = "plhcount"
    R.create(name, capacity=2).close()
    b = R.attach(name, writable=False)    # a read-only look: not an opener
""")


def count_host(script: str) -> dict:
    """Run ``script`` after :data:`HOST_PRELUDE` (short settle looks; a 2-slot block
    ``name`` and a read-only view ``b`` of it) on a new namespace host: the count
    floor needs a complete scope. Its ``out``, printed as JSON, returned."""
    return in_namespace_host(HOST_PRELUDE + script)


COUNT_FLOOR = textwrap.dedent("""
    import subprocess, sys
    STAND_IN = %r

    def words():
        return [b.get("active_consumer_count"),
                sum(1 for k in range(L.MAX_CONSUMERS)
                    if b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k)))]

    out = {}
    kept = A.Actor(name, [("consumer", "kept")]).start()
    kept.wait_point()                        # registered and counted: a live consumer
    dead = A.Actor(name, [("consumer", "dead")]).start()
    dead.wait_point()
    dead.kill()                              # registered and counted, then killed
    leaving = A.Actor(name, [("consumer", "leaving"), ("unregister", "ours")],
                      pause="unregister-pid-cleared").start()
    leaving.wait_point()                     # no entry any more, still counted
    out["before"] = words()
    out["cleanup"] = E.cleanup(name)
    out["after"] = words()
    out["held"] = E.cleanup(name)["reconciled"]   # count 2 = F: nothing to lower
    out["held_words"] = words()
    other = subprocess.Popen([sys.executable, "-c", STAND_IN, name], stdout=subprocess.PIPE)
    assert other.stdout.readline() == b"ready\\n"  # a second opener with no entry: F = 3
    out["below"] = E.cleanup(name)["reconciled"]  # count 2 < F: never raised to it
    out["below_words"] = words()
    other.kill()
    other.wait()
    leaving.resume()                         # it uncounts itself
    leaving.wait_point()
    out["left"] = words()
    out["again"] = E.cleanup(name)["reconciled"]
    out["end"] = words()
    print(json.dumps(out, default=str))
""") % STAND_IN


PRODUCER_NAMESAKE = textwrap.dedent("""
    if NUMBER == 1:                       # an actor alone in its namespace is pid 1 there
        child = ["unshare", "--pid", "--fork", "--kill-child"]
        where = [dict(wrap=child), dict(wrap=child)]
    else:                                 # pid NUMBER of two namespaces kept by a spawner
        NS = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
        where = [dict(namespace=A.ActorNamespace(NS), pid=NUMBER) for _ in range(2)]
    p = A.Actor(name, [("producer",)], style="cpp", **where[0]).start()
    p.wait_point()
    p.kill()                              # the producer's record: NUMBER (its own namespace)
    leaving = A.Actor(name, [("consumer", "leaving"), ("unregister", "cpp")], style="cpp",
                      pause="unregister-pid-cleared", **where[1]).start()
    leaving.wait_point()                  # NUMBER of another namespace: no entry, counted
    out = {"producer_pid": b.get("producer_heartbeat_pid"), "leaving": leaving.pid,
           "before": b.get("active_consumer_count")}
    out["cleanup"] = E.cleanup(name)["reconciled"]
    out["heal"] = E.heal(name)["health"]
    out["after"] = b.get("active_consumer_count")
    leaving.resume()                      # it uncounts itself: 0, never wrapped
    leaving.wait_point()
    out["left"] = b.get("active_consumer_count")
    print(json.dumps(out, default=str))
""")


PRODUCER_NAMED = textwrap.dedent("""
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write("999")                    # the producer is pid 1000: no cached small int
    p = A.Actor(name, [("producer",)], style="cpp").start()
    p.wait_point()                        # live, in this namespace, no consumer entry
    dead = A.Actor(name, [("consumer", "dead")], style="cpp").start()
    dead.wait_point()
    dead.kill()                           # registered and counted, then killed
    out = {"producer": p.pid, "producer_pid": b.get("producer_heartbeat_pid"),
           "before": b.get("active_consumer_count")}
    out["cleanup"] = E.cleanup(name)["reconciled"]
    out["after"] = b.get("active_consumer_count")
    p.kill()
    print(json.dumps(out, default=str))
""")


@NEEDS_NAMESPACES
def test_a_live_producer_of_this_namespace_is_named_and_not_counted_as_a_consumer():
    """A live C++ producer of this namespace (pid 1000) with no consumer entry, and a
    consumer killed after counting itself: cleanup clears the dead entry and lowers the
    count to 0 -- the producer's recorded pid names it (it is no consumer between
    unregistering and uncounting), compared by value."""
    out = count_host(PRODUCER_NAMED)
    assert out["producer"] == 1000 and out["producer_pid"] == 1000, out
    assert out["before"] == 1 and out["after"] == 0, out


@NEEDS_NAMESPACES
@pytest.mark.parametrize("number", [1, 1000])
def test_a_dead_producers_pid_names_no_live_consumer_of_another_namespace(number):
    """A C++ producer in one child PID namespace recorded its pid there and died; a
    consumer of another child namespace -- the same pid there -- has cleared its entry's
    pid and not yet uncounted itself (count 1, no entry). The recorded number names no
    producer here (this namespace knows the consumer as another pid, above the number
    for pid 1, below it for pid 1000: compared by equality, not order), so the consumer
    is an uncounted opener: cleanup and heal keep the count at 1, and its own decrement
    then takes it to 0, never wrapped. (Found by the never-steal campaign, seed
    1796179857: the count went to 0 under it.)"""
    out = count_host(PRODUCER_NAMESAKE.replace("NUMBER", str(number)))
    assert out["producer_pid"] == number and out["before"] == 1, out
    assert (out["leaving"] > number) == (number == 1), out      # the premise
    assert out["after"] == 1, out
    assert out["left"] == 0, out


LEAVES_DURING_SETTLE = textwrap.dedent("""
    import time, types
    dead = A.Actor(name, [("consumer", "dead")], style="cpp").start()
    dead.wait_point()
    dead.kill()                           # registered and counted, then killed
    leaving = A.Actor(name, [("consumer", "leaving"), ("unregister", "cpp")], style="cpp",
                      pause="heartbeat").start()
    leaving.wait_point()                  # registered and counted: count 2, two entries
    looks = []

    def settle(pause):                    # the first settle pause: it leaves, fully
        if not looks:
            leaving.resume()
            looks.append(leaving.wait_point()["event"])
        time.sleep(pause)
    _cleanup.time = types.SimpleNamespace(sleep=settle)
    out = {"before": b.get("active_consumer_count")}
    out["cleanup"] = E.cleanup(name)
    out["looks"] = looks
    out["after"] = b.get("active_consumer_count")
    leaving.resume()                      # it exits: no opener is left
    leaving.wait_exit(10)
    out["again"] = E.cleanup(name)["reconciled"]
    out["end"] = b.get("active_consumer_count")
    print(json.dumps(out, default=str))
""")


@NEEDS_NAMESPACES
def test_a_consumer_leaving_during_the_settle_looks_leaves_the_count_alone():
    """cleanup acts on the count only when every settle look reads the pids and count it
    decided on. A consumer that unregisters completely during the first look (its pid
    back to 0, the count one lower: the table is "smaller", not larger) is a change too:
    the count is kept and cleanup says the table kept changing -- it does not go on to a
    compare-and-swap from the stale value. Once that consumer has exited, a second
    cleanup lowers the dead consumer's count to 0."""
    out = count_host(LEAVES_DURING_SETTLE)
    assert out["before"] == 2 and out["looks"] == ["done"], out
    assert out["cleanup"]["cleaned"] == 1, out["cleanup"]
    assert out["cleanup"]["reconciled"] == [
        {"field": "active_consumer_count", "result": "KEPT",
         "message": "the consumer table kept changing; run again"}], out["cleanup"]
    assert out["after"] == 1, out         # its own decrement, nothing of ours
    assert out["again"] == [{"field": "active_consumer_count", "before": 1, "after": 0}], out
    assert out["end"] == 0, out


@NEEDS_NAMESPACES
def test_the_count_floor_counts_each_uncounted_opener_once():
    """The count rule's floor F = R + U in a complete scope: one live consumer, a dead
    one (counted), and one paused between clearing its entry's pid and uncounting
    itself (an opener with no entry: U = 1). Count 3 with 2 entries; cleanup clears the
    dead entry (R = 1) and lowers the count to exactly 2 -- not to 1 (that consumer will
    still decrement: the count would wrap below the live ones) and not kept at 3 (each
    such opener accounts for one count, not more). A cleanup while it is still paused
    (count 2 = F) stores nothing and says why; with a second such opener (F = 3) the
    count 2 is not raised to F either (the floor only ever lowers a count). Once it has uncounted itself the count
    is 1 = R, and a further cleanup changes nothing."""
    out = count_host(COUNT_FLOOR)
    assert out["before"] == [3, 2], out
    assert out["cleanup"]["cleaned"] == 1, out["cleanup"]
    assert {"field": "active_consumer_count", "before": 3, "after": 2} in \
        out["cleanup"]["reconciled"], out["cleanup"]
    assert out["after"] == [2, 1], out
    (held,) = out["held"]
    assert held["result"] == "KEPT" and "1 live process(es)" in held["message"], out["held"]
    assert out["held_words"] == [2, 1], out
    (below,) = out["below"]
    assert below["result"] == "KEPT" and "2 live process(es)" in below["message"], out["below"]
    assert out["below_words"] == [2, 1], out
    assert out["left"] == [1, 1], out
    assert out["again"] == [] and out["end"] == [1, 1], out


@pytest.mark.parametrize("position", [1, 3])
def test_read_index_is_never_lowered_to_a_slower_live_position(lab, position):
    """Sequential_sync's read_index is only ever raised: a live consumer (a process with
    the block mapped, its pid in entry 0) whose position (1) is below read_index (3) and a
    dead one's entry (position 0): cleanup clears the dead entry and leaves read_index at
    3 -- lowering it to the live position would hand the producer back slots it has
    already been told are free (and never unblocks anybody). At read_index itself (3)
    there is nothing to raise: no store, nothing reported."""
    name = lab.name()
    R.create(name, sync=L.ConsumerSync.SEQUENTIAL_SYNC).close()
    with standing_in(name) as live:
        live_and_dead_positions(name, live.pid, read_index=3, write_index=4,
                                live_position=position, dead_position=0)
        out = E.cleanup(name)
        assert out["cleaned"] == 1, out
        with R.attach(name, writable=False) as b:
            assert b.get("read_index") == 3, out["reconciled"]
            assert b.get(L.READ_POSITION, L.read_position(0)) == position
            assert b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(0)) == live.pid
        assert not [r for r in out["reconciled"] if r["field"] == "read_index"], out


def test_a_count_fixed_alone_is_one_recovery_action(block_name):
    """Upstream bookkeeping when cleanup clears no entry but fixes the count (a wrapped
    count, nobody registered, nobody else with the block open): recovery_actions_count
    grows by exactly one; a second cleanup, with nothing to do, adds nothing."""
    name = block_name
    with R.attach(name) as b:
        b.set("active_consumer_count", (1 << 32) - 1)
        actions = b.get("recovery_actions_count")
    out = E.cleanup(name)
    assert out["cleaned"] == 0, out
    assert {"field": "active_consumer_count", "before": (1 << 32) - 1, "after": 0} in \
        out["reconciled"], out
    with R.attach(name, writable=False) as b:
        assert b.get("recovery_actions_count") == actions + 1
    again = E.cleanup(name)
    assert again["reconciled"] == [] and not again["changed"], again
    with R.attach(name, writable=False) as b:
        assert b.get("recovery_actions_count") == actions + 1


def test_a_count_kept_in_a_partial_scope_says_another_process_has_the_block_open(
        block_name, actors):
    """A consumer of ours paused between clearing its entry's pid and uncounting itself:
    count 1, no entry. Where the scan is partial (this development host: PID 1 is not
    readable) the count is kept, and the reason says that another process has the block
    open (the exclusive lease failed) -- not only that the scan is partial."""
    name = block_name
    leaving = actors(name, [("consumer", "leaving"), ("unregister", "ours")],
                     pause="unregister-pid-cleared")
    leaving.wait_point()
    assert words(name)[:2] == (1, 0)
    out = E.cleanup(name)
    (kept,) = [r for r in out["reconciled"] if r["field"] == "active_consumer_count"]
    if "the scan is partial" not in kept["message"]:
        pytest.skip("the scan is complete on this host: %s" % kept["message"])
    assert kept["result"] == "KEPT", kept
    assert "and another process has the block open" in kept["message"], kept
    assert words(name)[:2] == (1, 0)
    leaving.resume()
    leaving.wait_point()
    assert words(name)[:2] == (0, 0)


@pytest.mark.parametrize("policy", [L.ConsumerSync.LATEST_ONLY, L.ConsumerSync.UNSET])
def test_read_index_is_left_alone_unless_sequential_sync(lab, policy):
    """Only Sequential_sync's read_index follows the consumers' positions: under
    Latest_only and Unset (255, a value the format admits) cleanup clears the dead entry
    and leaves read_index where it is, whatever a live consumer's position says."""
    name = lab.name()
    R.create(name, sync=policy).close()
    with standing_in(name) as live:
        live_and_dead_positions(name, live.pid, read_index=1, write_index=6,
                                live_position=5, dead_position=3)
        out = E.cleanup(name)
        assert out["cleaned"] == 1, out
        assert not [r for r in out["reconciled"] if r["field"] == "read_index"], out
        with R.attach(name, writable=False) as b:
            assert b.get("read_index") == 1


def test_evidence_naming_no_slot_of_the_ring_releases_nothing(block_name, actors):
    """Dead consumers whose evidence names a slot index equal to the capacity, one above
    it, and a slot of the ring nobody reads: step 1 releases nothing. Past the slot table
    lies the checksum table (slots 0 and 2's hashes there are read as a "reader_count"):
    a release there would corrupt committed checksums. The entries are still cleared,
    the count goes to 0, and the block passes validation."""
    name = block_name
    producer = actors(name, [("producer",), ("publish", 3)])
    assert producer.wait_point()["event"] == "done"
    producer.resume()
    producer.wait_exit()
    with R.attach(name) as b:
        capacity = b.geo.capacity
        table = b.read(b.geo.checksum_table, b.geo.checksum_entry(3) - b.geo.checksum_table)
        assert all(b.get(R.SLOT["reader_count"], b.geo.slot_entry(i)) for i in (capacity, capacity + 1))
        assert b.get("active_consumer_count") == 0
        for k, index in enumerate((capacity, capacity + 1, 1)):
            dead_consumer(b, k, reading=index + 1)
    out = E.cleanup(name)
    assert not [o for o in out["outcomes"] if "slot" in o], out["outcomes"]
    assert out["cleaned"] == 3, out
    assert [entry(name, k) for k in range(3)] == [CLEARED] * 3
    assert words(name) == (0, 0, [0] * 4), out
    with R.attach(name, writable=False) as b:
        assert b.read(b.geo.checksum_table, len(table)) == table, "checksum table changed"
    assert E.validate(name)["ok"]


@pytest.mark.parametrize("count, expect", [(1 << 31, "raised to R"), (1 << 30, "not wrapped")])
def test_a_count_is_wrapped_from_two_to_the_31(lab, count, expect):
    """The wrapped-count rule's threshold: a count of 2**31 or more is an old underflow
    and goes back to the registered entries (0 here) -- whatever the scope. Below it, a
    count above the entries follows the count rule: with another opener of the block
    (a live process with it mapped, no entry: it may still uncount itself) it is kept
    where the scan is partial and lowered to F = 1 where it is complete; never to 0."""
    name = lab.name()
    R.create(name).close()
    with standing_in(name):
        with R.attach(name) as b:
            b.set("active_consumer_count", count)
        out = E.cleanup(name)
        with R.attach(name, writable=False) as b:
            after = b.get("active_consumer_count")
    (note,) = [r for r in out["reconciled"] if r["field"] == "active_consumer_count"]
    if expect == "raised to R":
        assert note == {"field": "active_consumer_count", "before": count, "after": 0}, out
        assert after == 0
    elif "after" in note:
        assert note == {"field": "active_consumer_count", "before": count, "after": 1}, out
        assert after == 1
    else:
        assert note["result"] == "KEPT" and "the scan is partial" in note["message"], note
        assert after == count


def test_a_count_below_the_entries_is_left_without_a_word(block_name, actors):
    """A consumer paused right after its pid CAS, before ``count += 1`` (count 0, one
    entry): that window is the protocol's own, so cleanup leaves the count and reports
    nothing about it -- no note worded for a count *above* the entries."""
    name = block_name
    arriving = actors(name, [("consumer", "arriving")], pause="pid-cased")
    assert arriving.wait_point()["consumer"] == 0
    assert words(name)[:2] == (0, 1)
    out = E.cleanup(name)
    assert out["cleaned"] == 0 and out["reconciled"] == [] and not out["changed"], out
    assert words(name)[:2] == (0, 1)
    arriving.resume()
    arriving.wait_point()
    assert words(name)[:2] == (1, 1)


def test_a_consumer_registering_during_the_settle_looks_keeps_the_count(block_name, actors, monkeypatch):
    """The settle looks: a wrapped count (nobody registered, nobody else with the block
    open) is to go back to 0, and a consumer registers while cleanup waits between its
    looks (started at cleanup's first pause, and paused right after its pid CAS: entry 0
    now holds its pid). The table moved: the count is kept and the note says to run
    again -- storing 0 would have lost the count the consumer is about to add to."""
    name = block_name
    with R.attach(name) as b:
        b.set("active_consumer_count", (1 << 32) - 1)
    arrived = []

    def pause(seconds):                 # the scheduler: the consumer arrives here
        if not arrived:
            arrived.append(actors(name, [("consumer", "late")], pause="pid-cased"))
            assert arrived[0].wait_point()["consumer"] == 0
        time.sleep(seconds)
    monkeypatch.setattr(_cleanup, "time", types.SimpleNamespace(sleep=pause))
    out = E.cleanup(name)
    assert arrived, "cleanup took no settle look"
    assert out["reconciled"] == [{"field": "active_consumer_count", "result": "KEPT",
                                  "message": "the consumer table kept changing; run again"}], out
    assert words(name)[:2] == ((1 << 32) - 1, 1)


def test_an_entry_that_moved_under_cleanup_fails_alone(block_name, monkeypatch):
    """Two dead consumers (entries 0 and 1); between cleanup's look and its claim of
    entry 0, another cleaner (pylabhub's own: pid CAS to 0, ``count -= 1``) clears that
    entry. Cleanup's CAS on the dead pid fails: entry 0 is reported FAILED with nothing
    changed by us, and entry 1 is still cleared."""
    name = block_name
    with R.attach(name) as b:
        first = dead_consumer(b, 0)
        dead_consumer(b, 1)
    real = _cleanup._clear_entry

    def racing(scene, c):               # the scheduler: the other cleaner runs here
        if c.index == 0:
            with R.attach(name) as b:
                b.set(L.CONSUMER["consumer_pid"], 0, L.consumer_entry(0))
                b.set("active_consumer_count", b.get("active_consumer_count") - 1)
        return real(scene, c)
    monkeypatch.setattr(_cleanup, "_clear_entry", racing)
    out = E.cleanup(name)
    by_entry = {o["consumer"]: o for o in out["outcomes"] if "consumer" in o}
    assert by_entry[0]["result"] == "FAILED" and by_entry[0]["pid"] == first, out["outcomes"]
    assert by_entry[1]["result"] == "SUCCESS", out["outcomes"]
    assert out["cleaned"] == 1, out
    assert entry(name, 1) == CLEARED
    assert words(name)[:2] == (0, 0), out


def test_read_index_moved_before_its_store_rolls_the_reconciliation_back(lab, monkeypatch):
    """Sequential_sync, a wrapped count and a read_index below a live consumer's
    position: both are to be fixed in one step. read_index moves between cleanup's read
    of it and its store: the CAS fails, the step is rolled back (the count's store too)
    and reported FAILED -- no exception, no half-done reconciliation."""
    name = lab.name()
    R.create(name, sync=L.ConsumerSync.SEQUENTIAL_SYNC).close()
    with standing_in(name) as live:
        with R.attach(name) as b:
            b.set("write_index", 5)
            b.set("read_index", 1)
            b.set("active_consumer_count", (1 << 32) - 1)
            b.set(L.CONSUMER["consumer_pid"], live.pid, L.consumer_entry(0))
            b.set(L.READ_POSITION, 4, L.read_position(0))
        real = _cleanup._read_index_target
        calls = []

        def racing(plan, pids):         # the scheduler: read_index moves after the read
            got = real(plan, pids)
            calls.append(got)
            if len(calls) == 2:
                with R.attach(name) as b:
                    b.set("read_index", 2)
            return got
        monkeypatch.setattr(_cleanup, "_read_index_target", racing)
        out = E.cleanup(name)
        assert calls[-1] == (4, 1), calls
        (failed,) = out["reconciled"]
        assert failed["result"] == "FAILED" and failed["field"] == "header.read_index", out
        with R.attach(name, writable=False) as b:
            assert b.get("active_consumer_count") == (1 << 32) - 1
            assert b.get("read_index") == 2


def test_a_count_kept_where_the_lease_cannot_tell_names_no_other_opener(block_name):
    """A memfd-backed block (pylabhub's newer channels; a lease cannot tell who else has
    a memfd open, and its scope is partial): a count above the entries is kept with the
    partial-scope reason, and the reason does not claim that another process has the
    block open -- the lease said neither yes nor no."""
    with R.attach(block_name) as b:
        b.set("active_consumer_count", 1)
    with open(os.path.join("/dev/shm", block_name), "rb") as f:
        image = f.read()
    fd = os.memfd_create("plh_cleanup_pinned")
    try:
        os.write(fd, image)
        out = E.cleanup("memfd:%d:%d" % (os.getpid(), fd))
        (kept,) = out["reconciled"]
        assert kept["result"] == "KEPT" and "the scan is partial" in kept["message"], kept
        assert "another process" not in kept["message"], kept
        assert os.pread(fd, len(image), 0) == image, "nothing changed"
    finally:
        os.close(fd)
