"""Races (issue 7): recovery looping against a live producer and live consumers.

For ``PLH_RACE_SECONDS`` (default 5; at least ``MIN_ROUNDS`` rounds) a real producer
process publishes and two real
consumer processes read (verifying every checksum) while this process runs, round after
round: every recover action unforced on all slots, cleanup, heal (with and without
repair), validate. Dead holders are injected all along (consumers SIGKILLed inside a slot
or just registered) so recovery has real work next to live processes. Forced actions run
only against dead holders: the producer is paused between two commits (holding nothing),
a writer is SIGKILLed holding the next slot and a reader is SIGKILLed inside an older
slot no live consumer reads, and then release_writer/force_reset/release_readers run with
force on exactly those slots.

The two sabotage tests at the end prove the checks bite: an engine that releases live
readers or steals live locks is caught within 1.5 s.

Checked continuously: the producer verifies before each commit that it still holds its
lock, its slot is still WRITING and its data is what it wrote (no live lock stolen); the
consumers verify each checksum, that their slot's reader_count includes them and that
the slot was not rewritten under them (generation unchanged); every process samples the
counts (no reader_count or active_consumer_count underflow); validate finds no error.
At the end, after everyone stopped cleanly and one heal: valid, healthy, nothing held.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import select
import signal
import struct
import time
import traceback

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _layout as L, _observe as O, _runtime as R)

SECONDS = float(os.environ.get("PLH_RACE_SECONDS", "5"))
# ... and at least this many rounds however slow the host (two of them forced rounds):
# recovery calls that judge a dead holder walk /proc once each (kernel truth first).
MIN_ROUNDS = 10
CAPACITY, STRIDE = 4, 1024
ACTIONS = ("release_writer", "release_readers", "force_reset")
_S = L.SlotState
SLOT = L.SLOT
STOP, PAUSE, PAUSED = 0, 8, 16          # control words (u64) in an anonymous shared page
UNDERFLOW = 1 << 31


def _ctl_get(ctl, off):
    return struct.unpack_from("<Q", ctl, off)[0]


def _ctl_set(ctl, off, value):
    struct.pack_into("<Q", ctl, off, value)


def _counts_sane(block, where):
    problems = []
    for i in range(CAPACITY):
        rc = block.slot(i, "reader_count")
        if rc >= UNDERFLOW:
            problems.append("%s: slot %d reader_count underflow (%d)" % (where, i, rc))
    count = block.get("active_consumer_count")
    if count >= UNDERFLOW or count > L.MAX_CONSUMERS:
        problems.append("%s: active_consumer_count %d" % (where, count))
    return problems


def _child(body):
    """Fork ``body(block, ctl, violations, stats)``; it reports JSON over a pipe at exit."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        violations, stats = [], {}
        try:
            os.close(r)
            body(violations, stats)
        except BaseException:
            violations.append("crashed: %s" % traceback.format_exc()[-800:])
            code = 1
        finally:
            try:
                os.write(w, json.dumps({"violations": violations[:20],
                                        "n_violations": len(violations),
                                        "stats": stats}).encode())
            finally:
                os._exit(code)
    os.close(w)
    return pid, r


def _producer(name, ctl):
    def body(violations, stats):
        block = R.attach(name)
        p = R.Producer(block)
        pid, seq = os.getpid(), 0
        while not _ctl_get(ctl, STOP):
            if _ctl_get(ctl, PAUSE):
                _ctl_set(ctl, PAUSED, 1)
                while _ctl_get(ctl, PAUSE) and not _ctl_get(ctl, STOP):
                    time.sleep(0.0005)
                _ctl_set(ctl, PAUSED, 0)
                continue
            ws = p.acquire(timeout=None)
            base = block.geo.slot_entry(ws.index)
            gen = block.get(SLOT["write_generation"], base)
            seq += 1
            token = b"%d:%d:" % (pid, seq)
            data = (token * (STRIDE // len(token) + 1))[:STRIDE]
            p.write(ws, data)
            lock, state = block.get(SLOT["write_lock"], base), block.get(SLOT["slot_state"], base)
            if lock != pid or state != _S.WRITING:
                violations.append("slot %d: before commit lock=%d state=%d (I am %d): live lock "
                                  "stolen" % (ws.index, lock, state, pid))
            if block.read(block.geo.slot_data(ws.index), STRIDE) != data:
                violations.append("slot %d: data changed under the live writer" % ws.index)
            if block.get(SLOT["write_generation"], base) != gen:
                violations.append("slot %d: generation moved under the live writer" % ws.index)
            p.commit(ws)
            violations.extend(_counts_sane(block, "producer"))
            stats["commits"] = seq
    return _child(body)


def _consumer(name, ctl, k):
    def body(violations, stats):
        block = R.attach(name)
        c = R.Consumer(block, name="race-%d" % k)
        reads = 0
        try:
            while not _ctl_get(ctl, STOP):
                rs = c.acquire()
                if rs is None:
                    time.sleep(0.0002)
                    continue
                base = block.geo.slot_entry(rs.index)
                rc = block.get(SLOT["reader_count"], base)
                if rc == 0 or rc >= UNDERFLOW:
                    violations.append("slot %d: reader_count %d while a live reader is inside"
                                      % (rs.index, rc))
                try:
                    c.read(rs, verify=True)
                except R.RecoveryError as exc:
                    violations.append("checksum failure: %s" % exc)
                if block.get(SLOT["write_generation"], base) != rs.generation:
                    violations.append("slot %d rewritten under a live reader" % rs.index)
                c.release(rs)
                reads += 1
                violations.extend(_counts_sane(block, "consumer %d" % k))
                stats["reads"] = reads
        finally:
            c.unregister()
    return _child(body)


def _spawn_dead(name, what, index=None):
    """A holder that is SIGKILLed at its protocol point; returns when it is dead."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            block = R.attach(name)
            if what == "writer":
                p = R.Producer.__new__(R.Producer)       # a second writer, no heartbeat
                p.block, p.pid = block, os.getpid()
                p.start, p.evidence = R._procinfo.own_start_ticks() or 0, block.has_evidence
                ws = p.acquire(timeout=2.0)
                p.write(ws, b"\xee" * (STRIDE // 2))
                os.write(w, b"%d" % ws.index)
            else:
                c = R.Consumer(block, name="doomed")
                ok = what == "registered" or c.acquire(index) is not None
                os.write(w, b"1" if ok else b"-")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready = select.select([r], [], [], 5.0)[0]
        got = os.read(r, 16) if ready else b""
    finally:
        os.close(r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return got


def _collect(children, deadline_s, name):
    """Wait for the children to finish (healing meanwhile: a producer may wait on a dead
    reader); return their reports."""
    reports = []
    end = time.monotonic() + deadline_s
    pending = dict(children)
    while pending and time.monotonic() < end:
        for pid in list(pending):
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                fd = pending.pop(pid)
                raw = b""
                while True:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    raw += chunk
                os.close(fd)
                reports.append(json.loads(raw.decode() or "{}"))
        if pending:
            E.heal(name)
            time.sleep(0.01)
    for pid, fd in pending.items():
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return reports, list(pending)


def _forced_round(name, ctl, rng, stats, problems):
    """Pause the producer (it holds nothing), make dead holders, release them with force."""
    _ctl_set(ctl, PAUSE, 1)
    try:
        end = time.monotonic() + 3.0
        while not _ctl_get(ctl, PAUSED):
            if time.monotonic() > end:
                return                     # producer busy draining: try next round
            E.heal(name)                   # it may be waiting on an injected dead reader
            time.sleep(0.001)
        with R.attach(name, writable=False) as block:
            latest = block.get("commit_index") % CAPACITY
            old = (latest - 2) % CAPACITY          # committed, and no live consumer's target
            old_state = block.slot(old, "slot_state")
        if old_state == _S.COMMITTED and _spawn_dead(name, "reader", old) == b"1":
            res = E.recover(name, old, "release_readers", force=True)
            stats["forced"] += 1
            if res["result"] != "SUCCESS" or res["warnings"]:
                problems.append("forced release of a dead reader: %s %s"
                                % (res["result"], res["outcomes"]))
        got = _spawn_dead(name, "writer")
        if got.isdigit():
            action = rng.choice(("release_writer", "force_reset"))
            res = E.recover(name, int(got), action, force=True)
            stats["forced"] += 1
            if res["result"] != "SUCCESS" or res["warnings"]:
                problems.append("forced %s of a dead writer: %s %s"
                                % (action, res["result"], res["outcomes"]))
    finally:
        _ctl_set(ctl, PAUSE, 0)


def race(name, seconds):
    """Run the race for ``seconds``; return what every process saw (asserts nothing
    about the engine, so the sabotage tests can use it too)."""
    rng = random.Random(7)
    R.create(name, capacity=CAPACITY, stride=STRIDE).close()
    ctl = mmap.mmap(-1, 4096)
    children = dict([_producer(name, ctl)] + [_consumer(name, ctl, k) for k in (1, 2)])
    problems = []
    stats = {"rounds": 0, "calls": 0, "forced": 0, "dead_injected": 0}
    reports, hung = [], []
    started = time.monotonic()
    try:
        with R.attach(name, writable=False) as watch:
            while time.monotonic() - started < seconds or stats["rounds"] < MIN_ROUNDS:
                stats["rounds"] += 1
                if stats["rounds"] % 3 == 1:       # dead holders next to the live ones
                    what = rng.choice(("reader", "reader", "registered"))
                    if _spawn_dead(name, what) == b"1":
                        stats["dead_injected"] += 1
                for action in ACTIONS:
                    res = E.recover(name, "all", action)
                    if res["warnings"]:
                        problems.append("unforced %s warned: %s" % (action, res["warnings"]))
                E.cleanup(name)
                E.heal(name, repair=stats["rounds"] % 4 == 0)
                checked = E.validate(name)
                errors = [f for f in checked["findings"] if f["severity"] == "error"]
                if errors:
                    problems.append("validate under live load: %s" % errors)
                stats["calls"] += len(ACTIONS) + 3
                problems.extend(_counts_sane(watch, "recovery"))
                if stats["rounds"] % 5 == 0:
                    _forced_round(name, ctl, rng, stats, problems)
                    stats["calls"] += 2
        stats["seconds"] = time.monotonic() - started
        _ctl_set(ctl, STOP, 1)
        reports, hung = _collect(children, 20.0, name)
        children = {}
    finally:
        _ctl_set(ctl, STOP, 1)
        for pid, fd in children.items():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
    stats["commits"] = sum(r["stats"].get("commits", 0) for r in reports)
    stats["reads"] = sum(r["stats"].get("reads", 0) for r in reports)
    violations = [v for r in reports for v in r.get("violations", [])]
    violations += ["process %d did not stop (stuck behind a lost reader or lock?)" % pid
                   for pid in hung]
    return {"violations": violations, "problems": problems, "stats": stats}


def test_recovery_against_live_processes(shm_name, figures):
    out = race(shm_name, SECONDS)
    stats = out["stats"]
    assert not out["violations"], "\n".join(out["violations"][:20])
    assert not out["problems"], "\n".join(str(p) for p in out["problems"][:20])
    assert stats["commits"] > 10 and stats["reads"] > 10, stats
    assert stats["forced"] and stats["dead_injected"], stats
    # everyone stopped cleanly; one heal for the injected dead holders: no torn state
    healed = E.heal(shm_name)
    assert healed["healthy"], healed
    final = E.validate(shm_name)
    assert final["valid"], final["findings"]
    report = E.diagnose(shm_name)
    assert report["healthy"] and not report["stuck_slots"], report["findings"]
    with R.attach(shm_name, writable=False) as block:
        for i in range(CAPACITY):
            assert block.slot(i, "write_lock") == 0 and block.slot(i, "reader_count") == 0
            assert block.slot(i, "slot_state") in (_S.FREE, _S.COMMITTED)
        assert block.get("active_consumer_count") == 0
    figures["race seconds run"] = (
        "%.1f s: %d rounds, %d recovery calls (%d forced on dead holders), %d dead holders "
        "injected, %d commits, %d verified reads, 0 violations"
        % (stats["seconds"], stats["rounds"], stats["calls"], stats["forced"],
           stats["dead_injected"], stats["commits"], stats["reads"]))


def test_race_detects_stolen_live_readers(shm_name, monkeypatch):
    """Sabotage: every reader counts as provably dead. The live processes must notice."""
    real = O.Scene._attribute

    def steal(self, view, *args):
        real(self, view, *args)
        view.releasable_readers = view.reader_count
    monkeypatch.setattr(O.Scene, "_attribute", steal)
    out = race(shm_name, 1.5)
    assert any("underflow" in v or "live reader" in v or "rewritten" in v
               for v in out["violations"] + out["problems"]), out


def test_race_detects_a_stolen_live_lock(shm_name, monkeypatch):
    """Sabotage: every lock holder is judged dead. The live producer must notice."""
    real = O.Scene.writer_verdict

    def dead(self, pid, base, *args):
        return O.Verdict(pid, "dead", ("sabotage",) + real(self, pid, base, *args).evidence)
    monkeypatch.setattr(O.Scene, "writer_verdict", dead)
    out = race(shm_name, 1.5)
    assert any("live lock stolen" in v for v in out["violations"]), out
