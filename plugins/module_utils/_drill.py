# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The crash drill: prove, on this very host, that recovery works.

Each iteration creates a scratch block, commits known data, starts real producer and
consumer processes (crash actors, :mod:`_actors`, forked: nothing to import in the
children, so it runs the same inside an Ansible module), SIGKILLs them at a protocol
point chosen by a seeded RNG, heals the block, and checks the invariants:

* the block validates and diagnoses healthy (nothing stuck, no dead consumer left);
* every slot that was COMMITTED (or DRAINING: data not yet touched) when the kill landed
  is COMMITTED afterwards with identical bytes and checksum — no committed data lost;
* a new producer commits and a new consumer reads that commit back with a valid checksum;
* the invariants of the block's configuration (each iteration draws one of the 54 cells
  of ``_layout.CONFIGURATIONS``): Enforced -- every committed slot and the flexible zone
  verify; Manual -- a slot the producer chose not to stamp is reported as information,
  never as corruption; None -- no checksum is judged; a flexible zone's bytes and
  checksum come out of heal as they went in; Sequential -- ``read_index`` (the shared
  tail a new consumer resumes from) is not moved; Sequential_sync -- a dead consumer's
  read position is cleared and ``read_index`` is the slowest registered position;
* a writer left alive behind a dead reader finishes its write once heal frees the slot
  -- where the kernel scan is complete; elsewhere (a partial scope: an unseen process
  could be inside) heal must refuse that slot with the forced command and call the block
  suspect, and the drill then runs that command, as the operator would (``forced``).

The drill closes its own mapping of the block while heal runs: a process with the block
mapped writable could be a reader, and recovery would rightly refuse. Where the scan is
partial, a consumer count above the registered consumers is lowered only when nobody
else has the block open (the exclusive lease); another process opening the block at that
moment (anyone's recovery run reading every block) leaves the count to the next heal, so
the drill heals again while heal reports the count ``KEPT`` (at most ``REHEALS`` times,
``reheals`` in the report) and then requires the block healthy.

A seed makes a run repeatable (the same points, configurations and choices); the
summary says which configuration each iteration used, counts them per dimension, and
says which iterations failed and why.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Callable, Dict, List, Optional, Tuple

from . import _layout as L
from . import _runtime as R
from ._actors import Actor, ActorError
from ._contract import DRILL_CAPACITY, DRILL_ITERATIONS, DRILL_STRIDE, SCHEMA
from ._engine import heal, diagnose, recover, validate

POINTS = ("writer_locked", "writer_midwrite", "writer_precommit", "reader_inside",
          "consumer_registered", "writer_draining", "deadlock", "random")
_S = L.SlotState
#: Bounds (seconds) for an actor to reach its point, and for a released writer to finish:
#: generous, for a loaded machine; only a broken protocol takes that long.
_STAGE_TIMEOUT, _FINISH_TIMEOUT = 30.0, 15.0
#: heals run again, at most, while the consumer count is kept for want of proof
REHEALS = 5


def _actor(name: str, steps: list, pause: Optional[str] = None) -> Actor:
    """Start an actor on the drill's block and wait until it is where the kill should
    land: at ``pause`` (left there), or after its last step. A process that cannot get
    there is killed and the iteration reports that it could not be staged."""
    a = Actor(name, steps, pause=pause, label="drill", fork=True)
    try:
        a.start()
        a.wait_point(_STAGE_TIMEOUT)
    except ActorError as exc:
        a.close()
        raise RuntimeError("drill actor did not reach its protocol point: %s"
                           % str(exc).splitlines()[0])
    return a


def _kill(actors: List[Actor]) -> None:
    """SIGKILL every actor first (one moment for all), then reap each."""
    for a in actors:
        try:
            os.kill(a.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for a in actors:
        a.close()


def _payload(rng: random.Random, size: int) -> bytes:
    return rng.getrandbits(8 * size).to_bytes(size, "little")


def _committed(block) -> Dict[int, Tuple[bytes, bytes]]:
    geo = block.geo
    out = {}
    for i in range(geo.capacity):
        if block.slot(i, "slot_state") in (_S.COMMITTED, _S.DRAINING):
            out[i] = (block.read(geo.slot_data(i), geo.stride),
                      block.read(geo.checksum_entry(i), L.HASH_SIZE))
    return out


def _stage(point: str, block, rng: random.Random
           ) -> Tuple[List[Actor], List[Actor], List[int]]:
    """Leave the block at ``point``; return (actors to kill, actors left alive, slots a
    live writer will legitimately overwrite). The random draws are those of every
    release before the actors (same seed, same points, same choices)."""
    geo, name = block.geo, block.address
    _payload(rng, geo.stride // 2)      # the torn and the full write's bytes: drawn for
    _payload(rng, geo.stride)           # the same sequence; the actors write their own

    def reader(index: Optional[int]) -> Actor:
        steps = [("consumer", "drill-reader")] + ([("read", index)] if index is not None
                                                  else [])
        return _actor(name, steps)

    if point == "writer_locked":
        return [_actor(name, [("producer",), ("acquire",)])], [], []
    if point == "writer_midwrite":
        return [_actor(name, [("producer",), ("acquire",), ("write",)],
                       pause="half-written")], [], []
    if point == "writer_precommit":
        return [_actor(name, [("producer",), ("acquire",), ("write",)])], [], []
    if point == "reader_inside":
        return [reader(None if rng.random() < 0.5 else block.get("commit_index")
                       % geo.capacity)], [], []
    if point == "consumer_registered":
        return [reader(None) for dummy in range(rng.randint(1, 3))], [], []
    if point in ("writer_draining", "deadlock"):
        producer = R.Producer(block)
        while block.slot(block.get("write_index") % geo.capacity, "slot_state") != _S.COMMITTED:
            _publish(producer, _payload(rng, geo.stride), rng)
        target = block.get("write_index") % geo.capacity      # the next slot a writer takes
        rd = reader(target)
        try:
            wr = _actor(name, [("producer",), ("acquire",), ("write",), ("commit",)],
                        pause="draining")
        except RuntimeError:
            _kill([rd])
            raise
        if point == "deadlock":
            return [rd, wr], [], []
        wr.resume()                        # on into the drain wait, behind the reader
        return [rd], [wr], [target]

    # random: a publishing producer and two reading consumers, killed at a random moment
    busy = [_actor(name, [("producer",), ("publish", None)], pause="claimed")]
    busy += [_actor(name, [("consumer", "drill-loop"), ("reads",)], pause="heartbeat")
             for dummy in range(2)]
    for a in busy:
        a.resume()
    time.sleep(rng.uniform(0.001, 0.05))
    return busy, [], []


def _publish(producer: R.Producer, data: bytes, rng: random.Random) -> R.WriteSlot:
    """Commit ``data`` as a producer of the block's configuration would: under Manual the
    producer stamps the slot (and the flexible zone) only when it chooses to (a seeded
    coin); under Sequential and Sequential_sync a short-lived consumer reads the commit
    and leaves, so that the ring is not full for the actors that come next."""
    block = producer.block
    manual = block.get("checksum_policy") == L.ChecksumPolicy.MANUAL
    ws = producer.acquire()
    producer.write(ws, data)
    if manual and rng.random() < 0.5:
        producer.stamp_slot(ws)
    if manual and block.geo.flex_size and rng.random() < 0.5:
        producer.stamp_flex()
    producer.commit(ws)
    if block.get("consumer_sync_policy") in (L.ConsumerSync.SEQUENTIAL,
                                             L.ConsumerSync.SEQUENTIAL_SYNC):
        reader = R.Consumer(block, name="drill-fill")
        try:
            rs = reader.acquire()
            if rs is not None:
                reader.read(rs, verify=False)
                reader.release(rs)
        finally:
            reader.unregister()
    return ws


def _flex(block) -> Optional[Tuple[bytes, bytes]]:
    """The flexible zone's bytes and stored checksum (None without a zone)."""
    geo = block.geo
    if not geo.flex_size:
        return None
    return block.read(geo.flex_offset, geo.flex_size), block.get("flexzone_checksum")


def run_iteration(seed: int, index: int, capacity: int = DRILL_CAPACITY,
                  stride: int = DRILL_STRIDE) -> Dict[str, object]:
    """One kill-heal-check round on a scratch block of a configuration drawn from the
    matrix (RingBuffer blocks get ``capacity`` slots; Single 1, DoubleBuffer 2); returns
    what was checked and found."""
    rng = random.Random("%d:%d" % (seed, index))
    point = rng.choice(POINTS)
    config = rng.choice(L.CONFIGURATIONS)
    name = "plh_drill_%d_%d" % (os.getpid(), index)
    problems: List[str] = []
    survivors: List[Actor] = []
    block = R.create(name, stride=stride, **config.create_args(capacity))
    try:
        producer = R.Producer(block)
        if block.geo.flex_size:            # the producer's zone, stamped as its policy does
            producer.write_flex(_payload(rng, block.geo.flex_size))
            if config.checksum == L.ChecksumPolicy.MANUAL and rng.random() < 0.5:
                producer.stamp_flex()
        for dummy in range(rng.randint(1, block.geo.capacity)):
            _publish(producer, _payload(rng, stride), rng)
        try:
            killed, survivors, exempt = _stage(point, block, rng)
        except RuntimeError as exc:
            return {"iteration": index, "point": point, "configuration": config.cell,
                    "killed": 0, "committed_checked": 0,
                    "committed_lost": 0, "changed": False, "ok": False,
                    "problems": ["could not stage %s: %s" % (point, exc)]}
        _kill(killed)
        before = _committed(block)
        zone, read_index, entries = _flex(block), block.get("read_index"), _registered(block)
        block.close()                      # not an opener while heal decides
        healed = heal(name, snapshot=False, audit=False)   # a scratch block: no record
        block = R.attach(name)
        problems += _sync_problems(block, config, read_index, entries)
        forced = _forced_drains(name, healed, exempt, problems) if survivors else False
        for a in survivors:                # a waiting writer must now finish by itself
            try:
                a.wait_point(_FINISH_TIMEOUT)  # its last step (the commit) done
                a.resume()
                a.wait_exit(_FINISH_TIMEOUT)
            except ActorError:
                problems.append("writer %d left alive behind the dead reader never finished"
                                % a.pid)
            a.close()
        survivors = []
        if forced:                         # the writer is gone now: heal what it left
            block.close()
            healed = heal(name, snapshot=False, audit=False)
            block = R.attach(name)
        reheals = 0
        while _count_kept(healed) and reheals < REHEALS:
            # A count above the registered consumers is lowered here only when nobody else
            # has the block open (this VM's scan is partial): a process that had it open
            # at that instant -- anyone's recovery run reading every block, say -- leaves
            # it for the next heal, which must then lower it (a bounded number of tries).
            reheals += 1
            block.close()
            time.sleep(0.05 * reheals)
            healed = heal(name, snapshot=False, audit=False)
            block = R.attach(name)
        after = _committed(block)
        lost = [i for i, data in before.items() if after.get(i) != data and i not in exempt]
        if lost:
            problems.append("committed slot(s) %s changed or lost" % lost)
        report = diagnose(name)
        if not report["healthy"]:
            problems.append("not healthy after heal: stuck %s, findings %s"
                            % (report["stuck_slots"], [f["code"] for f in report["findings"]]))
        checked = validate(name)
        if not checked["valid"]:
            problems.append("invalid after heal: %s" % [f["code"] for f in checked["findings"]])
        if _flex(block) != zone:
            problems.append("the flexible zone's bytes or checksum changed in heal")
        problems += _checksum_problems(block, checked, config)
        problems += _still_works(block, rng)
        return {"iteration": index, "point": point, "configuration": config.cell,
                "killed": len(killed),
                "committed_checked": len(before), "committed_lost": len(lost),
                "changed": healed["changed"], "ok": not problems, "problems": problems,
                "forced": forced, "reheals": reheals}
    finally:
        _kill(survivors)
        block.close()
        try:
            R.destroy(name)
        except Exception:
            pass


def _count_kept(healed: Dict[str, object]) -> bool:
    """heal left active_consumer_count above the registered consumers for want of proof."""
    cleaned = healed.get("cleanup") or {}
    return any(r.get("field") == "active_consumer_count" and r.get("result") == "KEPT"
               for r in cleaned.get("reconciled") or [])  # type: ignore[union-attr]


def _forced_drains(name: str, healed: Dict[str, object], slots: List[int],
                   problems: List[str]) -> bool:
    """A live writer waits on a dead reader's slot. Where heal could prove the reader
    gone it released it (nothing to do here). Where it could not (a partial scope), it
    must have refused the slot with the forced command and called the block suspect:
    check that, then run the command. Returns True when the forced command was run."""
    forced = False
    for slot in slots:
        refused = [o for o in healed.get("outcomes") or []  # type: ignore[union-attr]
                   if o.get("slot") == slot and o.get("result") == "UNSAFE"]
        if not refused:
            continue
        nxt = refused[0].get("next") or {}
        if (healed.get("health") != "suspect" or nxt.get("action") != "release_readers"
                or not nxt.get("force")):
            problems.append("slot %d: heal refused without calling the block suspect or "
                            "naming the forced command" % slot)
        recover(name, slot, "release_readers", force=True, snapshot=False, audit=False)
        forced = True
    return forced


def _registered(block) -> List[int]:
    """The consumer entries with a pid."""
    return [k for k in range(L.MAX_CONSUMERS)
            if block.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k))]


def _sync_problems(block, config: L.Configuration, before: int,
                   entries: List[int]) -> List[str]:
    """Right after the first heal: Latest_only and Sequential keep ``read_index`` (under
    Sequential it is where a new consumer resumes); under Sequential_sync each entry heal
    cleared (registered before, ``entries``) lost its read position with it, and
    ``read_index`` only rose, to the slowest registered position when there is one (no
    live writer moves it: the ones left alive wait). An entry unregistered cleanly keeps
    its position, as pylabhub's unregister leaves it."""
    read_index = block.get("read_index")
    if config.sync != L.ConsumerSync.SEQUENTIAL_SYNC:
        if read_index != before:
            return ["read_index moved from %d to %d under %s"
                    % (before, read_index, config.sync.name)]
        return []
    out = []
    registered = _registered(block)
    for k in entries:
        position = block.get(L.READ_POSITION, L.read_position(k))
        if k not in registered and position:
            out.append("consumer entry %d: cleared but read position %d left" % (k, position))
    positions = [block.get(L.READ_POSITION, L.read_position(k)) for k in registered]
    if read_index < before:
        out.append("read_index lowered from %d to %d" % (before, read_index))
    if positions and read_index != min(positions):
        out.append("read_index %d is not the slowest registered position %d"
                   % (read_index, min(positions)))
    return out


def _checksum_problems(block, checked: Dict[str, object], config: L.Configuration
                       ) -> List[str]:
    """validate judged the checksums as a C++ reader of the block's policy does: Enforced
    -- every committed slot verifies (so no checksum finding at all); Manual -- each
    committed slot whose hash does not match (not stamped for this data) is reported as
    information, never as an error; None -- nothing is judged."""
    codes = [(f["code"], f.get("slot")) for f in checked["findings"]]  # type: ignore
    if checked.get("checksum_policy") != config.checksum.name:
        return ["validate judged checksum policy %s, the block has %s"
                % (checked.get("checksum_policy"), config.checksum.name)]
    bad = [i for i in range(block.geo.capacity)
           if block.slot(i, "slot_state") in (_S.COMMITTED, _S.DRAINING)
           and not R.slot_verifies(block, i)]
    if config.checksum == L.ChecksumPolicy.NONE:
        judged = [c for c, slot in codes if c.startswith(("checksum", "flexzone-checksum"))
                  and c != "checksums-not-checked"]
        return ["checksums judged under the None policy: %s" % judged] if judged else []
    if config.checksum == L.ChecksumPolicy.ENFORCED:
        out = ["committed slot %d does not verify under Enforced" % i for i in bad]
        if not R.flex_verifies(block):
            out.append("the flexible zone does not verify under Enforced")
        return out
    unstamped = {slot for c, slot in codes if c == "checksum-unstamped"}
    return ["slot %d not stamped by the producer but not reported as unstamped" % i
            for i in bad if i not in unstamped]


def _still_works(block, rng: random.Random) -> List[str]:
    data = _payload(rng, block.geo.stride)
    try:
        ws = R.Producer(block).publish(data, timeout=2.0, drain_timeout=2.0)
        consumer = R.Consumer(block, name="drill-check")
        try:
            rs = consumer.acquire()
            if rs is None or rs.slot_id != ws.slot_id:
                return ["a new consumer could not read the new commit"]
            if consumer.read(rs) != data:
                return ["the new commit reads back different bytes"]
            consumer.release(rs)
        finally:
            consumer.unregister()
    except Exception as exc:   # any failure here is a finding, not a crash of the drill
        return ["block not usable after heal: %s" % exc]
    return []


def drill(iterations: int = DRILL_ITERATIONS, seed: Optional[int] = None,
          capacity: int = DRILL_CAPACITY, stride: int = DRILL_STRIDE,
          progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Run ``iterations`` kill-heal-check rounds; summary plus per-iteration detail."""
    seed = random.SystemRandom().randrange(2 ** 32) if seed is None else seed
    started = time.monotonic()
    results = []
    for i in range(iterations):
        results.append(run_iteration(seed, i, capacity, stride))
        if progress:
            progress(i + 1, iterations)
    failed = [r for r in results if not r["ok"]]
    cells = {c.cell: c for c in L.CONFIGURATIONS}
    return {"schema": SCHEMA, "operation": "drill", "seed": seed,
            "iterations": iterations, "kills": sum(int(r["killed"]) for r in results),
            "survived": iterations - len(failed),
            "committed_checked": sum(int(r["committed_checked"]) for r in results),
            "committed_lost": sum(int(r["committed_lost"]) for r in results),
            "forced": sum(1 for r in results if r.get("forced")),
            "reheals": sum(int(r.get("reheals") or 0) for r in results),
            "seconds": round(time.monotonic() - started, 3), "ok": not failed,
            "failures": failed, "points": {p: sum(1 for r in results if r["point"] == p)
                                           for p in POINTS},
            "configurations": L.matrix_counts(cells[str(r["configuration"])] for r in results),
            "schedule": [{"iteration": r["iteration"], "point": r["point"],
                          "configuration": r["configuration"], "ok": r["ok"]}
                         for r in results]}
