"""Benchmark: what a before-image costs. ``heal`` of a block whose writer was SIGKILLed
mid-write (the slot is scrubbed: its written pages go into the journal) with the
before-image on, against the same heal with it off (``snapshot=False``), in the same run,
on byte-exact copies of one crash state. Prints both times (median of N) and the ratio
with / without, and the journal's size. ``python benchmarks/bench_snapshot.py
[--stride BYTES] [--runs N]``.

The journal fsyncs one line before every store, so the cost is about one fsync per store
on the snapshot directory's filesystem (``--snapshot-dir``, default a temporary directory
on /var/tmp: a disk, as /var/lib is in production).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _path  # noqa: E402

_path.setup()

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _engine as E, _runtime as R)

SHM = "/dev/shm"


def crash_state(name: str, stride: int) -> None:
    """A block whose producer committed 3 slots, then died holding slot 3's write lock
    with half of it written."""
    block = R.create(name, capacity=4, stride=stride)
    producer = R.Producer(block)
    for i in range(3):
        producer.publish(os.urandom(stride))
    block.close()
    pid = os.fork()
    if pid == 0:
        b = R.attach(name)
        p = R.Producer(b)
        ws = p.acquire()
        p.write(ws, os.urandom(stride // 2))
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=64 * 1024)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--snapshot-dir", default=None)
    args = ap.parse_args()
    base = "plh_bench_snap_%d" % os.getpid()
    work = args.snapshot_dir or tempfile.mkdtemp(prefix="plh-bench-snap-", dir="/var/tmp")
    os.environ["PYLABHUB_RECOVERY_AUDIT_LOG"] = os.path.join(work, "audit.jsonl")
    os.environ["PYLABHUB_RECOVERY_SYSLOG"] = "off"
    crash_state(base, args.stride)
    times = {True: [], False: []}
    journal = 0
    try:
        for run in range(args.runs):
            for snap in (True, False):
                name = "%s_%d_%d" % (base, run, int(snap))
                shutil.copyfile(os.path.join(SHM, base), os.path.join(SHM, name))
                try:
                    t = time.perf_counter()
                    result = E.heal(name, snapshot=snap, snapshot_dir=work)
                    times[snap].append(time.perf_counter() - t)
                    assert result["changed"] and result["healthy"], result
                    if snap:
                        journal = os.path.getsize(result["snapshot"]["path"])
                        stores = len(result["changes"])
                finally:
                    os.unlink(os.path.join(SHM, name))
    finally:
        os.unlink(os.path.join(SHM, base))
        if not args.snapshot_dir:
            shutil.rmtree(work, ignore_errors=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print("heal of a mid-write crash, stride %d B, %d stores (median of %d):"
          % (args.stride, stores, args.runs))
    print("  with before-image    %8.2f ms  (journal %d bytes)" % (on * 1e3, journal))
    print("  without              %8.2f ms" % (off * 1e3))
    print("  ratio with/without   %8.2f" % (on / off))
    return 0


if __name__ == "__main__":
    sys.exit(main())
