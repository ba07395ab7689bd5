"""The reader rule's attribution pinned where mutation testing found it unpinned
(docs/reliability.md section 8, target ``readers``).

On a fleet-lab-like host (new PID and mount namespaces, private /dev/shm: scope
``namespace``, complete), real consumers of our runtime killed or paused inside reads.
A live consumer of ours with trusted evidence accounts for exactly the reads its
evidence names -- in its own slot, not in a lower one -- so the dead readers beside it
are released and its own read is kept."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.pylabhub.recovery.tests.support import in_namespace_host

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare(1)")

CODE = """
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _actors as A, _engine as E, _layout as L, _runtime as R)
from ansible_collections.pylabhub.recovery.plugins.module_utils import _validate
_validate._SETTLE_S = (0.002, 0.01, 0.02)
name = "plhattrib"
R.create(name, capacity=4).close()
b = R.attach(name, writable=False)  # a read-only look: no opener that could read

def readers():
    return [b.get(R.SLOT["reader_count"], b.geo.slot_entry(i)) for i in range(4)]

def entries():
    return [k for k in range(L.MAX_CONSUMERS)
            if b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k))]

out = {}
p = A.Actor(name, [("producer",), ("publish", 3)]).start()
p.wait_point()                        # slots 0, 1, 2 committed
p.resume()
p.wait_exit()
d1 = A.Actor(name, [("consumer", "d1"), ("read", 1)], pause="inside").start()
d1.wait_point()
d1.kill()                             # entry 0: dead inside slot 1
if BIG_PID:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write("1000")               # the live one's pid: no small (cached) int
live = A.Actor(name, [("consumer", "live"), ("read", 2)], pause="inside").start()
live.wait_point()                     # entry 1: alive inside slot 2
d2 = A.Actor(name, [("consumer", "d2"), ("read", 2)], pause="inside").start()
d2.wait_point()
d2.kill()                             # entry 2: dead inside slot 2
solo = A.Actor(name, [("consumer", "solo"), ("read", 0)], pause="inside").start()
solo.wait_point()                     # entry 3: alive, alone inside slot 0
out["live_pid"] = live.pid
out["before"] = {"readers": readers(), "entries": entries(),
                 "count": b.get("active_consumer_count")}
out["provably_dead"], out["attributed"], out["why"] = {}, {}, {}
for i in (0, 1, 2):
    r = E.diagnose(name, i)["slots"][0]["readers"]
    out["provably_dead"][i] = r["provably_dead"]
    out["attributed"][i] = [a["consumer"] for a in r["attributed"]]
    out["why"][i] = {c["pid"]: c["why"] for c in r["could_be_inside"]}
out["cleanup"] = E.cleanup(name)
out["after"] = {"readers": readers(), "entries": entries(),
                "count": b.get("active_consumer_count")}
print(json.dumps(out, default=str))
"""


@pytest.mark.parametrize("big_pid", [False, True], ids=["small-pid", "pid-above-256"])
def test_a_live_consumer_accounts_for_its_own_read_only(big_pid):
    """Slot 1: one dead reader, and a live consumer of ours (pid > 256, in entry 1 after
    a dead entry 0) whose evidence says it reads slot 2: it accounts for none of slot
    1's readers, so slot 1's reader is provably dead and released; nor does a live one
    inside slot 0 (a lower slot is not this slot). Slot 0: that live reader alone
    accounts for its whole count: nothing is provably dead there. Slot 2: the live
    consumer and a dead one inside: one reader is released, the live one's is kept
    (count 2 -> 1, never 0). The dead entries are cleared, the live one's is kept. Its
    pid both small (CPython caches ints up to 256: equal pids are one object) and not
    (equal pids are two objects): pids are compared by value."""
    out = in_namespace_host("BIG_PID = %r\n" % big_pid + CODE)
    assert (out["live_pid"] > 256) == big_pid, out
    assert out["before"] == {"readers": [1, 1, 2, 0], "entries": [0, 1, 2, 3], "count": 4}, out
    # slot 0: the solo reader accounts for its own read (never "at least one is gone");
    # slot 1: a live reader of a HIGHER slot and an idle-looking lower one account for none
    assert out["provably_dead"] == {"0": 0, "1": 1, "2": 1}, out
    # the consumers whose evidence names the slot, and only those
    assert out["attributed"] == {"0": [3], "1": [0], "2": [1, 2]}, out
    live = str(out["live_pid"])
    assert out["why"]["1"][live] == "our trusted evidence: reads no slot or another slot", out
    assert out["why"]["2"][live] == "our trusted evidence: reads this slot", out
    assert out["cleanup"]["cleaned"] == 2, out["cleanup"]
    assert out["after"]["readers"] == [1, 0, 1, 0], out
    assert out["after"]["entries"] == [1, 3], out


# The scenarios below run on the reader scenarios' namespace host (``run``: the block
# ``name``, ``words(i)``, ``blocked_draining(i)``, ``brief(heal)``, ``killed_inside``).
from .readers_host import run  # noqa: E402

LATE = """
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _observe as O, _plan as P)
p = A.Actor(name, [("producer",), ("publish", 4)], pause="committed", nth=2).start()
p.wait_point()
killed_inside("cpp", 1, style="cpp")  # a dead reader in slot 1 ...
p.resume()
blocked_draining(1)                   # ... and the producer waiting on it
out["p"] = p.pid
with B.open_block(name, writable=False) as blk:
    for_openers = O.Scene(P.Plan(blk, True))    # two engine calls: each its own scans
    for_reader = O.Scene(P.Plan(blk, True))
    first = for_openers.scan, for_reader.scan   # taken now: the producer only
    out["first"] = [sorted(proc.pid for proc, hold in s.holders(for_reader.id.key) if hold.rw)
                    for s in first]
    late = A.Actor(name, [("consumer", "late")], style="cpp").start()
    late.wait_point()                 # maps the block after those scans: may read slot 1
    out["late"] = late.pid
    out["openers_after"] = sorted(o.pid for o in for_openers.openers(time.monotonic_ns()))
    out["openers_then"] = sorted(o.pid for o in for_openers.openers(scan=first[0]))
    view = for_reader.slot(1)         # the count is read now, after the first scan
    out["releasable"] = view.releasable_readers
    out["may_hold"] = {c.opener.pid: c.contribution for c in view.candidates}
late.kill()
out["heal"] = brief(E.heal(name))     # the late one gone: the dead reader is released
out["after"] = words(1)
print(json.dumps(out))
"""


def test_a_reader_that_maps_the_block_after_the_first_scan_is_not_missed():
    """A scan older than the count cannot decide a release: a C++-style consumer that
    maps the block after this engine call's first scan (when only the waiting producer
    had it) may be inside slot 1 by the time its count is read. The reader rule scans
    again and keeps the reader (0 releasable, the late one may hold any); ``openers``
    asked for a time after the late one started answers from a newer scan. With the late
    one gone, heal releases the dead reader."""
    out = run(LATE, capacity=2)
    p, late = str(out["p"]), str(out["late"])
    assert out["first"] == [[out["p"]], [out["p"]]], out      # the premise: it came later
    assert out["openers_then"] == [out["p"]], out
    assert out["openers_after"] == sorted([out["p"], out["late"]]), out
    assert out["releasable"] == 0, out
    assert out["may_hold"] == {p: 0, late: None}, out
    released = [o for o in out["heal"]["outcomes"] if o["slot"] == 1]
    assert released and released[-1]["result"] == "SUCCESS", out["heal"]
    assert out["after"]["reader_count"] == 0, out


NOT_DRAINING = """
p = A.Actor(name, [("producer",), ("publish", 2)]).start()
p.wait_point()                        # alive with the block mapped, no lock held
base = b.geo.slot_entry(1)
with R.attach(name) as w:             # its pid on slot 1's lock, a waiting flag, a reader
    w.set(S["write_lock"], p.pid, base)
    w.set(S["slot_state"], STATE, base)
    w.set(S["writer_waiting"], 1, base)
    w.set(S["reader_count"], 1, base)
out["p"] = p.pid
out["readers"] = E.diagnose(name, 1)["slots"][0]["readers"]
out["recover"] = E.recover(name, 1, "release_readers")
out["after"] = words(1)
print(json.dumps(out))
"""


@pytest.mark.parametrize("state", [1, 2, 4, 3], ids=["WRITING", "COMMITTED", "invalid-4",
                                                     "DRAINING"])
def test_only_a_draining_lock_holder_is_the_waiting_writer(state):
    """The lock holder accounts for none of a slot's readers only while it drains them
    (DRAINING, ``writer_waiting``): then it waits in acquire and cannot be inside. In
    any other state word -- WRITING, COMMITTED, a value no state has -- the same live
    process with its pid on the lock and the waiting flag set may itself be the reader:
    nothing is provably gone and an unforced release is refused, the count kept."""
    out = run("STATE = %d\n" % state + NOT_DRAINING, capacity=2)
    (cand,) = out["readers"]["could_be_inside"]
    assert cand["pid"] == out["p"], out
    if state == 3:
        assert cand["may_hold"] == 0 and out["readers"]["provably_dead"] == 1, out
        assert cand["why"] == "the slot's own waiting writer, no consumer registered", out
        assert out["recover"]["changed"] and out["after"]["reader_count"] == 0, out
        return
    assert cand["may_hold"] == "any" and out["readers"]["provably_dead"] == 0, out
    # the table is not full: no "may read unregistered" suffix
    assert cand["why"] == "has the block mapped writable and no consumer entry", out
    assert not out["recover"]["changed"] and out["after"]["reader_count"] == 1, out


def test_reads_of_a_slot_above_256_are_compared_by_value():
    """CPython caches small ints: slot numbers above 256 are distinct objects. A live
    consumer of ours and a dead one inside slot 280: the live one's evidence names the
    slot (one reader kept), the dead one's read is released, and both are attributed."""
    out = run("""
        p = A.Actor(name, [("producer",), ("publish", 281)]).start()
        p.wait_point()
        p.resume()
        p.wait_exit()
        live = A.Actor(name, [("consumer", "live"), ("read", 280)], pause="inside").start()
        live.wait_point()
        killed_inside("dead", 280, pause="inside")
        out["count"] = words(280)["reader_count"]
        out["readers"] = E.diagnose(name, 280)["slots"][0]["readers"]
        out["cleanup"] = E.cleanup(name)["cleaned"]
        out["after"] = words(280)["reader_count"]
        print(json.dumps(out))
    """, capacity=300)
    assert out["count"] == 2, out
    readers = out["readers"]
    assert readers["provably_dead"] == 1 and readers["may_be_live"] == 1, readers
    assert [a["consumer"] for a in readers["attributed"]] == [0, 1], readers
    assert out["cleanup"] == 1 and out["after"] == 1, out


def test_readers_that_recorded_a_read_before_counting_it_keep_the_count():
    """Our consumer records the slot it is about to read, then counts itself in. Two
    live ones paused between the two steps on slot 1, beside a dead reader counted
    there: their evidence accounts for more readers than the count holds (2 > 1), so
    none is provably gone -- never a negative number of releasable readers."""
    out = run("""
        p = A.Actor(name, [("producer",), ("publish", 2)]).start()
        p.wait_point()
        p.resume()
        p.wait_exit()                 # no producer: only the readers could be inside
        killed_inside("dead", 1, pause="inside")
        about = [A.Actor(name, [("consumer", "c%d" % k), ("read", 1)],
                         pause="reading-recorded").start() for k in range(2)]
        for a in about:
            a.wait_point()
        out["count"] = words(1)["reader_count"]
        out["readers"] = E.diagnose(name, 1)["slots"][0]["readers"]
        out["recover"] = E.recover(name, 1, "release_readers")
        out["after"] = words(1)["reader_count"]
        print(json.dumps(out))
    """, capacity=2)
    assert out["count"] == 1, out
    readers = out["readers"]
    assert readers["provably_dead"] == 0 and readers["may_be_live"] == 1, readers
    assert [c["may_hold"] for c in readers["could_be_inside"]] == [1, 1], readers
    assert not out["recover"]["changed"] and out["after"] == 1, out


@pytest.mark.parametrize("order", ["ours-first", "ours-last"])
def test_evidence_of_a_namesake_in_another_namespace_accounts_for_nobody_else(order):
    """PID numbers of different PID namespaces collide. A consumer of ours, pid 4242 of
    its namespace (no process of ours has that number: its evidence is checked against
    the scan and trusted), registered and reading nothing; another process, pid 4242 of
    another namespace, cleared its entry while still inside slot 1; the producer waits
    on slot 1. The entry's pid 4242 names both, but the evidence is the first one's: it
    says nothing of where the second reads, whichever started first (their pids in our
    namespace compare either way). Nothing is provably gone; heal refuses."""
    out = run("""
        NS = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
        ns1, ns2 = A.ActorNamespace(NS), A.ActorNamespace(NS)
        p = A.Actor(name, [("producer",), ("publish", 4)], pause="committed", nth=2).start()
        p.wait_point()

        def ours():
            a = A.Actor(name, [("consumer", "ours")], namespace=ns1, pid=4242).start()
            a.wait_point()
            return a

        if ORDER == "ours-first":
            t = ours()
        leaving = A.Actor(name, [("consumer", "leaving"), ("read", 1), ("unregister", "ours")],
                          pause="unregister-pid-cleared", namespace=ns2, pid=4242).start()
        leaving.wait_point()
        if ORDER == "ours-last":
            t = ours()
        p.resume()
        blocked_draining(1)
        out["pids"] = {"ours": t.pid, "leaving": leaving.pid, "p": p.pid,
                       "ns": [t.ns_pid, leaving.ns_pid]}
        out["readers"] = E.diagnose(name, 1)["slots"][0]["readers"]
        out["heal"] = brief(E.heal(name))
        out["after"] = words(1)
        print(json.dumps(out))
    """.replace("ORDER", repr(order)), capacity=2)
    pids = out["pids"]
    assert pids["ns"] == [4242, 4242], out
    assert (pids["ours"] < pids["leaving"]) == (order == "ours-first"), out   # the premise
    may = {c["pid"]: c["may_hold"] for c in out["readers"]["could_be_inside"]}
    assert may == {pids["p"]: 0, pids["ours"]: 0, pids["leaving"]: "any"}, out
    assert out["readers"]["provably_dead"] == 0, out
    heal = out["heal"]
    assert heal["health"] == "suspect" and heal["suspect"] == [1], heal
    assert out["after"]["reader_count"] == 1, out
