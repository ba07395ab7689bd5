"""The crash-actor library (_actors) and the runtime's protocol points it stops at: each
point is where its definition says (the words read at the point prove it), the C++-style
mode keeps the C++ orders and writes no evidence, and a consumer's "reading" evidence is
right with several reads held (D3). Real processes throughout."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _actors as A, _kernel as K, _observe as O, _plan as P, _runtime as R)

import plh_spec as spec

FREE, WRITING, COMMITTED, DRAINING = 0, 1, 2, 3
BLOCK_GEOMETRY = (2, 256)        # of the block_name fixture (tests/conftest.py)
SEVERAL = 0xFFFFFFFFFFFFFFFF


@pytest.fixture
def name(block_name):
    return block_name


def img(name):
    return spec.Image.read("/dev/shm/" + name)


# ------------------------------------------------------------------ producer points

WRITE_CYCLE = [("producer",), ("publish", 2), ("acquire",), ("write",), ("commit",)]


def _producer_at(actors, name, point, nth):
    a = actors(name, WRITE_CYCLE, pause=point, nth=nth)
    report = a.wait_point()
    assert report["event"] == "point" and report["point"] == point, report
    return a, img(name)


def test_producer_points_are_where_they_say(name, actors):
    """The third write reuses slot 0 (capacity 2): it drains, writes, commits."""
    before = img(name)
    assert before.write_index == 0
    checks = {
        "claimed": lambda a, i: i.write_index == 3 and i.slot(0)["lock"] == 0,
        "locked": lambda a, i: (i.slot(0)["lock"] == a.pid and i.slot(0)["state"] == COMMITTED
                                and i.slot(0)["waiting"] == 0),
        "evidence": lambda a, i: (i.slot(0)["ev_pid"] == a.pid and i.slot(0)["state"] ==
                                  COMMITTED and i.slot(0)["ev_start"] == a.start_ticks),
        "draining": lambda a, i: (i.slot(0)["state"], i.slot(0)["waiting"]) == (DRAINING, 1),
        "writing": lambda a, i: (i.slot(0)["state"], i.slot(0)["waiting"]) == (WRITING, 0),
        "half-written": lambda a, i: (i.slot_data(0)[:128].startswith(b"plh-actor slot 2 ")
                                      and b"slot 2" not in i.slot_data(0)[128:]),
        "checksummed": lambda a, i: (i.checksum_valid(0) and i.slot(0)["generation"] == 1
                                     and i.slot(0)["state"] == WRITING),
        "generation": lambda a, i: (i.checksum_valid(0) and i.slot(0)["generation"] == 2
                                    and i.slot(0)["state"] == WRITING and i.commit_index == 1),
        "committed": lambda a, i: (i.slot(0)["state"] == COMMITTED and i.slot(0)["generation"]
                                   == 2 and i.slot(0)["lock"] == a.pid and i.commit_index == 2),
        "unlocked": lambda a, i: i.slot(0)["lock"] == 0 and i.slot(0)["state"] == COMMITTED,
    }
    assert set(checks) == set(R.PRODUCER_POINTS)
    for point in R.PRODUCER_POINTS:
        R.create(name + point, capacity=2, stride=256).close()
        try:
            a, i = _producer_at(actors, name + point, point, 1 if point == "draining" else 3)
            assert checks[point](a, i), (point, i.slot(0), i.write_index)
            a.kill()
        finally:
            os.unlink("/dev/shm/" + name + point)


def test_cpp_producer_writes_no_evidence(name, actors):
    a = actors(name, [("producer",), ("acquire",)], pause="writing", style="cpp")
    a.wait_point()
    i = img(name)
    assert i.slot(0)["lock"] == a.pid and i.slot(0)["state"] == WRITING
    assert i.slot(0)["tail"] == bytes(40) and i.ev_producer_pid == 0
    assert i.producer_pid == a.pid                     # the heartbeat is the protocol's


# ------------------------------------------------------------------ consumer points

def test_consumer_points_ours(name, actors):
    prod = actors(name, [("producer",), ("publish", 2)])
    prod.wait_point()
    steps = [("consumer", "c"), ("read", 1), ("release",), ("unregister",)]
    left = {}      # entry 0's heartbeat before each actor registers (its predecessor's)
    checks = {
        "pid-cased": lambda a, i: (i.consumer(0)["pid"] == a.pid and i.active_consumers == 0
                                   and i.consumer(0)["name"] == ""
                                   and i.consumer_evidence(0)["pid"] == 0),
        "counted": lambda a, i: (i.active_consumers == 1 and i.consumer(0)["name"] == "c"
                                 and i.consumer_evidence(0)["pid"] == a.pid
                                 and i.consumer(0)["heartbeat_ns"] == left["hb"]),
        "heartbeat": lambda a, i: i.consumer(0)["heartbeat_ns"] > left["hb"],
        "reading-recorded": lambda a, i: (i.consumer_evidence(0)["reading"] == 2
                                          and i.slot(1)["readers"] == 0),
        "inside": lambda a, i: i.slot(1)["readers"] == 1,
        "released": lambda a, i: (i.slot(1)["readers"] == 0
                                  and i.consumer_evidence(0)["reading"] == 0),
        "unregister-pid-cleared": lambda a, i: (i.consumer(0)["pid"] == 0
                                                and i.active_consumers == 1),
        "unregistered": lambda a, i: (i.active_consumers == 0 and i.consumer(0)["name"] == ""
                                      and i.consumer_evidence(0)["pid"] == 0
                                      and i.consumer(0)["heartbeat_ns"] > 0),
    }
    assert set(checks) == set(R.CONSUMER_POINTS)
    for point in R.CONSUMER_POINTS:
        left["hb"] = img(name).consumer(0)["heartbeat_ns"]
        a = actors(name, steps, pause=point)
        report = a.wait_point()
        assert report["point"] == point and report["consumer"] == 0, report
        assert checks[point](a, img(name)), (point, img(name).consumer(0),
                                             img(name).consumer_evidence(0))
        a.resume()
        assert a.wait_point()["event"] == "done"
        a.resume()
        assert a.wait_exit() == 0
        # leave entry 0 as the next one expects: free, count 0
        assert img(name).consumer(0)["pid"] == 0 and img(name).active_consumers == 0


def test_consumer_cpp_orders_leave_the_heartbeat_and_no_evidence(name, actors):
    prod = actors(name, [("producer",), ("publish", 1)])
    prod.wait_point()
    steps = [("consumer", "cpp"), ("unregister",)]
    a = actors(name, steps, pause="counted", style="cpp")
    a.wait_point()
    i = img(name)
    assert i.consumer(0)["name"] == "cpp" and i.active_consumers == 1      # uid/name first
    assert i.consumer(0)["heartbeat_ns"] == 0 and i.consumer_evidence(0)["pid"] == 0
    a.resume()
    a.wait_point()
    i = img(name)        # registered and unregistered: its heartbeat is left behind
    assert i.consumer(0)["heartbeat_ns"] > 0 and i.consumer(0)["pid"] == 0
    assert i.active_consumers == 0 and i.consumer(0)["name"] == ""
    b = actors(name, [("consumer", "x"), ("unregister", "cpp")], pause="unregistered")
    b.wait_point()
    i = img(name)
    assert i.consumer(0)["pid"] == 0 and i.consumer(0)["heartbeat_ns"] > 0   # left as it was
    assert i.consumer_evidence(0)["pid"] == b.pid        # the C++ unregister left ours behind


# ------------------------------------------------------------------ D3: several reads

def test_reading_evidence_with_several_reads_held(name, actors):
    prod = actors(name, [("producer",), ("publish", 2)])
    prod.wait_point()
    steps = [("consumer", "two"), ("read", 0), ("read", 1), ("release",), ("release",)]
    a = actors(name, steps, pause="reading-recorded", nth=2)
    a.wait_point()
    i = img(name)
    # "several" is written BEFORE the second count goes up
    assert i.consumer_evidence(0)["reading"] == SEVERAL
    assert (i.slot(0)["readers"], i.slot(1)["readers"]) == (1, 0)
    with R.attach(name, writable=False) as b, K.engine_mapping(b):
        scene = O.Scene(P.Plan(b, True))
        (view,) = scene.consumers
        assert view.trusted is not None and not view.has_evidence and view.reading is None
        assert scene.slot(0).live_possible == 1 and scene.slot(0).releasable_readers == 0
    a.close()
    R.create(name + "b", capacity=2, stride=256).close()
    try:
        prod2 = actors(name + "b", [("producer",), ("publish", 2)])
        prod2.wait_point()
        c = actors(name + "b", steps, pause="released")
        c.wait_point()
        i = img(name + "b")
        # slot 0 was released; exactly slot 1 is held again (replaced AFTER the count)
        assert (i.slot(0)["readers"], i.slot(1)["readers"]) == (0, 1)
        assert i.consumer_evidence(0)["reading"] == 1 + 1
        c.resume()
        assert c.wait_point()["event"] == "done"
        i = img(name + "b")
        assert i.consumer_evidence(0)["reading"] == 0 and i.slot(1)["readers"] == 0
    finally:
        os.unlink("/dev/shm/" + name + "b")


# ------------------------------------------------------------------ the actor API

def test_stop_mode_cont_kill_and_status(name, actors):
    a = actors(name, [("producer",), ("acquire",), ("commit",)], pause="writing", mode="stop")
    report = a.wait_point()
    assert report["slot"] == 0
    assert A._status(a.pid)["State"].startswith("T")          # really stopped
    a.cont()
    assert a.wait_point()["event"] == "done"
    assert img(name).slot(0)["state"] == COMMITTED and img(name).slot(0)["lock"] == 0
    assert a.kill() == -9
    b = actors(name, [("producer",), ("exit", 7)])
    assert b.wait_exit() == 7


def test_failures_are_reported(name, actors):
    bad = actors(name, [("producer",), ("fly",)])
    with pytest.raises(A.ActorError, match="unknown actor step"):
        bad.wait_point()
    never = actors(name, [("consumer", "c")], pause="locked")      # not a consumer point
    assert never.wait_point()["event"] == "done"
    with pytest.raises(ValueError):
        A.Actor(name, [], mode="later")
    with pytest.raises(ValueError):
        A.Actor(name, [], pid=5)                                   # needs a namespace


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1)")
def test_namespaces_and_chosen_pids(name, actors):
    a = actors(name, [("producer",)], wrap=["unshare", "--pid", "--fork", "--kill-child"])
    a.wait_point()
    assert a.ns_pid == 1 and a.pid > 1
    assert A._status(a.pid)["NSpid"].split() == [str(a.pid), "1"]
    with A.ActorNamespace() as ns:
        first = actors(name, [("consumer", "one"), ("exit", 0)], namespace=ns, pid=777)
        assert first.ns_pid == 777 and first.wait_exit() == 0
        again = actors(name, [("consumer", "two")], namespace=ns, pid=777)
        again.wait_point()
        assert again.ns_pid == 777 and again.pid != first.pid
        assert A._status(again.pid)["NSpid"].split()[-1] == "777"
    # closing the namespace ended everything in it
    assert again.wait_exit() is None and not os.path.exists("/proc/%d/cmdline" % again.pid) \
        or A._status(again.pid).get("State", "Z")[:1] in ("Z", "X")
