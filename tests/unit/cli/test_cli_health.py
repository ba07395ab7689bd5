"""Status you can trust (issue 10, item 6), end to end with real processes.

* A live producer blocked for ever draining a slot whose reader was SIGKILLed inside it,
  the reader not attributable (a C++-style block: no evidence): heal used to clean the
  dead consumer's entry, leave the reader, say "healthy" and exit 0. Now it is refused
  with the exact forced command (exit 3), diagnose/validate say "suspect", and running
  the printed command lets the producer finish its commit.
* ``diagnose NAME --slot 0`` while slot 3 is stuck used to print "healthy", exit 0.
* ``list`` used to show STATUS ok for a block with a stuck slot.
"""

from __future__ import annotations

import shlex

import pytest

from engine.helpers import (DRAINING, ScratchBlocks, image, publisher_program, reader_program,
                            wait_for, writer_program)


@pytest.fixture
def lab(fixtures_dir):
    owner = ScratchBlocks(lambda: fixtures_dir)
    yield owner
    owner.close()


def blocked_producer(lab):
    """A C++-style block (no recovery evidence), 4 slots: a consumer SIGKILLed inside slot
    1, then a live producer of ours commits until the ring wraps onto slot 1 and waits for
    ever in DRAINING (writer_waiting 1, reader_count 1)."""
    name = lab.create(capacity=4, evidence=False, commits=2)      # ids 0, 1
    reader = lab.child(reader_program, name)                       # inside slot 1 (id 1)
    assert reader.recv()["index"] == 1
    reader.kill()
    writer = lab.child(publisher_program, name, 3, 1)              # ids 2, 3, 4; then 5
    writer.recv()
    wait_for(lambda: (image(name).slot(1)["state"], image(name).slot(1)["waiting"],
                      image(name).slot(1)["readers"], image(name).slot(1)["lock"])
             == (DRAINING, 1, 1, writer.pid), 10, "the producer blocked draining slot 1")
    return name, writer


def test_blocked_producer_is_never_called_healthy(cli, lab):
    name, writer = blocked_producer(lab)
    forced = ["recover", name, "--slot", "1", "--action", "release_readers", "--force"]

    d = cli("diagnose", name, "--json")
    assert d.rc == 1 and d.json["health"] == "suspect" and d.json["suspect_slots"] == [1]
    assert d.json["stuck_slots"] == []
    slots = {s["index"]: s for s in d.json["slots"]}          # the slots that are not plain
    assert slots[1]["next"] == {"operation": "recover", "slot": 1,
                                "action": "release_readers", "force": True}
    text = cli("diagnose", name)
    assert text.rc == 1 and "NOT HEALTHY (suspect)" in text.stdout
    assert "datablock-admin " + " ".join(forced) in text.stdout
    v = cli("validate", name, "--json")
    assert v.rc == 1 and v.json["valid"] and v.json["health"] == "suspect"

    h = cli("heal", name, "--json")
    assert h.rc == 3, h                                   # refused, as recover's refusals
    assert h.json["healthy"] is False and h.json["ok"] is False
    assert h.json["health"] == "suspect" and h.json["after"]["suspect_slots"] == [1]
    (refusal,) = h.json["refused"]
    assert refusal["slot"] == 1 and refusal["result"] == "UNSAFE"
    assert refusal["next"] == {"operation": "recover", "slot": 1,
                               "action": "release_readers", "force": True}
    assert image(name).slot(1)["readers"] == 1 and image(name).slot(1)["state"] == DRAINING
    h = cli("heal", name)
    command = "datablock-admin " + " ".join(forced)
    assert h.rc == 3 and (h.stdout + h.stderr).count(command) == 1, h     # printed once
    (line,) = [ln for ln in (h.stdout + h.stderr).splitlines() if "refused" in ln]
    assert line in h.err_lines and line.startswith("datablock-admin: refused: slot 1"), h
    assert line.endswith(command), h

    # the printed command, run as printed, frees the producer: it finishes its commit
    argv = shlex.split(line.split("If you are sure: ", 1)[1])[1:]
    assert argv == forced
    r = cli(*argv, "--yes")
    assert r.rc == 0, r
    assert writer.recv(15)["ids"] == [5]
    writer.kill()                   # the producer lingers after its commit: end it
    # the dead consumer's count is recounted once nobody else has the block open (in a
    # partial scope cleanup keeps a count above the registered consumers until then)
    healed = cli("heal", name, "--json")
    assert healed.rc == 0, (healed.json["after"]["findings"], healed.json["cleanup"]["reconciled"])
    after = cli("diagnose", name, "--json")
    assert after.rc == 0 and after.json["health"] == "healthy", after


def test_diagnose_one_slot_does_not_hide_a_jam(cli, lab):
    """The procedure's scenario begins with ``diagnose my_datablock --slot 0``: slot 3 is
    stuck (a writer SIGKILLed holding it), so the answer is not healthy, exit 1, and slot 3
    is named with the command that frees it."""
    name = lab.create(capacity=4, commits=3)                 # the next slot id is 3
    w = lab.child(writer_program, name, 0, "mid_write")
    assert w.recv()["index"] == 3
    w.kill()
    r = cli("diagnose", name, "--slot", "0")
    assert r.rc == 1, r
    assert "NOT HEALTHY (stuck)" in r.stdout
    assert "stuck slot(s): 3" in r.stdout and "not shown here: slot(s) 3" in r.stdout
    assert "datablock-admin recover %s --slot 3 --action release_writer" % name in r.stdout
    j = cli("diagnose", name, "--slot", "0", "--json")
    assert j.rc == 1 and j.json["healthy"] is False and j.json["health"] == "stuck"
    assert j.json["stuck_slots"] == [3] and [x["index"] for x in j.json["slots"]] == [0]
    assert j.json["slots"][0]["is_stuck"] is False
    # the default listing (the slots that are not plain) shows slot 3: nothing is hidden
    whole = cli("diagnose", name)
    assert whole.rc == 1 and "stuck slot(s): 3" in whole.stdout
    assert "not shown here" not in whole.stdout
    assert "3 slots not listed: plain" in whole.stdout


def test_list_status_shows_stuck_and_suspect_blocks(cli, lab):
    stuck = lab.crashed("mid_write", capacity=4)
    suspect, writer = blocked_producer(lab)
    fine = lab.create(capacity=2, commits=1)
    pattern = stuck.name.rsplit("_", 1)[0] + "_*"
    j = cli("list", pattern, "--json")
    by = {e["address"]: e for e in j.json["blocks"]}
    assert by[stuck.name]["health"] == "stuck" and by[stuck.name]["stuck_slots"] == [stuck.slot]
    assert by[suspect]["health"] == "suspect" and by[suspect]["suspect_slots"] == [1]
    assert by[fine]["health"] == "healthy" and by[fine]["status"] == "ok"
    r = cli("list", pattern)
    assert r.rc == 0
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert rows[stuck.name].endswith("stuck (slot %d)" % stuck.slot)
    assert rows[suspect].endswith("suspect (slot 1)")
    assert rows[fine].endswith("healthy")
