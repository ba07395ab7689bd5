"""Readers on kernel truth (issue 10 item 2, D3; issue 12's full consumer table).

``reader_count`` names nobody. A reader is released without force only as far as no live
process with the block mapped writable could be inside; only a complete scan proves that.
These scenarios run on a fleet-lab-like host (new PID and mount namespaces, a private
/dev/shm: scope ``namespace``, complete) with real processes of our runtime, killed or
paused at protocol points. Each failed on the rule these replaced (attribution by
recorded "reading" slots) unless noted.
"""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.pylabhub.recovery.tests.support import stand_in

from .readers_host import run

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare(1)")


def test_scenario_2_a_dead_reader_and_a_live_blocked_producer_healed_without_force():
    """The procedure's scenario 2: a consumer with no evidence (C++-style) SIGKILLed inside
    slot 1, the live producer blocked draining it. The only live opener is the slot's own
    waiting writer with no consumer entry: heal releases the reader, the producer's
    acquire completes by itself and its new commits read back."""
    out = run("""
        p = A.Actor(name, [("producer",), ("publish", 4)], pause="committed", nth=2).start()
        p.wait_point()
        killed_inside("cpp", 1, style="cpp")
        p.resume()                      # commits id 2 (slot 0), then waits on slot 1
        blocked_draining(1)
        out["before"] = words(1)
        out["diagnose"] = E.diagnose(name, 1)["slots"][0]["readers"]
        out["heal"] = brief(E.heal(name))
        done = p.wait_point()           # the producer went on by itself
        out["done"] = done["event"]
        out["commit_index"] = b.get("commit_index")
        with R.attach(name) as w:
            rd = R.Consumer(w, name="check")
            rs = rd.acquire(1)
            out["payload"] = rd.read(rs)[:20].decode()
            rd.release(rs)
            rd.unregister()
        out["after"] = E.diagnose(name)["health"]
        p.resume()
        p.wait_exit()
        print(json.dumps(out))
    """)
    assert out["before"]["reader_count"] == 1 and out["before"]["writer_waiting"] == 1, out
    readers = out["diagnose"]
    assert readers["scope"] == "namespace" and readers["provably_dead"] == 1, readers
    (waiter,) = readers["could_be_inside"]
    assert waiter["may_hold"] == 0 and "own waiting writer" in waiter["why"], waiter
    heal = out["heal"]
    released = [o for o in heal["outcomes"] if o["slot"] == 1]
    assert released and released[-1]["result"] == "SUCCESS", heal
    assert "reader_count 1 → 0" in released[-1]["message"], released
    assert heal["health"] == "healthy", heal
    assert out["done"] == "done" and out["commit_index"] == 3, out
    assert out["payload"].startswith("plh-actor slot 3"), out
    assert out["after"] == "healthy"


def test_scenario_2_with_live_cpp_consumers_is_refused_with_the_forced_command():
    """The same jam, but live C++-style consumers (no evidence: they could be inside slot
    1) are present: nothing proves the reader gone. heal refuses with the forced
    command and the block is suspect, never healthy; the count is left alone."""
    out = run("""
        p = A.Actor(name, [("producer",), ("publish", 4)], pause="committed", nth=2).start()
        p.wait_point()
        killed_inside("dead", 1, style="cpp")
        live = [A.Actor(name, [("consumer", "live%d" % k)], style="cpp").start()
                for k in range(3)]
        for a in live:
            a.wait_point()
        p.resume()
        blocked_draining(1)
        out["heal"] = brief(E.heal(name))
        out["after"] = words(1)
        out["recover"] = E.recover(name, 1, "release_readers")
        print(json.dumps(out))
    """)
    heal = out["heal"]
    assert heal["health"] == "suspect" and heal["suspect"] == [1], heal
    refused = [o for o in heal["outcomes"] if o["slot"] == 1 and o["result"] == "UNSAFE"]
    assert refused, heal
    assert refused[0]["next"] == {"operation": "recover", "slot": 1,
                                  "action": "release_readers", "force": True}, refused
    assert "no trusted evidence" in refused[0]["message"], refused
    assert {"operation": "recover", "slot": 1, "action": "release_readers",
            "force": True} in heal["next"], heal
    assert out["after"]["reader_count"] == 1 and out["after"]["writer_waiting"] == 1
    assert out["recover"]["result"] == "UNSAFE" and not out["recover"]["changed"]


def test_d3_a_live_consumer_holding_several_reads_keeps_its_count():
    """D3: a live consumer of ours inside slots 1 and 2 (evidence: several), a consumer
    of ours that recorded "reading slot 1" and was SIGKILLed before counting itself in,
    and the producer waiting on slot 1. The only reader of slot 1 is live: unforced
    release_readers and heal leave its count alone and heal does not say healthy (the
    writer waits on a live reader that does not move: suspect). Passed on the previous
    rule too (it already distrusted "several"); pinned here on the new one."""
    out = run("""
        p = A.Actor(name, [("producer",), ("publish", 6)], pause="committed", nth=3).start()
        p.wait_point()
        live = A.Actor(name, [("consumer", "live"), ("read", 1), ("read", 2)]).start()
        live.wait_point()
        k = live.reports[-1]["consumer"]
        ev = L.consumer_evidence(k)
        out["live_reading"] = b.get(L.CONSUMER_EVIDENCE["reading"], ev) == L.READING_SEVERAL
        killed_inside("dead", 1, pause="reading-recorded")
        p.resume()                      # ids 3 (slot 3), 4 (slot 0), then waits on slot 1
        blocked_draining(1)
        out["recover"] = E.recover(name, 1, "release_readers")
        out["count_after_recover"] = words(1)["reader_count"]
        out["heal"] = brief(E.heal(name))
        out["count_after_heal"] = words(1)["reader_count"]
        print(json.dumps(out))
    """, capacity=4)
    assert out["live_reading"], out
    assert out["recover"]["result"] == "UNSAFE" and not out["recover"]["changed"], out
    assert out["count_after_recover"] == 1 and out["count_after_heal"] == 1, out
    heal = out["heal"]
    assert heal["health"] != "healthy" and 1 in heal["suspect"], heal


def test_full_table_unregistered_reader_refused_while_consumers_live_released_when_dead():
    """Issue 12's full table: 8 live consumers registered, a 9th reader with no entry
    killed inside slot 1, the producer blocked draining it. The table-full finding is
    reported; heal refuses with the forced command (suspect). Once every consumer and
    the producer are dead, heal releases the reader (nobody else has the block open)."""
    out = run("""
        p = A.Actor(name, [("producer",), ("publish", 4)], pause="committed", nth=2).start()
        p.wait_point()
        # the 9th reader: its entry is taken back as if it had never registered
        k = killed_inside("ninth", 1, style="cpp")["consumer"]
        base = L.consumer_entry(k)
        with R.attach(name) as w:
            w.set(R.CONS["consumer_pid"], 0, base)
            w.set(R.CONS["last_heartbeat_ns"], 0, base)
            w.add("active_consumer_count", -1)
        live = [A.Actor(name, [("consumer", "c%d" % j)], style="cpp").start()
                for j in range(8)]
        for a in live:
            a.wait_point()
        p.resume()
        blocked_draining(1)
        d = E.diagnose(name)
        out["findings"] = [f["code"] for f in d["findings"]]
        out["why"] = {c["pid"]: c["why"] for s in d["slots"] if s["index"] == 1
                      for c in s["readers"]["could_be_inside"]}
        out["p"] = p.pid
        out["diag_health"] = d["health"]
        out["heal"] = brief(E.heal(name))
        out["count_live"] = words(1)["reader_count"]
        for a in live + [p]:
            a.kill()
        out["heal_dead"] = brief(E.heal(name))
        out["count_dead"] = words(1)["reader_count"]
        print(json.dumps(out))
    """)
    assert "consumer-table-full" in out["findings"], out
    # the waiting producer has no entry and the table is full: it may read unregistered
    assert out["why"][str(out["p"])] == ("has the block mapped writable and no consumer entry"
                                         " (the consumer table is full: it may read "
                                         "unregistered)"), out
    assert out["diag_health"] == "suspect", out
    heal = out["heal"]
    assert heal["health"] == "suspect" and heal["suspect"] == [1], heal
    assert any(o["slot"] == 1 and o["result"] == "UNSAFE" and o["next"]["force"]
               for o in heal["outcomes"]), heal
    assert out["count_live"] == 1
    dead = out["heal_dead"]
    assert any(o["slot"] == 1 and o["result"] == "SUCCESS" for o in dead["outcomes"]), dead
    assert out["count_dead"] == 0 and dead["health"] != "suspect", dead


def test_fixture_i_full_table_refused_with_live_stand_ins_released_when_all_dead(lab):
    """Fixture i (real C++ segment): 8 registered consumers, a 9th unregistered reader
    killed in slot 2, the producer DRAINING slot 2 for ever. With the 8 consumers and
    the producer alive (live stand-ins, their pids written where the README says), heal
    refuses slot 2 with the forced command and the block is suspect; the table-full
    finding is reported. With every pid dead, heal releases the reader (nobody has the
    block open) and the block is no longer stuck there."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
    from .helpers import image
    name = lab.fixture("i_full_table_unregistered_reader.bin")
    path = os.path.join("/dev/shm", name)
    procs = [stand_in(name) for dummy in range(9)]
    try:
        with open(path, "r+b") as f:
            for k, p in enumerate(procs[:8]):
                f.seek(496 + 128 * k)
                f.write(p.pid.to_bytes(8, "little"))
            for off in (4096 + 64 * 2, 2624):               # slot 2's lock, the producer
                f.seek(off)
                f.write(procs[8].pid.to_bytes(8, "little"))
        d = E.diagnose(name)
        assert "consumer-table-full" in [f["code"] for f in d["findings"]], d["findings"]
        assert d["health"] == "suspect" and d["suspect_slots"] == [2], d
        healed = E.heal(name)
        assert healed["health"] == "suspect", healed["after"]
        refused = [o for o in healed["outcomes"] if o["slot"] == 2 and o["result"] == "UNSAFE"]
        assert refused and refused[0]["next"] == {
            "operation": "recover", "slot": 2, "action": "release_readers", "force": True}
        img = image(name)
        assert img.slot(2)["readers"] == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
    healed = E.heal(name)
    released = [o for o in healed["outcomes"] if o["slot"] == 2 and o["result"] == "SUCCESS"]
    assert released, healed["outcomes"]
    assert image(name).slot(2)["readers"] == 0
    assert 2 not in healed["after"]["stuck_slots"] + healed["after"]["suspect_slots"]


def test_a_pid_number_two_namespaces_show_names_neither_of_them():
    """Found by the never-steal campaign (seed 22, scenario 11: the count lowered below
    the live consumers). PID numbers of different PID namespaces collide: the producer
    runs as pid 1 of its own namespace and waits on slot 1; a consumer, pid 1 of another
    namespace, cleared its entry's pid while still inside slot 1 and is paused before
    uncounting itself. The lock's pid 1 must not make that reader "the slot's own waiting
    writer" (0 readers), and the producer's pid 1 must not hide it from the count's
    floor: its read and its count are kept, heal refuses with the forced command. Then a
    third consumer registers, pid 1 of a third namespace: the entry's pid 1 names none of
    them for sure, so the count (2) is still not lowered to the registered consumers."""
    out = run("""
        NS = ["unshare", "--pid", "--fork", "--kill-child"]
        p = A.Actor(name, [("producer",), ("publish", 4)], pause="committed", nth=2,
                    wrap=NS).start()
        p.wait_point()
        leaving = A.Actor(name, [("consumer", "leaving"), ("read", 1), ("unregister", "ours")],
                          pause="unregister-pid-cleared", wrap=NS).start()
        leaving.wait_point()
        p.resume()
        blocked_draining(1)
        out["ns_pids"] = [p.ns_pid, leaving.ns_pid]
        out["before"] = dict(words(1), count=b.get("active_consumer_count"))
        out["heal"] = brief(E.heal(name))
        out["after"] = dict(words(1), count=b.get("active_consumer_count"))
        out["readers"] = E.diagnose(name, 1)["slots"][0]["readers"]
        kept = A.Actor(name, [("consumer", "kept")], wrap=NS).start()
        kept.wait_point()
        out["kept_pid"] = kept.ns_pid
        out["cleanup"] = E.cleanup(name)["reconciled"]
        out["count_with_kept"] = b.get("active_consumer_count")
        print(json.dumps(out))
    """)
    assert out["ns_pids"] == [1, 1] and out["kept_pid"] == 1, out
    assert out["before"]["reader_count"] == 1 and out["before"]["count"] == 1, out
    assert out["after"]["reader_count"] == 1 and out["after"]["count"] == 1, out
    heal = out["heal"]
    assert heal["health"] == "suspect" and heal["suspect"] == [1], heal
    refused = [o for o in heal["outcomes"] if o["slot"] == 1 and o["result"] == "UNSAFE"]
    assert refused and refused[0]["next"] == {"operation": "recover", "slot": 1,
                                              "action": "release_readers", "force": True}
    assert out["readers"]["scope"] == "namespace" and out["readers"]["provably_dead"] == 0
    assert all(c["may_hold"] == "any" for c in out["readers"]["could_be_inside"]), out
    assert out["count_with_kept"] == 2, out["cleanup"]
