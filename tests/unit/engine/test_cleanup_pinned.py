"""cleanup's rules pinned where mutation testing found them unpinned (docs/reliability.md
section 8, target ``cleanup``).

Each test kills surviving cosmic-ray mutants of ``_cleanup.py``: it fails when the rule
it names is changed. Real processes (crash actors killed or paused at protocol points),
real blocks; the count floor needs a complete scope, so that one runs on a fleet-lab-like
host (new PID and mount namespaces, private /dev/shm: scope ``namespace``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _layout as L, _runtime as R, _validate)
from ansible_collections.pylabhub.recovery.tests.support import in_namespace_host

NEEDS_NAMESPACES = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                      reason="needs root and unshare(1)")


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch):
    monkeypatch.setattr(_validate, "_SETTLE_S", (0.002, 0.01, 0.02))


def words(name):
    """(active_consumer_count, registered entries, reader_count of every slot)."""
    with R.attach(name, writable=False) as b:
        registered = sum(1 for k in range(L.MAX_CONSUMERS)
                         if b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k)))
        readers = [b.get(R.SLOT["reader_count"], b.geo.slot_entry(i))
                   for i in range(b.geo.capacity)]
        return b.get("active_consumer_count"), registered, readers


def entry(name, k):
    """Consumer entry ``k`` as the block holds it (text fields up to their NUL)."""
    with R.attach(name, writable=False) as b:
        base = L.consumer_entry(k)
        text = {n: b.read(base + L.CONSUMER[n].offset, L.CONSUMER[n].size).split(b"\0")[0]
                for n in ("consumer_uid", "consumer_name")}
        return {"pid": b.get(L.CONSUMER["consumer_pid"], base),
                "heartbeat": b.get(L.CONSUMER["last_heartbeat_ns"], base),
                "uid": text["consumer_uid"], "name": text["consumer_name"],
                "position": b.get(L.READ_POSITION, L.read_position(k))}


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
    assert entry(name, 0) == {"pid": 0, "heartbeat": 0, "uid": b"", "name": b"",
                              "position": 0}, "the dead entry is cleared in full"


COUNT_FLOOR = textwrap.dedent("""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _actors as A, _engine as E, _layout as L, _runtime as R, _validate)
    _validate._SETTLE_S = (0.002, 0.01, 0.02)
    name = "plhfloor"
    R.create(name, capacity=2).close()
    b = R.attach(name, writable=False)  # a read-only look: not an opener

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
    leaving.resume()                         # it uncounts itself
    leaving.wait_point()
    out["left"] = words()
    out["again"] = E.cleanup(name)["reconciled"]
    out["end"] = words()
    print(json.dumps(out, default=str))
""")


@NEEDS_NAMESPACES
def test_the_count_floor_counts_each_uncounted_opener_once():
    """The count rule's floor F = R + U in a complete scope: one live consumer, a dead
    one (counted), and one paused between clearing its entry's pid and uncounting
    itself (an opener with no entry: U = 1). Count 3 with 2 entries; cleanup clears the
    dead entry (R = 1) and lowers the count to exactly 2 -- not to 1 (that consumer will
    still decrement: the count would wrap below the live ones) and not kept at 3 (each
    such opener accounts for one count, not more). Once it has uncounted itself the count
    is 1 = R, and a second cleanup changes nothing."""
    out = in_namespace_host(COUNT_FLOOR)
    assert out["before"] == [3, 2], out
    assert out["cleanup"]["cleaned"] == 1, out["cleanup"]
    assert {"field": "active_consumer_count", "before": 3, "after": 2} in \
        out["cleanup"]["reconciled"], out["cleanup"]
    assert out["after"] == [2, 1], out
    assert out["left"] == [1, 1], out
    assert out["again"] == [] and out["end"] == [1, 1], out


STAND_IN = ("import mmap, os, sys, time; fd = os.open('/dev/shm/' + sys.argv[1], os.O_RDWR);"
            " m = mmap.mmap(fd, 0); os.close(fd); print('ready', flush=True); time.sleep(120)")


def test_read_index_is_never_lowered_to_a_slower_live_position(lab):
    """Sequential_sync's read_index is only ever raised: a live consumer (a process with
    the block mapped, its pid in entry 0) whose position (1) is below read_index (3) and a
    dead one's entry (position 0): cleanup clears the dead entry and leaves read_index at
    3 -- lowering it to the live position would hand the producer back slots it has
    already been told are free (and never unblocks anybody)."""
    from .helpers import reaped_pid
    name = lab.name()
    R.create(name, sync=L.ConsumerSync.SEQUENTIAL_SYNC).close()
    live = subprocess.Popen([sys.executable, "-c", STAND_IN, name], stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline() == b"ready\n"
        with R.attach(name) as b:
            b.set("read_index", 3)
            b.set("write_index", 4)
            b.set("active_consumer_count", 2)
            b.set(L.CONSUMER["consumer_pid"], live.pid, L.consumer_entry(0))
            b.set(L.READ_POSITION, 1, L.read_position(0))
            b.set(L.CONSUMER["consumer_pid"], reaped_pid(), L.consumer_entry(1))
            b.set(L.READ_POSITION, 0, L.read_position(1))
        out = E.cleanup(name)
        assert out["cleaned"] == 1, out
        with R.attach(name, writable=False) as b:
            assert b.get("read_index") == 3, out["reconciled"]
            assert b.get(L.READ_POSITION, L.read_position(0)) == 1
            assert b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(0)) == live.pid
        assert not [r for r in out["reconciled"] if r["field"] == "read_index"], out
    finally:
        live.kill()
        live.wait()


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
    from .helpers import reaped_pid
    name = lab.name()
    R.create(name, sync=policy).close()
    live = subprocess.Popen([sys.executable, "-c", STAND_IN, name], stdout=subprocess.PIPE)
    try:
        assert live.stdout.readline() == b"ready\n"
        with R.attach(name) as b:
            b.set("read_index", 1)
            b.set("write_index", 6)
            b.set("active_consumer_count", 2)
            b.set(L.CONSUMER["consumer_pid"], live.pid, L.consumer_entry(0))
            b.set(L.READ_POSITION, 5, L.read_position(0))
            b.set(L.CONSUMER["consumer_pid"], reaped_pid(), L.consumer_entry(1))
            b.set(L.READ_POSITION, 3, L.read_position(1))
        out = E.cleanup(name)
        assert out["cleaned"] == 1, out
        assert not [r for r in out["reconciled"] if r["field"] == "read_index"], out
        with R.attach(name, writable=False) as b:
            assert b.get("read_index") == 1
    finally:
        live.kill()
        live.wait()
