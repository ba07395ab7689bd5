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
force on exactly those slots. A producer left waiting on a slot where a reader this
test killed still counts is unblocked the way an operator would: the unforced heal must
refuse it (the live producer, or anything a partial scan cannot see, could be a reader)
naming the forced command, which the test then runs with the live consumers held outside
every slot.

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
CPAUSE = 24                             # consumers: hold no slot and wait
CPAUSED = {1: 32, 2: 40}                # ... each consumer says it is waiting, outside
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
    # Underflow only: above the entries is the count rule's KEPT -- a consumer this test
    # SIGKILLed after counting itself in stays counted while the scan is partial and live
    # processes have the block open (a consumer between unregistering and uncounting
    # could be unseen), so with enough rounds it passes MAX_CONSUMERS. The end of the
    # test, with everyone gone, requires it back at 0.
    count = block.get("active_consumer_count")
    if count >= UNDERFLOW:
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
                if _ctl_get(ctl, CPAUSE):        # outside every slot until told to go on
                    _ctl_set(ctl, CPAUSED[k], 1)
                    while _ctl_get(ctl, CPAUSE) and not _ctl_get(ctl, STOP):
                        time.sleep(0.0005)
                    _ctl_set(ctl, CPAUSED[k], 0)
                    continue
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
    """A holder that is SIGKILLed at its protocol point; returns when it is dead, with
    what it reported: a writer's slot, a reader's slot (digits), b"1" for a consumer that
    only registered, b"-" when the reader found no committed slot."""
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
                if what == "registered":
                    os.write(w, b"1")
                else:
                    rs = c.acquire(index)
                    os.write(w, b"-" if rs is None else b"%d" % rs.index)
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


def _force_dead_readers(name, ctl, healed, dead_in, stats, problems, consumers_gone=False):
    """Where the unforced ``heal`` refused a slot's readers and this test knows a reader
    it SIGKILLed is inside that slot, run the forced command the refusal names -- with
    the live consumers held outside every slot (or gone), so that only dead readers can
    be counted there. On this machine the scan's scope may be partial (PID 1
    unreadable): then the reader rule must not release a reader without force while
    anything live has the block open (the live producer, not waiting on that slot, could
    be a reader), and refusing is right. The unforced operations are still checked for
    never taking anything live (the processes' own checks)."""
    named = [o for o in healed.get("outcomes") or []
             if o.get("result") == "UNSAFE" and o.get("slot") in dead_in
             and (o.get("next") or {}).get("action") == "release_readers"]
    if consumers_gone:
        # nothing but the producer is left: every reader still counted in a slot where
        # this test killed one is dead, whatever the engine said (the sabotage tests'
        # engines say wrong things; the producer must get to its own checks)
        with R.attach(name, writable=False) as block:
            left = sorted(i for i in dead_in if block.slot(i, "reader_count"))
        named += [{"slot": i, "next": {"operation": "recover", "slot": i,
                                       "action": "release_readers", "force": True}}
                  for i in left if i not in {o["slot"] for o in named}]
    if not named:
        return
    if not consumers_gone:
        _ctl_set(ctl, CPAUSE, 1)
    try:
        end = time.monotonic() + 5.0
        while not consumers_gone and not all(_ctl_get(ctl, off) for off in CPAUSED.values()):
            if time.monotonic() > end:
                return                     # a consumer is slow to pause: next round
            time.sleep(0.0005)
        for o in named:
            nxt = o["next"]
            if nxt != {"operation": "recover", "slot": o["slot"],
                       "action": "release_readers", "force": True}:
                problems.append("heal refused slot %d naming %r, not the forced release"
                                % (o["slot"], nxt))
                continue
            res = E.recover(name, nxt["slot"], nxt["action"], force=nxt["force"])
            stats["forced_readers"] += 1
            if res["result"] == "SUCCESS":
                dead_in.discard(o["slot"])
            elif res["result"] != "FAILED":      # FAILED: a word moved, next round
                problems.append("forced release of known dead readers in slot %d: %s %s"
                                % (o["slot"], res["result"], res["outcomes"]))
    finally:
        _ctl_set(ctl, CPAUSE, 0)


def _collect(children, deadline_s, name, ctl, dead_in, stats, problems):
    """Wait for the children to finish (healing meanwhile: a producer may wait on a dead
    reader, released with force where heal refuses and the consumers are gone); return
    their reports."""
    reports = []
    end = time.monotonic() + deadline_s
    pending = dict(children)
    producer = next(iter(children))
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
            healed = E.heal(name)
            consumers_gone = len(pending) == 1 and producer in pending
            if consumers_gone:
                _force_dead_readers(name, ctl, healed, dead_in, stats, problems, True)
            time.sleep(0.01)
    for pid, fd in pending.items():
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    return reports, list(pending)


def _forced_round(name, ctl, rng, stats, problems, dead_in):
    """Pause the producer (it holds nothing), make dead holders, release them with force."""
    _ctl_set(ctl, PAUSE, 1)
    try:
        end = time.monotonic() + 3.0
        while not _ctl_get(ctl, PAUSED):
            if time.monotonic() > end:
                return                     # producer busy draining: try next round
            healed = E.heal(name)          # it may be waiting on an injected dead reader
            _force_dead_readers(name, ctl, healed, dead_in, stats, problems)
            time.sleep(0.001)
        with R.attach(name, writable=False) as block:
            latest = block.get("commit_index") % CAPACITY
            old = (latest - 2) % CAPACITY          # committed, and no live consumer's target
            old_state = block.slot(old, "slot_state")
        if old_state == _S.COMMITTED and _spawn_dead(name, "reader", old) == b"%d" % old:
            res = E.recover(name, old, "release_readers", force=True)
            stats["forced"] += 1
            # the live (paused) producer has the block mapped and no consumer entry: it
            # could be a reader, so the engine rightly warns that it forced a maybe-live one
            unexpected = [w for w in res["warnings"] if not w.startswith("FORCED: cleared 1 ")]
            if res["result"] != "SUCCESS" or unexpected:
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
    stats = {"rounds": 0, "calls": 0, "forced": 0, "dead_injected": 0, "forced_readers": 0}
    dead_in = set()                 # slots where a reader this test killed may still count
    reports, hung = [], []
    started = time.monotonic()
    try:
        with R.attach(name, writable=False) as watch:
            while time.monotonic() - started < seconds or stats["rounds"] < MIN_ROUNDS:
                stats["rounds"] += 1
                if stats["rounds"] % 3 == 1:       # dead holders next to the live ones
                    what = rng.choice(("reader", "reader", "registered"))
                    got = _spawn_dead(name, what)
                    if got == b"1" or got.isdigit():
                        stats["dead_injected"] += 1
                    if what == "reader" and got.isdigit():
                        dead_in.add(int(got))
                for action in ACTIONS:
                    res = E.recover(name, "all", action)
                    if res["warnings"]:
                        problems.append("unforced %s warned: %s" % (action, res["warnings"]))
                E.cleanup(name)
                healed = E.heal(name, repair=stats["rounds"] % 4 == 0)
                problems.extend(_counts_sane(watch, "recovery (unforced)"))
                _force_dead_readers(name, ctl, healed, dead_in, stats, problems)
                checked = E.validate(name)
                errors = [f for f in checked["findings"] if f["severity"] == "error"]
                if errors:
                    problems.append("validate under live load: %s" % errors)
                stats["calls"] += len(ACTIONS) + 3
                problems.extend(_counts_sane(watch, "recovery"))
                if stats["rounds"] % 5 == 0:
                    _forced_round(name, ctl, rng, stats, problems, dead_in)
                    stats["calls"] += 2
        stats["seconds"] = time.monotonic() - started
        _ctl_set(ctl, STOP, 1)
        reports, hung = _collect(children, 20.0, name, ctl, dead_in, stats, problems)
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
        "%.1f s: %d rounds, %d recovery calls (%d forced on dead holders, %d forced reader "
        "releases heal named), %d dead holders injected, %d commits, %d verified reads, "
        "0 violations"
        % (stats["seconds"], stats["rounds"], stats["calls"], stats["forced"],
           stats["forced_readers"], stats["dead_injected"], stats["commits"], stats["reads"]))


def race_until(name, caught, attempts=8, seconds=1.5):
    """Run short races on fresh blocks until one reports a line ``caught`` accepts.

    A sabotage shows only when a live process is inside a slot at the moment the
    sabotaged recovery runs; on a loaded machine one short race can miss that by
    chance, so the self-check gives it several chances (each on a new block) before
    it calls the sabotage unnoticed."""
    out = {}
    for attempt in range(attempts):
        block = "%s_%d" % (name, attempt)
        try:
            out = race(block, seconds)
        finally:
            try:
                os.unlink(os.path.join("/dev/shm", block))
            except FileNotFoundError:
                pass
        out["caught"] = [v for v in out["violations"] + out["problems"] if caught(str(v))]
        out["attempts"] = attempt + 1
        if out["caught"]:
            break
    return out


def test_race_detects_stolen_live_readers(shm_name, monkeypatch):
    """Sabotage: every reader counts as provably dead. The live processes must notice."""
    real = O.Scene._attribute

    def steal(self, view, *args):
        real(self, view, *args)
        view.releasable_readers = view.reader_count
    monkeypatch.setattr(O.Scene, "_attribute", steal)
    out = race_until(shm_name, lambda v: "underflow" in v or "live reader" in v or "rewritten" in v)
    assert out["caught"], out


def test_race_detects_a_stolen_live_lock(shm_name, monkeypatch):
    """Sabotage: every lock holder is judged dead. The live producer must notice."""
    real = O.Scene.writer_verdict

    def dead(self, pid, base, *args):
        return O.Verdict(pid, "dead", ("sabotage",) + real(self, pid, base, *args).evidence)
    monkeypatch.setattr(O.Scene, "writer_verdict", dead)
    out = race_until(shm_name, lambda v: "live lock stolen" in v)
    assert out["caught"], out
