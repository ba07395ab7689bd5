#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Leave one fault scenario in a real DataBlock, with real processes and real SIGKILL.

Runs on the host whose /dev/shm should hold the block (fleetlab runs it inside a lab host
with ``nsenter``; it works on any machine as root or as the block's owner). Every actor
(producer, consumers) is a crash actor of the collection (``plugins/module_utils/
_actors.py``: a real process running the collection's runtime that reports when it has
reached its protocol point); this process then SIGKILLs it there and checks the bytes it
left.

    fault_actor.py SCENARIO [--name BLOCK] [--result FILE] [--collections DIR] ...

Scenarios: stuck_writer, stuck_readers, stuck_readers_dead_writer, dead_consumers,
corruption, healthy. The report (JSON, on stdout and in ``--result``) names the block,
the slot, every process with its pid *in this PID namespace* and its fate (killed,
exited, alive) and the observed protocol words. When processes are left alive this
process stays alive as their parent (so one process group holds them all) until it
is signalled; otherwise it exits 0 once the report is written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

R = L = B = judge = A = None   # the runtime modules, imported in main() from --collections


def _import_runtime(collections: Optional[str]) -> None:
    global R, L, B, judge, A
    if collections:
        sys.path.insert(0, collections)
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
        _actors, _block, _layout, _liveness, _runtime)
    R, L, B, judge, A = _runtime, _layout, _block, _liveness.judge, _actors


class Actor:
    """One crash actor (``_actors.Actor``) with its role and fate for the report."""

    def __init__(self, role: str, block: str, steps: list, **kwargs) -> None:
        self.role = role
        self.state = "alive"
        self.actor = A.Actor(block, steps, label="fault_actor-" + role, **kwargs).start()
        self.pid = self.actor.pid

    def wait_point(self, timeout: float = 15.0) -> dict:
        try:
            return self.actor.wait_point(timeout)
        except A.ActorError as exc:
            self.kill()
            raise RuntimeError("%s (pid %d) did not reach its point: %s"
                               % (self.role, self.pid, exc))

    def go(self) -> None:
        self.actor.resume()

    def kill(self) -> None:
        self.actor.kill()
        self.state = "killed"

    def join(self, timeout: float = 15.0) -> int:
        self.actor.resume()
        status = self.actor.wait_exit(timeout)
        self.state = "exited"
        return status if status is not None else 0

    def to_dict(self) -> dict:
        return {"role": self.role, "pid": self.pid, "state": self.state}


# --------------------------------------------------------------------------- scenarios
class Scenario:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = args.name
        self.actors = []  # type: List[Actor]
        self.slot = None  # type: Optional[int]
        self.notes = []   # type: List[str]

    def actor(self, role: str, steps: list, **kwargs) -> Actor:
        a = Actor(role, self.name, steps, **kwargs)
        self.actors.append(a)
        return a

    def create(self) -> None:
        R.create(self.name, capacity=self.args.capacity, stride=self.args.stride).close()

    def producer(self, commits: int, live: bool = False) -> Actor:
        """The block, and a producer that publishes ``commits`` slots and reports
        "committed"; with ``live`` it then stays, heartbeating every second."""
        self.create()
        steps = [("producer",), ("publish", commits)] + ([("heartbeat", 1.0)] if live else [])
        return self.actor("producer", steps, pause="committed" if live and commits else None,
                          nth=max(commits, 1))

    # -- the scenarios ------------------------------------------------------------------
    def stuck_writer(self) -> None:
        half = self.args.stride // 2
        commits = min(3, self.args.capacity - 1) if self.args.capacity > 1 else 0
        self.create()
        p = self.actor("producer", [("producer",), ("publish", commits), ("acquire",),
                                    ("write",)], pause="half-written", nth=commits + 1)
        self.slot = int(p.wait_point()["slot"])
        p.kill()
        self.notes.append("producer SIGKILLed holding slot %d (WRITING, %d of %d bytes written)"
                          % (self.slot, half, self.args.stride))

    def stuck_readers(self, dead_writer: bool = False) -> None:
        capacity = self.args.capacity
        self.create()
        p = self.actor("producer", [("producer",), ("publish", capacity), ("acquire",)],
                       pause="committed", nth=capacity)
        p.wait_point()
        with B.open_block(self.name) as blk:
            self.slot = blk.get("write_index") % blk.geo.capacity   # the next write's slot
        slot = self.slot
        r = self.actor("reader", [("consumer", "fleetlab-reader"), ("read", slot)])
        r.wait_point()
        r.kill()
        p.go()                       # on to acquire: it blocks in DRAINING behind the reader
        with B.open_block(self.name) as blk:
            base = blk.slot_base(slot)
            deadline = time.monotonic() + 10
            while not (blk.get(L.SLOT["slot_state"], base) == L.SlotState.DRAINING
                       and blk.get(L.SLOT["writer_waiting"], base) == 1
                       and blk.get(L.SLOT["write_lock"], base) == p.pid):
                if time.monotonic() > deadline:
                    raise RuntimeError("the writer never started draining slot %d" % slot)
                time.sleep(0.002)
        self.notes.append("reader SIGKILLed inside slot %d; producer waits in DRAINING" % slot)
        if dead_writer:
            p.kill()
            self.notes.append("the waiting producer was SIGKILLed too")

    def stuck_readers_dead_writer(self) -> None:
        self.stuck_readers(dead_writer=True)

    def _settled_producer(self, commits: int) -> None:
        p = self.producer(commits, live=self.args.live_producer)
        p.wait_point()
        if not self.args.live_producer:
            p.join()
        else:
            p.go()                   # on into its heartbeat loop

    def dead_consumers(self, dead: int = 3) -> None:
        self._settled_producer(self.args.capacity)

        def consumer(label: str, live: bool) -> Actor:
            steps = [("consumer", label), ("read", None), ("release",)]
            if live:
                steps.append(("heartbeat", 1.0))
            return self.actor("live_consumer" if live else "consumer", steps,
                              pause="released" if live else None)
        for k in range(dead):
            consumer("fleetlab-dead-%d" % k, False).wait_point()
        live = consumer("fleetlab-live", True)
        live.wait_point()
        live.go()                    # on into its pulse loop
        for a in self.actors:
            if a.role == "consumer":
                a.kill()
        self.notes.append("%d consumers SIGKILLed while registered; 1 live consumer" % dead)

    def corruption(self) -> None:
        self._settled_producer(self.args.capacity)
        with B.open_block(self.name, writable=True) as blk:
            geo = blk.geo
            slot = self.args.slot if self.args.slot is not None else 1 % geo.capacity
            blk.check_slot(slot)
            if blk.get(L.SLOT["slot_state"], blk.slot_base(slot)) != L.SlotState.COMMITTED:
                raise RuntimeError("slot %d is not committed" % slot)
            off = geo.slot_data(slot)
            blk.write(off, bytes(b ^ 0xFF for b in blk.read(off, 16)))
            stored = blk.read(geo.checksum_entry(slot), L.HASH_SIZE)
            if L.blake2b256(blk.view(off, geo.stride)) == stored:
                raise RuntimeError("checksum still matches after the flip")
        self.slot = slot
        self.notes.append("16 data bytes of committed slot %d inverted: checksum mismatch"
                          % slot)

    def healthy(self) -> None:
        self._settled_producer(self.args.capacity + 2)
        c = self.actor("reader", [("consumer", "fleetlab-reader"), ("read", None),
                                  ("release",), ("unregister",)])
        c.wait_point()
        c.join()
        self.notes.append("%d commits, one clean read; no faults" % (self.args.capacity + 2))

    # -- report -------------------------------------------------------------------------
    def observe(self) -> dict:
        with B.open_block(self.name) as blk:
            geo = blk.geo
            slots = []
            for i in range(geo.capacity):
                base = blk.slot_base(i)
                lock = blk.get(L.SLOT["write_lock"], base)
                data = blk.view(geo.slot_data(i), geo.stride)
                stored = blk.read(geo.checksum_entry(i), L.HASH_SIZE)
                slots.append({
                    "slot": i,
                    "state": L.enum_name(L.SlotState, blk.get(L.SLOT["slot_state"], base)),
                    "write_lock": lock,
                    "lock_holder": judge(lock).state if lock else None,
                    "reader_count": blk.get(L.SLOT["reader_count"], base),
                    "writer_waiting": blk.get(L.SLOT["writer_waiting"], base),
                    "write_generation": blk.get(L.SLOT["write_generation"], base),
                    "checksum_ok": (L.blake2b256(data) == stored) if any(stored) else None})
                del data
            consumers = []
            for k in range(L.MAX_CONSUMERS):
                pid = blk.consumer(k, "consumer_pid")
                if pid:
                    consumers.append({"index": k, "pid": pid,
                                      "name": blk.consumer(k, "consumer_name"),
                                      "holder": judge(pid).state})
            hb = blk.get("producer_heartbeat_pid")
            return {"write_index": blk.get("write_index"), "commit_index": blk.get("commit_index"),
                    "active_consumer_count": blk.get("active_consumer_count"),
                    "producer_heartbeat_pid": hb,
                    "producer": judge(hb).state if hb else None,
                    "slots": slots, "consumers": consumers}


def _write_result(path: Optional[str], report: dict) -> None:
    text = json.dumps(report, indent=1)
    print(text, flush=True)
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("scenario", choices=["stuck_writer", "stuck_readers",
                                         "stuck_readers_dead_writer", "dead_consumers",
                                         "corruption", "healthy"])
    ap.add_argument("--name", default=None, help="block name (default <scenario>_block)")
    ap.add_argument("--result", default=None, help="also write the JSON report here")
    ap.add_argument("--collections", default=None,
                    help="dir holding ansible_collections/pylabhub/recovery")
    ap.add_argument("--capacity", type=int, default=4)
    ap.add_argument("--stride", type=int, default=4096)
    ap.add_argument("--slot", type=int, default=None, help="corruption: the slot to corrupt")
    ap.add_argument("--live-producer", action="store_true")
    ap.add_argument("--replace", action="store_true", help="unlink an existing block first")
    args = ap.parse_args(argv)
    args.name = args.name or "%s_block" % args.scenario
    _import_runtime(args.collections)
    if args.replace:
        try:
            R.destroy(args.name)
        except Exception:
            pass
    if os.path.exists(B.check_name(args.name)):
        print("fault_actor: /dev/shm/%s already exists (use --replace)" % args.name,
              file=sys.stderr)
        return 1
    sc = Scenario(args)
    try:
        getattr(sc, args.scenario)()
        observed = sc.observe()
    except BaseException:
        for a in sc.actors:
            if a.state == "alive":
                a.kill()
        raise
    report = {"scenario": args.scenario, "block": args.name,
              "path": str(Path(B.SHM_DIR) / args.name), "hostname": os.uname().nodename,
              "slot": sc.slot, "notes": sc.notes, "actor_pid": os.getpid(),
              "processes": [a.to_dict() for a in sc.actors], "observed": observed}
    live = [a for a in sc.actors if a.state == "alive"]
    if not live:
        _write_result(args.result, report)
        return 0

    def stop(signum, frame):  # noqa: ARG001
        for a in live:
            try:
                os.kill(a.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _write_result(args.result, report)
    while live:                # stay the parent of the live processes
        try:
            pid = os.wait()[0]
        except ChildProcessError:
            break
        live = [a for a in live if a.pid != pid]
    return 0


if __name__ == "__main__":
    sys.exit(main())
