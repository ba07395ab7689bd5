"""datablock-admin practice: a real crashed block to practise on (issue 13).

Every scenario is made by real processes really SIGKILLed; these tests check the block
they leave with the kernel's view (/proc) and the engine's own verdicts, that the live
writer is really alive and really finishes once released, that an existing block is
never touched, and that --stop removes practice blocks only.
"""

from __future__ import annotations

import os
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    """No such process, or a zombie (killed, not yet reaped by whoever inherited it)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return True
    return raw[raw.rindex(b")") + 2:][:1] in (b"Z", b"X")


def _wait(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "never happened: %s" % what
        time.sleep(0.01)


@pytest.fixture
def practice(cli, names):
    """``practice(scenario)`` -> (name, document); --stop for every block at teardown."""
    made = []

    def make(scenario: str):
        name = names()
        made.append(name)
        r = cli("practice", scenario, "--name", name, "--json")
        assert r.rc == 0, r
        return name, r.json
    yield make
    for name in made:
        r = cli("practice", "--stop", name)
        assert r.rc == 0, r
        assert not E.practice_stop(name)["killed"]


def _complete(name: str, index: int) -> bool:
    """Is the kernel scan complete for the block (as root on an ordinary host)? Only then
    may readers behind the live writer be released without force (issue 10): a partial
    scan (this kind of VM, a container sharing /dev/shm) must refuse them instead."""
    return _slot(name, index)["readers"]["scope"] in ("host", "namespace")


def _slot(name: str, index: int) -> dict:
    return next(s for s in E.diagnose(name, slot=index)["slots"] if s["index"] == index)


def test_stuck_writer(practice, cli):
    name, doc = practice("stuck_writer")
    (fault,) = doc["faults"]
    (pid,) = fault["pids"]
    assert fault["slot"] == 0 and doc["live_pids"] == []
    assert _gone(pid)
    with E.open_block(name) as block:
        assert block.slot(0, "write_lock") == pid
        assert E.state_name(block.slot(0, "slot_state")) == "WRITING"
        assert [block.slot(i, "slot_state") for i in (1, 2, 3)] == [2, 2, 2]  # COMMITTED
    d = E.diagnose(name)
    assert d["health"] == "stuck" and d["stuck_slots"] == [0]
    assert fault["next"] == [{"operation": "recover", "slot": 0, "action": "release_writer"}]
    assert doc["next_steps"][0] == dict(fault["next"][0], force=False)   # the diagnosis agrees
    r = cli("recover", name, "--slot", "0", "--action", "release_writer")
    assert r.rc == 0, r
    assert E.diagnose(name)["stuck_slots"] == []


def test_stuck_readers_leave_a_live_writer_that_finishes_once_released(practice, cli):
    name, doc = practice("stuck_readers")
    (fault,) = doc["faults"]
    (writer,) = doc["live_pids"]
    assert fault["live_pids"] == [writer] and len(fault["pids"]) == 2
    assert all(_gone(p) for p in fault["pids"])
    assert not _gone(writer)                       # alive after the command ended
    with E.open_block(name) as block:
        assert E.state_name(block.slot(0, "slot_state")) == "DRAINING"
        assert block.slot(0, "write_lock") == writer
        assert block.slot(0, "reader_count") == 2
        commit = block.get("commit_index")
    forced = {"operation": "recover", "slot": 0, "action": "release_readers", "force": True}
    if _complete(name, 0):
        assert forced not in doc["next_steps"]
        assert dict(forced, force=False) in doc["next_steps"]
        r = cli("diagnose", name, "--slot", "0")
        assert r.rc == 1 and "waits for them forever" in r.stdout, r
        r = cli("recover", name, "--slot", "0", "--action", "release_readers")
        assert r.rc == 0, r
    else:   # an unseen process could be inside: suspect, refused, the forced command named
        assert forced in doc["next_steps"]      # what practice says to try is what works here
        assert _slot(name, 0)["suspect"] and E.diagnose(name)["health"] == "suspect"
        r = cli("recover", name, "--slot", "0", "--action", "release_readers")
        assert r.rc == 3 and "--action release_readers --force" in r.stderr, r
        with E.open_block(name) as block:
            assert block.slot(0, "reader_count") == 2                   # untouched
        r = cli("recover", name, "--slot", "0", "--action", "release_readers", "--force")
        assert r.rc == 0, r
    _wait(lambda: _gone(writer), "the waiting writer finishes and exits")
    with E.open_block(name) as block:
        assert block.get("commit_index") == commit + 1          # its write committed
        assert E.state_name(block.slot(0, "slot_state")) == "COMMITTED"
        assert block.slot(0, "write_lock") == 0
    assert E.validate(name)["valid"]


def test_dead_consumers(practice, cli):
    name, doc = practice("dead_consumers")
    (fault,) = doc["faults"]
    assert len(fault["pids"]) == 3 and all(_gone(p) for p in fault["pids"])
    d = E.diagnose(name)
    dead = [c["pid"] for c in d["consumers"] if c["verdict"]["state"] == "dead"]
    assert sorted(dead) == sorted(fault["pids"]) and d["health"] == "degraded"
    assert cli("cleanup", name).rc == 0
    assert E.diagnose(name)["health"] == "healthy"


def test_corruption(practice, cli):
    name, doc = practice("corruption")
    assert doc["next_steps"] == [{"operation": "validate"},
                                 {"operation": "validate", "repair": True}]
    r = cli("validate", name)
    assert r.rc == 1 and "checksum-mismatch" in r.stdout and "slot 0" in r.stdout, r
    assert cli("validate", name, "--repair").rc == 0
    assert E.validate(name)["valid"]


def test_all_in_one_block_heals(practice, cli):
    name, doc = practice("all")
    assert [f["scenario"] for f in doc["faults"]] == [
        "stuck_writer", "stuck_readers", "dead_consumers", "corruption"]
    assert [f["slot"] for f in doc["faults"]] == [0, 1, None, 2]
    (writer,) = doc["live_pids"]
    if _complete(name, 1):
        assert E.diagnose(name)["stuck_slots"] == [0, 1]
        r = cli("heal", name, "--repair")
        assert r.rc == 0, r
    else:   # the readers behind the live writer are suspect: heal does the rest, refuses
        assert E.diagnose(name)["stuck_slots"] == [0] and _slot(name, 1)["suspect"]
        r = cli("heal", name, "--repair")
        assert r.rc == 3, r
        assert "--slot 1 --action release_readers --force" in r.stdout + r.stderr, r
        r = cli("recover", name, "--slot", "1", "--action", "release_readers", "--force")
        assert r.rc == 0, r
    _wait(lambda: _gone(writer), "the waiting writer finishes and exits")
    if not _complete(name, 1):
        # the count was kept while the writer had the block open (no exclusive lease to
        # prove nobody else counted in); with the writer gone, heal lowers it
        r = cli("heal", name, "--repair")
        assert r.rc == 0, r
    assert E.diagnose(name)["health"] == "healthy" and E.validate(name)["valid"]


def test_text_output_names_what_is_left_and_how_to_stop(practice, cli, names):
    name = names()
    r = cli("practice", "stuck_readers", "--name", name)
    try:
        assert r.rc == 0, r
        assert "still running: pid " in r.stdout
        assert "datablock-admin recover %s --slot 0 --action release_readers" % name in r.stdout
        assert "datablock-admin practice --stop %s" % name in r.stdout
    finally:
        stop = cli("practice", "--stop", name)
    assert stop.rc == 0 and "killed " in stop.stdout and "removed" in stop.stdout, stop


def test_an_existing_block_is_refused_and_untouched(cli, names):
    name = names()
    block = R.create(name, capacity=2, stride=4096)
    block.close()
    path = "/dev/shm/" + name
    before = open(path, "rb").read()
    r = cli("practice", "corruption", "--name", name)
    assert r.rc == 2 and "already exists" in r.stderr and len(r.err_lines) == 1, r
    assert open(path, "rb").read() == before


def test_stop_removes_only_practice_blocks(cli, names):
    name = names()
    R.create(name, capacity=2, stride=4096).close()
    r = cli("practice", "--stop", name)
    assert r.rc == 2 and "not a practice block" in r.stderr, r
    assert os.path.exists("/dev/shm/" + name)
    again = cli("practice", "--stop", names(), "--json")
    assert again.rc == 0 and again.json["changed"] is False, again


def test_stop_kills_the_live_writer(cli, names):
    name = names()
    r = cli("practice", "stuck_readers", "--name", name, "--json")
    assert r.rc == 0, r
    (writer,) = r.json["live_pids"]
    stop = cli("practice", "--stop", name, "--json")
    assert stop.rc == 0 and stop.json["killed"] == [writer] and stop.json["removed"], stop
    _wait(lambda: _gone(writer), "the killed writer is gone")
    assert not os.path.exists("/dev/shm/" + name)


@pytest.mark.parametrize("argv", [["practice"], ["practice", "nope"],
                                  ["practice", "all", "--stop", "x"],
                                  ["practice", "all", "--name", "../x"]])
def test_bad_arguments(cli, argv):
    r = cli(*argv)
    assert r.rc == 2 and len(r.err_lines) == 1, r
