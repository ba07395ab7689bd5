"""Benchmark (issue 14): ``datablock-admin validate`` of 256 MiB of committed slots against
``b2sum`` of the same bytes, whole processes in the same rounds. Prints the median wall
and CPU seconds of each, the ratios (targets: wall <= 0.6, CPU <= 1.0) and peak RSS, and
the same for the floor (:data:`FLOOR`: a Python process that only reads and hashes those
bytes as the hasher does, with as many threads), which tells what is the engine's and
what is the machine's and the standard library's.

    python benchmarks/bench_validate.py [--slots 4096] [--stride 65536] [--rounds 5]

Geometries: 4,096 slots x 64 KiB and (``--slots 65536 --stride 4096``) 65,536 slots x
4 KiB, both 256 MiB of ring, every slot COMMITTED with distinct pseudo-random bytes and its
BLAKE2b-256 checksum (what Producer.commit writes). The block is made by our runtime in
/dev/shm; ``b2sum`` hashes a second /dev/shm file holding exactly the ring's bytes (the
same bytes validate hashes; validate additionally reads the slot-state and checksum
tables). Both are removed afterwards. CPU seconds are the child's own (``wait4``): for
validate every thread's, for b2sum its one thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _path  # noqa: E402
import _proc  # noqa: E402

_path.setup()

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _hashing as H, _layout as L)
from ansible_collections.pylabhub.recovery.tests.support import committed_block  # noqa: E402

#: The floor: the least a Python process does to check the same slots - read the ring in
#: the hasher's windows with the hasher's threads and hash each slot with the standard
#: library's BLAKE2b - without the engine (no header, tables, verdicts or start-up
#: imports). ``python -c FLOOR RING STRIDE THREADS WINDOW BATCH`` (the hasher's
#: HASH_WINDOW and BATCH_BYTES); prints the number of slots hashed.
FLOOR = r"""
import os, sys, threading
from _blake2 import blake2b
fd = os.open(sys.argv[1], os.O_RDONLY)
stride, threads, window, batch = [int(a) for a in sys.argv[2:6]]
slots = os.fstat(fd).st_size // stride
per, lock, state, done = max(1, batch // stride), threading.Lock(), [0], []
def work():
    buf = memoryview(bytearray(max(window, 1)))
    while True:
        with lock:
            first = state[0]
            state[0] += per
        if first >= slots:
            return
        n, out = min(per, slots - first), []
        if stride <= window:
            k = window // stride
            for a in range(0, n, k):
                m = min(k, n - a)
                view = buf[:m * stride]
                os.preadv(fd, [view], (first + a) * stride)
                out += [blake2b(view[j * stride:(j + 1) * stride], digest_size=32).digest()
                        for j in range(m)]
        else:
            for j in range(n):
                h, pos = blake2b(digest_size=32), (first + j) * stride
                for off in range(0, stride, window):
                    view = buf[:min(window, stride - off)]
                    os.preadv(fd, [view], pos + off)
                    h.update(view)
                out.append(h.digest())
        done.append(len(out))
helpers = [threading.Thread(target=work) for i in range(threads - 1)]
for t in helpers:
    t.start()
work()
for t in helpers:
    t.join()
print(sum(done))
"""


def build(name: str, slots: int, stride: int) -> None:
    noise = os.urandom(stride + 4096)
    # a different window of the noise per slot, led by the slot's number
    committed_block(name, slots, stride, lambda i: i.to_bytes(8, "little") + noise[
        (i * 64) % 4096:(i * 64) % 4096 + stride - 8], evidence=True)


def ring_copy(src: str, dst: str, offset: int, size: int) -> None:
    """The ring's bytes alone, for b2sum."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        f.seek(offset)
        while size:
            chunk = f.read(min(size, 8 << 20))
            g.write(chunk)
            size -= len(chunk)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=4096)
    ap.add_argument("--stride", type=int, default=64 * 1024)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (median; 3-5)")
    args = ap.parse_args()
    b2sum = shutil.which("b2sum")
    if not b2sum:
        print("b2sum not found (coreutils): cannot compare", file=sys.stderr)
        return 2
    name = "plhbench_val_%d" % os.getpid()
    path, ring = "/dev/shm/" + name, "/dev/shm/%s_ring" % name
    build(name, args.slots, args.stride)
    geo = L.Geometry(args.slots, args.stride, 0)
    ring_copy(path, ring, geo.ring_offset, args.slots * args.stride)
    env = _proc.cli_env()
    try:
        threads = H.workers_for(len(H.batches([(0, args.slots)], args.stride)), args.stride)
        rows = {"b2sum": [b2sum, ring],
                "floor": [sys.executable, "-c", FLOOR, ring] + [str(n) for n in (
                    args.stride, threads, H.HASH_WINDOW, H.BATCH_BYTES)],
                "validate": _proc.admin("validate", name, "--max-bytes", "1G")}
        got = _proc.interleaved(rows, env, args.rounds, ok=(0,))
        v, b, f = got["validate"], got["b2sum"], got["floor"]
        mib = args.slots * args.stride / float(1 << 20)
        print("validate: %d slots x %d B = %.0f MiB committed; b2sum of the same %.0f MiB; "
              "%d rounds interleaved, medians; %d CPUs, load average %.1f"
              % (args.slots, args.stride, mib, mib, args.rounds, os.cpu_count() or 0,
                 os.getloadavg()[0]))
        print("%-10s %9s %9s %10s %10s" % ("row", "wall", "CPU", "peak RSS", "MiB/s"))
        for key, r in (("b2sum", b), ("floor", f), ("validate", v)):
            print("%-10s %6.0f ms %6.0f ms %6.1f MiB %10.0f"
                  % (key, r.wall * 1e3, r.cpu * 1e3, r.maxrss_mib, mib / r.wall))
        print("ratio validate/b2sum: wall %.2f (target <= 0.6), CPU %.2f (target <= 1.0)"
              % (v.wall / b.wall, v.cpu / b.cpu))
        print("floor (%d thread%s: read and hash alone, no engine)/b2sum: wall %.2f, CPU %.2f; "
              "validate/floor: wall %.2f, CPU %.2f"
              % (threads, "" if threads == 1 else "s", f.wall / b.wall, f.cpu / b.cpu,
                 v.wall / f.wall, v.cpu / f.cpu))
    finally:
        os.unlink(path)
        os.unlink(ring)
    return 0


if __name__ == "__main__":
    sys.exit(main())
