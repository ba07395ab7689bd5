"""The watch (issue 16): real blocks, real actors. A writer SIGKILLed holding a slot
while the watch runs is healed on the first pass that has seen it stuck, unchanged, for
the policy's delay, and never before; a live holder (paused with SIGSTOP, or slow in
state S) is never touched; a slot whose holder words change starts its clock again; every
heal goes through the audit log and the before-images, every pass through the metrics
textfile; a bad policy is one error and changes nothing; two watches never run at once."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _audit as A, _engine as E, _snapshot as S, _watch as W)

from .helpers import file_bytes, image, poke, reaped_pid, wait_for

BLOCK_GEOMETRY = (4, 4096)
WRITE = [("producer",), ("publish", 2), ("acquire",), ("write",), ("commit",)]


@pytest.fixture
def where(tmp_path, monkeypatch):
    """Every file of the watch and of its heals in the test's directory."""
    monkeypatch.setenv(A.ENV_LOG, str(tmp_path / "log" / "audit.jsonl"))
    monkeypatch.setenv(S.ENV_DIR, str(tmp_path / "snaps"))
    monkeypatch.setenv(W.ENV_LOCK, str(tmp_path / "run" / "watch.lock"))
    monkeypatch.setenv("PYLABHUB_RECOVERY_SYSLOG", "off")
    (tmp_path / "prom").mkdir()
    return tmp_path


def policy(where, name, **kw):
    doc = {"blocks": [name], "interval": 0.2, "delay": 1.0,
           "textfile": str(where / "prom"), "state_file": str(where / "state" / "w.json")}
    doc.update(kw)
    path = where / "policy.json"
    path.write_text(json.dumps(doc))
    return str(path)


def audit_lines(where):
    path = where / "log" / "audit.jsonl"
    if not path.exists():
        return []
    with open(str(path)) as f:
        return [json.loads(x) for x in f]


def passes_until(path, done, limit=200):
    """Run ``--once`` passes (the state file makes them consecutive) until ``done(doc)``."""
    docs = []
    for dummy in range(limit):
        docs.append(E.watch(path, once=True))
        if done(docs[-1]):
            return docs
        time.sleep(0.05)
    raise AssertionError("not done after %d passes: %s" % (limit, docs[-1]))


def healed_rows(doc):
    return [b for b in doc["blocks"] if b["healed"] is not None]


def test_writer_killed_while_the_watch_runs_is_healed_after_the_delay(where, block_name,
                                                                      actors):
    delay = 1.0
    path = policy(where, block_name, delay=delay)
    docs, stop = [], threading.Event()
    runner = threading.Thread(target=lambda: docs.append(
        E.watch(path, on_pass=docs.append, stop=stop)))
    writer = actors(block_name, WRITE, pause="locked", mode="wait")
    slot_pid = writer.wait_point()["pid"]
    runner.start()
    try:
        wait_for(lambda: len(docs) >= 3, 60, "three passes with a live writer")
        live = list(docs)
        writer.kill()                                   # SIGKILL holding the write lock
        killed_at = len(docs)
        wait_for(lambda: any(healed_rows(d) for d in docs), 120, "the heal")
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()
    final = docs[-1]
    assert final["stopped"] is True and final["operation"] == "watch"
    for doc in live:                                    # a live holder: never stuck
        assert not healed_rows(doc) and doc["stuck"] == 0 and doc["waiting"] == 0
    passes = [d for d in docs[killed_at:] if "policy" not in d]
    heal_at = next(i for i, d in enumerate(passes) if healed_rows(d))
    for doc in passes[:heal_at]:                        # seen, but not for the delay yet
        for row in doc["blocks"]:
            assert all(item["seen_for_s"] < delay for item in row["waiting"])
            assert row["healed"] is None
    row = healed_rows(passes[heal_at])[0]
    assert row["stuck"] and all(item["seen_for_s"] >= delay for item in row["stuck"])
    assert row["stuck"][0]["write_lock"] == slot_pid
    # healed within one interval of the delay: the pass before the heal had not seen it
    # stuck for the delay, so the heal came on the first pass that had
    assert heal_at == 0 or any(passes[heal_at - 1]["blocks"][0]["waiting"])
    assert row["healed"]["changed"] and row["healed"]["ok"] and row["healed"]["snapshots"]
    assert E.diagnose(block_name)["healthy"]
    heals = [r for r in audit_lines(where) if r["operation"] == "heal"]
    assert len(heals) == 1 and heals[0]["changed"] and heals[0]["forced"] is False
    assert heals[0]["watch"]["policy"] == path
    assert heals[0]["snapshot"] == row["healed"]["snapshots"][0]
    assert os.path.exists(os.path.join(str(where / "snaps"), heals[0]["snapshot"] + ".jsonl"))
    prom = (where / "prom" / W.TEXTFILE).read_text()
    state = json.loads((where / "state" / "w.json").read_text())
    assert "pylabhub_recovery_watch_passes_total %d" % state["passes"] in prom
    assert state["passes"] == len(passes) + killed_at and state["heals"] == 1
    assert "pylabhub_recovery_watch_heals_total 1" in prom
    # after a heal the engine's textfile is refreshed too: the block is healthy there
    main = (where / "prom" / "pylabhub_recovery.prom").read_text()
    assert 'pylabhub_recovery_block_health{block="%s",health="healthy"} 1' % block_name in main


@pytest.mark.parametrize("mode", ["stop", "wait"], ids=["paused_SIGSTOP", "slow_writer"])
def test_a_live_holder_is_never_touched(where, block_name, actors, mode):
    """A writer paused with SIGSTOP, or slow (blocked in state S), holding the write lock
    across passes spanning more than the delay: the watch never heals, the block's bytes
    never change; the slow writer then commits normally."""
    path = policy(where, block_name, delay=0.5)
    writer = actors(block_name, WRITE, pause="locked", mode=mode)
    pid = writer.wait_point()["pid"]
    before = file_bytes(block_name)
    first = time.monotonic()
    docs = passes_until(path, lambda d: time.monotonic() - first > 2.0)
    assert all(not healed_rows(d) for d in docs)
    assert all(d["stuck"] == 0 and d["waiting"] == 0 for d in docs)
    assert file_bytes(block_name) == before
    assert image(block_name).slot(0)["lock"] == pid
    assert [r for r in audit_lines(where) if r["changed"]] == []
    if mode == "stop":
        writer.cont()
    writer.resume()
    report = writer.wait_point()
    assert report["event"] == "done", report
    assert image(block_name).slot(0)["lock"] == 0


def test_a_slot_whose_holder_changes_starts_its_clock_again(where, lab):
    """Stuck with one dead holder, then (before the delay) with another: not the same
    stuck slot, so not healed until the new one has been seen for the delay."""
    crash = lab.crashed("locked")
    delay = 1.0
    path = policy(where, crash.name, delay=delay)
    first = E.watch(path, once=True)
    assert first["waiting"] == 1 and not healed_rows(first)
    other = reaped_pid()
    poke(crash.name, 4096 + 64 * crash.slot, other.to_bytes(8, "little"))
    start = time.monotonic()
    wait_for(lambda: time.monotonic() - start > delay, 10, "the delay")
    second = E.watch(path, once=True)          # the delay has passed since the first pass
    assert not healed_rows(second), second
    waiting = second["blocks"][0]["waiting"]
    assert len(waiting) == 1 and waiting[0]["write_lock"] == other
    assert waiting[0]["seen_for_s"] < delay
    docs = passes_until(path, lambda d: bool(healed_rows(d)))
    row = healed_rows(docs[-1])[0]
    assert row["stuck"][0]["seen_for_s"] >= delay and row["healed"]["changed"]
    assert E.diagnose(crash.name)["healthy"]


def test_a_dead_consumer_is_cleaned_and_delay_zero_heals_in_one_pass(where, lab):
    crash = lab.crashed("reader")
    path = policy(where, crash.name, delay=0)
    doc = E.watch(path, once=True)
    row = healed_rows(doc)[0]
    kinds = {("slot" if "slot" in i else "consumer") for i in row["stuck"]}
    assert "consumer" in kinds and row["healed"]["changed"]
    assert E.diagnose(crash.name)["healthy"]
    again = E.watch(path, once=True)            # nothing left: nothing done
    assert not healed_rows(again) and again["stuck"] == 0


def test_blocks_outside_the_policy_are_not_touched(where, lab):
    crash = lab.crashed("locked")
    path = policy(where, "no_such_block_*", delay=0)
    before = file_bytes(crash.name)
    doc = E.watch(path, once=True)
    assert doc["blocks"] == [] and file_bytes(crash.name) == before


@pytest.mark.parametrize("doc, word", [
    ("[]", "JSON object"),
    ('{"interval": 0}', "interval"),
    ('{"delay": -1}', "delay"),
    ('{"blocks": []}', "blocks"),
    ('{"blocks": "x*"}', "blocks"),
    ('{"repair": "yes"}', "repair"),
    ('{"interval": true}', "interval"),
    ('{"force": true}', "unknown key"),
    ('{"textfile": "relative/dir"}', "textfile"),
    ('{"format": "something-else"}', "format"),
    ("{not json", "not JSON"),
])
def test_a_bad_policy_is_one_error_and_nothing_happens(where, lab, doc, word):
    crash = lab.crashed("locked")
    before = file_bytes(crash.name)
    path = where / "bad.json"
    path.write_text(doc.replace("x*", crash.name))
    with pytest.raises(E.PolicyError) as err:
        E.watch(str(path), once=True)
    assert word in err.value.message and "\n" not in err.value.message
    assert err.value.exit_code == E.EXIT_USAGE
    assert file_bytes(crash.name) == before
    assert not (where / "run").exists() and audit_lines(where) == []


def test_missing_policy_is_a_policy_error(where):
    with pytest.raises(E.PolicyError) as err:
        E.watch(str(where / "absent.json"), once=True)
    assert "absent.json" in err.value.message


def test_two_watches_never_run_at_once(where, lab):
    crash = lab.crashed("locked")
    path = policy(where, crash.name, delay=0)
    before = file_bytes(crash.name)
    held = W.take_lock()
    try:
        with pytest.raises(E.WatchRunning) as err:
            E.watch(path, once=True)
        assert str(os.getpid()) in err.value.message
        assert err.value.exit_code == E.EXIT_REFUSED
        assert file_bytes(crash.name) == before
    finally:
        os.close(held)
    assert healed_rows(E.watch(path, once=True))          # the lock is free again


def test_a_stale_or_foreign_state_is_forgotten(where, lab):
    crash = lab.crashed("locked")
    path = policy(where, crash.name, delay=0.5)
    state = where / "state" / "w.json"
    E.watch(path, once=True)
    doc = json.loads(state.read_text())
    doc["boot_id"] = "another-boot"                     # a reboot since: nothing was seen
    for items in doc["seen"].values():
        for key in items:
            items[key] = items[key] - 3600
    state.write_text(json.dumps(doc))
    again = E.watch(path, once=True)
    assert not healed_rows(again) and again["blocks"][0]["waiting"][0]["seen_for_s"] == 0
    state.write_text("garbage")
    third = E.watch(path, once=True)
    assert "started afresh" in third["note"] and not healed_rows(third)
