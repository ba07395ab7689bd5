"""Benchmark: validate of a block holding >= 1 GiB of committed slots against ``b2sum``
over the same bytes, in the same run. Prints both times (median of 3) and the ratio
validate / b2sum (target <= 1.0). ``python benchmarks/bench_validate.py [--slots N]``.

The block (default 16,384 slots x 64 KiB = 1 GiB of ring) is created by our runtime in
/dev/shm and removed afterwards; every slot holds distinct pseudo-random bytes and is
COMMITTED with its BLAKE2b-256 checksum written directly (what Producer.commit writes).
``b2sum`` hashes the block file itself (ring + 1.6 MiB of header/tables), so it reads a
few more bytes than validate: the comparison slightly favours validate's opponent.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _path  # noqa: E402

_path.setup()

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _engine as E, _layout as L, _runtime as R)


def build(name: str, slots: int, stride: int) -> int:
    block = R.create(name, capacity=slots, stride=stride, evidence=True)
    try:
        geo = block.geo
        noise = os.urandom(stride + 4096)
        states = bytearray(geo.capacity * L.SLOT_ENTRY_SIZE)
        sums = bytearray(geo.capacity * L.CHECKSUM_ENTRY_SIZE)
        for i in range(slots):
            shift = (i * 64) % 4096           # a different window of the noise per slot
            chunk = i.to_bytes(8, "little") + noise[shift:shift + stride - 8]
            block.write(geo.slot_data(i), chunk)
            e = i * L.SLOT_ENTRY_SIZE
            states[e + 12] = L.SlotState.COMMITTED
            states[e + 16:e + 24] = (1).to_bytes(8, "little")
            c = i * L.CHECKSUM_ENTRY_SIZE
            sums[c:c + 32] = L.blake2b256(chunk)
        block.write(geo.slot_table, bytes(states))
        block.write(geo.checksum_table, bytes(sums))
        block.set("write_index", slots)
        block.set("commit_index", slots - 1)
        return block.size
    finally:
        block.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=16384)
    ap.add_argument("--stride", type=int, default=64 * 1024)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    b2sum = shutil.which("b2sum")
    if not b2sum:
        print("b2sum not found (coreutils): cannot compare", file=sys.stderr)
        return 2
    name = "plhbench_val_%d" % os.getpid()
    path = "/dev/shm/" + name
    t0 = time.perf_counter()
    size = build(name, args.slots, args.stride)
    print("built %s: %d slots x %d B = %.2f GiB of committed ring (%.1f s)"
          % (path, args.slots, args.stride, args.slots * args.stride / 2**30,
             time.perf_counter() - t0))
    try:
        tv, tb, cv, cb = [], [], [], []
        for dummy in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            result = E.validate(name)
            tv.append(time.perf_counter() - t0)
            cv.append(time.process_time() - c0)        # all threads of this process
            assert result["ok"] and not result["findings"], result["findings"][:3]
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([b2sum, path], check=True, stdout=subprocess.DEVNULL)
            tb.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cb.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        v, b = statistics.median(tv), statistics.median(tb)
        gib = args.slots * args.stride / 2**30
        print("validate: runs %s" % ", ".join("%.3f s" % t for t in tv))
        print("b2sum:    runs %s  (%.2f GiB file)" % (", ".join("%.3f s" % t for t in tb),
                                                      size / 2**30))
        print("validate median %.3f s (%.2f GiB/s), b2sum median %.3f s (%.2f GiB/s)"
              % (v, gib / v, b, size / 2**30 / b))
        print("ratio validate/b2sum = %.2f wall (target <= 1.0; %d CPUs, load average %.1f); "
              "CPU seconds: validate %.3f, b2sum %.3f (ratio %.2f)"
              % (v / b, os.cpu_count(), os.getloadavg()[0], statistics.median(cv),
                 statistics.median(cb), statistics.median(cv) / statistics.median(cb)))
    finally:
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
