"""The configuration matrix's cells, run for test_configuration_matrix.py.

Run as a program inside a private mount + PID namespace whose /dev/shm is a fresh tmpfs
(the test starts it): there the kernel scan is complete, as for root on an ordinary host,
so heal acts on dead holders without force. Each cell named on the command line
(``_layout.CONFIGURATIONS`` indexes) prints one JSON line: the facts measured and the
problems found (the test asserts there are none, cell by cell).

One cell, with the project's own processes (crash actors, forked) on a block of that
configuration, after a few commits (under Manual the producer stamps only odd slot ids
and never the flexible zone; under Sequential* a short-lived consumer reads each commit):

* a producer SIGKILLed mid-write (half its bytes written);
* a consumer SIGKILLed inside a read, and one SIGKILLed idle holding its registration (and
  under Sequential_sync its read position, which then pins ``read_index``);
* a live consumer that read the latest commit and heartbeats every 3 ms while heal runs;
* one heal without force (Single has one slot: the writer's kill is healed first, then a
  new commit is made for the readers and the rest is healed);

then: every slot committed when the kills landed holds the same bytes and checksum; the
flexible zone's bytes and checksum are unchanged; heal refused nothing; the block
diagnoses healthy and validates; validate judged each committed slot as a C++ reader of the
policy does (Enforced: every committed slot and the zone verify, no checksum finding;
Manual: each slot whose hash does not match its data is ``checksum-unstamped`` information;
None: no checksum judged); ``read_index`` is kept (Latest_only, Sequential) or, under
Sequential_sync, the dead consumers' positions are cleared and ``read_index`` is the live
consumer's position; a new producer commits and a new consumer reads that commit back
(verified under Enforced).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _layout as L, _runtime as R)
from ansible_collections.pylabhub.recovery.plugins.module_utils._actors import Actor

RING, STRIDE, HEARTBEAT = 4, 1024, 0.003
STAGE = 30.0                       # seconds for an actor to reach its point (a loaded box)
_S = L.SlotState
_SEQ = (L.ConsumerSync.SEQUENTIAL, L.ConsumerSync.SEQUENTIAL_SYNC)


def data(slot_id: int) -> bytes:
    head = b"matrix %d " % slot_id
    return (head * (STRIDE // len(head) + 1))[:STRIDE]


def publish(block, producer: R.Producer, cfg: L.Configuration) -> int:
    """One commit as this configuration's producer makes it; returns its id."""
    ws = producer.acquire(timeout=STAGE)
    producer.write(ws, data(ws.slot_id))
    if cfg.checksum == L.ChecksumPolicy.MANUAL and ws.slot_id % 2:
        producer.stamp_slot(ws)            # Manual: the producer stamps odd ids only
    producer.commit(ws)
    if cfg.sync in _SEQ:                   # read along, so that the ring is not full
        reader = R.Consumer(block, name="fill")
        rs = reader.acquire()
        if rs is not None:
            reader.release(rs)
        reader.unregister()
    return ws.slot_id


def actor(name: str, steps: list, pause=None) -> Actor:
    a = Actor(name, steps, pause=pause, label="matrix", fork=True)
    a.start()
    a.wait_point(STAGE)
    return a


def heartbeat(block, pid: int) -> int:
    """The heartbeat of the consumer entry ``pid`` holds (its release ends with one)."""
    for k in range(L.MAX_CONSUMERS):
        base = L.consumer_entry(k)
        if block.get(L.CONSUMER["consumer_pid"], base) == pid:
            return block.get(L.CONSUMER["last_heartbeat_ns"], base)
    raise RuntimeError("consumer %d is not registered" % pid)


def committed(block) -> dict:
    geo = block.geo
    return {i: (block.read(geo.slot_data(i), geo.stride),
                block.read(geo.checksum_entry(i), L.HASH_SIZE))
            for i in range(geo.capacity)
            if block.slot(i, "slot_state") in (_S.COMMITTED, _S.DRAINING)}


def zone(block):
    geo = block.geo
    return (block.read(geo.flex_offset, geo.flex_size), block.get("flexzone_checksum")) \
        if geo.flex_size else None


def heal(name: str, problems: list) -> dict:
    """heal without force: in a complete scope it must refuse nothing."""
    healed = E.heal(name, snapshot=False, audit=False)
    refused = [o for o in healed.get("outcomes") or []
               if o.get("result") in (E.UNSAFE, E.FAILED)]
    if refused or healed.get("health") != "healthy":
        problems.append("heal (no force, complete scope): health %s, refused %s"
                        % (healed.get("health"), refused))
    return healed


def run_cell(index: int) -> dict:
    cfg = L.CONFIGURATIONS[index]
    name = "plh_matrix_%d_%d" % (os.getpid(), index)
    problems, actors, kills, heals = [], [], 0, 0
    live = None
    block = R.create(name, stride=STRIDE, **cfg.create_args(RING))
    try:
        producer = R.Producer(block)
        if cfg.flex_size:
            producer.write_flex(b"zone of %s " % cfg.cell.encode() * 8)
        for dummy in range(block.geo.capacity + 1):          # one lap and one more
            publish(block, producer, cfg)
        single = block.geo.capacity == 1
        writer = actor(name, [("producer",), ("acquire",), ("write",)], pause="half-written")
        if single:                         # the only slot is being written: heal it first
            writer.kill()
            kills += 1
            before = committed(block)
            block.close()
            heal(name, problems)
            heals += 1
            block = R.attach(name)
            if committed(block) != before:
                problems.append("heal of the writer changed committed data")
            publish(block, R.Producer(block), cfg)           # something for the readers
        idle = actor(name, [("consumer", "idle")])
        inside = actor(name, [("consumer", "inside"), ("read", None)])
        live = actor(name, [("consumer", "live"), ("read", None), ("release",),
                            ("heartbeat", HEARTBEAT)], pause="released")
        beat = heartbeat(block, live.pid)
        live.resume()                      # on: the rest of its release, then the loop
        deadline = time.monotonic() + STAGE
        while heartbeat(block, live.pid) == beat:      # its release is complete
            if time.monotonic() > deadline:
                raise RuntimeError("the live consumer never finished its release")
            time.sleep(0.001)
        actors = ([] if single else [writer]) + [idle, inside]
        for a in actors:
            a.kill()
            kills += 1
        before, flex = committed(block), zone(block)
        read_index, write_index = block.get("read_index"), block.get("write_index")
        dead = [k for k in range(L.MAX_CONSUMERS)
                if block.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k))
                in (idle.pid, inside.pid)]
        pinned = (cfg.sync == L.ConsumerSync.SEQUENTIAL_SYNC
                  and read_index == min(block.get(L.READ_POSITION, L.read_position(k))
                                        for k in dead))
        block.close()                      # not an opener while heal decides
        healed = heal(name, problems)
        heals += 1
        block = R.attach(name)
        if committed(block) != before:
            problems.append("committed slots changed or lost: before %s, after %s"
                            % (sorted(before), sorted(committed(block))))
        if zone(block) != flex:
            problems.append("the flexible zone's bytes or checksum changed")
        live_k = [k for k in range(L.MAX_CONSUMERS)
                  if block.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k)) == live.pid]
        if len(live_k) != 1:
            problems.append("the live consumer's entry is gone: %s" % live_k)
        for k in dead:
            if block.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k)):
                problems.append("dead consumer entry %d not cleared" % k)
            if cfg.sync == L.ConsumerSync.SEQUENTIAL_SYNC and \
                    block.get(L.READ_POSITION, L.read_position(k)):
                problems.append("dead consumer entry %d kept its read position" % k)
        after_index = block.get("read_index")
        if cfg.sync == L.ConsumerSync.SEQUENTIAL_SYNC:
            want = block.get(L.READ_POSITION, L.read_position(live_k[0])) if live_k else None
            if want is not None and block.geo.capacity > 1:     # never past the latest commit
                want = min(want, block.get("commit_index"))
            if after_index != want:
                problems.append("read_index %d, the live consumer's position is %s"
                                % (after_index, want))
        elif after_index != read_index:
            problems.append("read_index moved %d -> %d under %s"
                            % (read_index, after_index, cfg.sync.name))
        report = E.diagnose(name)
        if not report["healthy"]:
            problems.append("not healthy after heal: %s" % [f["code"] for f in report["findings"]])
        checked = E.validate(name)
        problems += judged_as_cpp(block, checked, cfg)
        unstamped = [i for i in range(block.geo.capacity)
                     if block.slot(i, "slot_state") == _S.COMMITTED
                     and not R.slot_verifies(block, i)]
        problems += still_works(block, cfg)
        return {"cell": cfg.cell, "problems": problems, "kills": kills, "heals": heals,
                "committed_checked": len(before), "pinned_before_heal": pinned,
                "read_index": [read_index, after_index], "write_index": write_index,
                "health": healed.get("health"), "valid": checked["valid"],
                "unverified_slots": unstamped,
                "finding_codes": sorted({f["code"] for f in checked["findings"]})}
    finally:
        for a in actors + ([live] if live else []):
            a.close()
        block.close()
        R.destroy(name)


def judged_as_cpp(block, checked: dict, cfg: L.Configuration) -> list:
    """validate agrees with what a C++ reader of this configuration accepts."""
    out = [] if checked["valid"] else ["invalid after heal: %s" % [
        (f["code"], f["severity"]) for f in checked["findings"] if f["severity"] == "error"]]
    codes = [(f["code"], f.get("slot"), f["severity"]) for f in checked["findings"]]
    geo = block.geo
    bad = [i for i in range(geo.capacity) if block.slot(i, "slot_state") == _S.COMMITTED
           and not R.slot_verifies(block, i)]
    if checked.get("checksum_policy") != cfg.checksum.name:
        out.append("validate judged policy %s" % checked.get("checksum_policy"))
    judged = [c for c in codes if c[0].startswith(("checksum-", "flexzone-checksum"))]
    if cfg.checksum == L.ChecksumPolicy.NONE:
        if judged or ("checksums-not-checked", None, "info") not in codes:
            out.append("None: checksums judged %s" % judged)
    elif cfg.checksum == L.ChecksumPolicy.ENFORCED:
        if bad or not R.flex_verifies(block) or judged:
            out.append("Enforced: slots %s do not verify, zone ok %s, findings %s"
                       % (bad, R.flex_verifies(block), judged))
    else:
        unstamped = sorted(s for c, s, sev in judged if c == "checksum-unstamped" and sev == "info")
        if unstamped != bad:
            out.append("Manual: unstamped slots %s, reported %s" % (bad, unstamped))
        if geo.flex_size and ("flexzone-checksum-unstamped", None, "info") not in codes:
            out.append("Manual: the unstamped zone is not reported as information: %s" % judged)
    return out


def still_works(block, cfg: L.Configuration) -> list:
    try:
        producer = R.Producer(block)
        ws = producer.acquire(timeout=STAGE, drain_timeout=STAGE)
        producer.write(ws, data(ws.slot_id))
        producer.commit(ws)                # a new producer stamps as its policy does
        consumer = R.Consumer(block, name="after")
        try:
            rs = consumer.acquire()
            if rs is None or rs.slot_id != ws.slot_id:
                return ["a new consumer could not read the new commit %d (got %s)"
                        % (ws.slot_id, rs)]
            if consumer.read(rs, verify=True) != data(ws.slot_id):
                return ["the new commit reads back different bytes"]
            consumer.release(rs)
        finally:
            consumer.unregister()
    except Exception as exc:
        return ["block not usable after heal: %s" % str(exc).splitlines()[0]]
    return []


def main(argv) -> None:
    """``[--workers N] cell...``: the cells, by index; with N > 1, N programs share them
    (cells wait in heal's settle looks more than they compute) and this one relays
    their lines."""
    if argv and argv[0] == "--workers":
        workers, cells = int(argv[1]), argv[2:]
        procs = [subprocess.Popen([sys.executable, __file__] + cells[w::workers],
                                  stdout=subprocess.PIPE) for w in range(workers)]
        for proc in procs:
            sys.stdout.write(proc.communicate()[0].decode())
        sys.stdout.flush()
        return
    for arg in argv:
        started = time.monotonic()
        try:
            result = run_cell(int(arg))
        except Exception:
            result = {"cell": L.CONFIGURATIONS[int(arg)].cell,
                      "problems": ["crashed: %s" % traceback.format_exc()]}
        result["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
