#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Leave one fault scenario in a real DataBlock, with real processes and real SIGKILL.

Runs on the host whose /dev/shm should hold the block (fleetlab runs it inside a lab host
with ``nsenter``; it works on any machine as root or as the block's owner). Every actor
(producer, consumers) is a forked process that uses the collection's own runtime
(``plugins/module_utils/_runtime.py``) and reports over a pipe when it has reached the
protocol point; this process then SIGKILLs it there and checks the bytes it left.

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
import select
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, List, Optional

R = L = B = judge = None   # the runtime modules, imported in main() from --collections


def _import_runtime(collections: Optional[str]) -> None:
    global R, L, B, judge
    if collections:
        sys.path.insert(0, collections)
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
        _block, _layout, _liveness, _runtime)
    R, L, B, judge = _runtime, _layout, _block, _liveness.judge


# --------------------------------------------------------------------------- actors
class Signals:
    """The child's side of its two pipes."""

    def __init__(self, up: int, down: int) -> None:
        self.up, self.down = up, down

    def reached(self, label: str) -> None:
        os.write(self.up, (label + "\n").encode())

    def wait_go(self) -> str:
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(self.down, 64)
            if not chunk:
                os._exit(0)      # parent went away
            data += chunk
        return data.decode().strip()


def hold() -> None:
    """Stay exactly here until killed."""
    while True:
        signal.pause()


class Actor:
    """A forked process running ``fn(signals)``; the parent waits for its points."""

    def __init__(self, role: str, fn: Callable[[Signals], None]) -> None:
        self.role = role
        self.state = "alive"
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(up_r)
            os.close(down_w)
            code = 0
            try:
                fn(Signals(up_w, down_r))
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(up_w)
        os.close(down_r)
        self.pid, self._up, self._down, self._buf = pid, up_r, down_w, b""

    def wait_point(self, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError("%s (pid %d) did not reach its point in %.0f s"
                                   % (self.role, self.pid, timeout))
            ready = select.select([self._up], [], [], left)[0]
            if ready:
                chunk = os.read(self._up, 256)
                if not chunk:
                    status = os.waitpid(self.pid, 0)[1]
                    self.state = "exited"
                    raise RuntimeError("%s (pid %d) ended before its point (status %#x)"
                                       % (self.role, self.pid, status))
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def go(self, what: str = "go") -> None:
        os.write(self._down, (what + "\n").encode())

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.state = "killed"

    def join(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.state = "exited"
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                raise RuntimeError("%s (pid %d) did not exit" % (self.role, self.pid))
            time.sleep(0.005)

    def to_dict(self) -> dict:
        return {"role": self.role, "pid": self.pid, "state": self.state}


def payload(i: int, stride: int) -> bytes:
    return ("fleetlab slot-id %d" % i).encode().ljust(min(64, stride), b".")


# --------------------------------------------------------------------------- scenarios
class Scenario:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = args.name
        self.actors = []  # type: List[Actor]
        self.slot = None  # type: Optional[int]
        self.notes = []   # type: List[str]

    def actor(self, role: str, fn: Callable[[Signals], None]) -> Actor:
        a = Actor(role, fn)
        self.actors.append(a)
        return a

    def create(self):
        return R.create(self.name, capacity=self.args.capacity, stride=self.args.stride)

    def producer(self, commits: int, then: Optional[Callable] = None,
                 live: bool = False) -> Actor:
        """A producer that creates the block, publishes ``commits`` slots and reports
        "committed"; then runs ``then(producer, signals)`` or exits cleanly."""
        stride = self.args.stride

        def run(sig: Signals) -> None:
            blk = self.create()
            prod = R.Producer(blk)
            for i in range(commits):
                prod.publish(payload(i, stride))
            sig.reached("committed")
            if then is not None:
                then(prod, sig)
            elif live:
                while True:
                    prod.heartbeat()
                    time.sleep(1.0)
            blk.close()
        return self.actor("producer", run)

    # -- the scenarios ------------------------------------------------------------------
    def stuck_writer(self) -> None:
        half = self.args.stride // 2

        def write_half(prod, sig: Signals) -> None:
            ws = prod.acquire()
            prod.write(ws, b"\xab" * half)
            sig.reached("writing %d" % ws.index)
            hold()
        commits = min(3, self.args.capacity - 1) if self.args.capacity > 1 else 0
        p = self.producer(commits, write_half)
        p.wait_point()
        self.slot = int(p.wait_point().split()[1])
        p.kill()
        self.notes.append("producer SIGKILLed holding slot %d (WRITING, %d of %d bytes written)"
                          % (self.slot, half, self.args.stride))

    def stuck_readers(self, dead_writer: bool = False) -> None:
        def drain(prod, sig: Signals) -> None:
            sig.wait_go()
            ws = prod.acquire(timeout=5.0)   # blocks in DRAINING behind the dead reader
            sig.reached("acquired %d" % ws.index)
            hold()
        p = self.producer(self.args.capacity, drain)
        p.wait_point()
        with B.open_block(self.name) as blk:
            self.slot = blk.get("write_index") % blk.geo.capacity   # the next write's slot
        slot = self.slot

        def read(sig: Signals) -> None:
            blk = R.attach(self.name)
            cons = R.Consumer(blk, name="fleetlab-reader")
            rs = cons.acquire(index=slot)
            if rs is None:
                raise RuntimeError("slot %d is not readable" % slot)
            cons.read(rs)
            sig.reached("reading %d" % slot)
            hold()
        r = self.actor("reader", read)
        r.wait_point()
        r.kill()
        p.go()
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

    def dead_consumers(self, dead: int = 3) -> None:
        p = self.producer(self.args.capacity, live=self.args.live_producer)
        p.wait_point()
        if not self.args.live_producer:
            p.join()

        def consumer(label: str, live: bool) -> Callable[[Signals], None]:
            def run(sig: Signals) -> None:
                cons = R.Consumer(R.attach(self.name), name=label)
                rs = cons.acquire()
                if rs is not None:
                    cons.read(rs)
                    cons.release(rs)
                sig.reached("registered %d" % cons.index)
                if not live:
                    hold()
                while True:
                    cons.pulse()
                    time.sleep(1.0)
            return run
        for k in range(dead):
            a = self.actor("consumer", consumer("fleetlab-dead-%d" % k, False))
            a.wait_point()
        live = self.actor("live_consumer", consumer("fleetlab-live", True))
        live.wait_point()
        for a in self.actors:
            if a.role == "consumer":
                a.kill()
        self.notes.append("%d consumers SIGKILLed while registered; 1 live consumer" % dead)

    def corruption(self) -> None:
        p = self.producer(self.args.capacity, live=self.args.live_producer)
        p.wait_point()
        if not self.args.live_producer:
            p.join()
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
        p = self.producer(self.args.capacity + 2, live=self.args.live_producer)
        p.wait_point()
        if not self.args.live_producer:
            p.join()

        def read(sig: Signals) -> None:
            cons = R.Consumer(R.attach(self.name), name="fleetlab-reader")
            rs = cons.acquire()
            cons.read(rs)
            cons.release(rs)
            cons.unregister()
            sig.reached("read")
        c = self.actor("reader", read)
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
