"""Benchmark: diagnose of a 65,536-slot block (stride 64). Prints seconds and slots/s
(median of 3). Run from anywhere: ``python benchmarks/bench_diagnose.py [--slots N]``.

The block is created by our runtime in /dev/shm (removed afterwards); every slot is
committed once (state COMMITTED, generation 1, checksum written directly) so diagnose
looks at realistic slots, and one slot holds a dead writer's lock so there is one finding.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _path  # noqa: E402

_path.setup()

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _engine as E, _layout as L, _runtime as R)


def build(name: str, slots: int, stride: int) -> None:
    block = R.create(name, capacity=slots, stride=stride, evidence=True)
    try:
        geo = block.geo
        data = bytes(range(256)) * (stride // 256 + 1)
        states = bytearray(geo.capacity * L.SLOT_ENTRY_SIZE)
        sums = bytearray(geo.capacity * L.CHECKSUM_ENTRY_SIZE)
        ring = bytearray(geo.capacity * stride)
        for i in range(slots):
            chunk = (i.to_bytes(8, "little") + data)[:stride]
            ring[i * stride:(i + 1) * stride] = chunk
            e = i * L.SLOT_ENTRY_SIZE
            states[e + 12] = L.SlotState.COMMITTED
            states[e + 16:e + 24] = (1).to_bytes(8, "little")
            c = i * L.CHECKSUM_ENTRY_SIZE
            sums[c:c + 32] = L.blake2b256(chunk)
        block.write(geo.slot_table, bytes(states))
        block.write(geo.checksum_table, bytes(sums))
        block.write(geo.ring_offset, bytes(ring))
        block.set("write_index", slots)
        block.set("commit_index", slots - 1)
        # one dead writer's lock on the last slot, and a dead producer
        block.set(L.SLOT["write_lock"], 2147483647, geo.slot_entry(slots - 1))
        block.set("producer_heartbeat_pid", 2147483647)
    finally:
        block.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=65536)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    name = "plhbench_diag_%d" % os.getpid()
    build(name, args.slots, args.stride)
    try:
        times, cpu = [], []
        for dummy in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            result = E.diagnose(name)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        assert len(result["slots"]) == args.slots
        assert result["stuck_slots"] == [args.slots - 1], result["stuck_slots"][:5]
        med = statistics.median(times)
        print("diagnose: %d slots x %d B, runs %s" % (
            args.slots, args.stride, ", ".join("%.3f s" % t for t in times)))
        print("diagnose median: %.3f s  (%.0f slots/s); CPU median %.3f s (%.0f slots/s); "
              "load average %.1f" % (med, args.slots / med, statistics.median(cpu),
                                     args.slots / statistics.median(cpu), os.getloadavg()[0]))
    finally:
        os.unlink("/dev/shm/" + name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
