"""Benchmark: what the kernel scan costs ``heal --all`` on a busy host (issue 10).

The host: ``--processes`` (default 2,000) processes -- cheap sleepers (``sleep``), plus
``--mappers`` (default 100: one per block) forked children that each attach a block,
register a consumer and wait (live holders: the scan finds them mapping the block, and no
block is left to the exclusive-lease shortcut, which proves a block's dead holders
without any scan when nobody has it open) -- and ``--blocks``
(default 100) blocks in /dev/shm, every one with a dead consumer and every other one with
a dead writer in a slot (forked children that took them and exited without a word): the
holders whose absence only a scan proves. Then ``heal --all`` as a **dry run** (a real
heal would release the dead holders on the first run and leave nothing to judge after),
through the engine's front door (``each_block("heal", pattern, dry_run=True)``, what the
CLI's ``heal --all --dry-run`` calls), timed with the kernel scan and without it
(``_kernel.set_scan_enabled(False)``: the benchmark hook, never a user setting; every
verdict then falls back to the per-pid rules), interleaved, median of ``--rounds``.
Memory: the peak of Python allocations during one run of each (tracemalloc, a separate
untimed run). Prints the ratio with/without; target <= 2x.

    python benchmarks/scan_cost.py [--processes 2000] [--blocks 100] [--rounds 5]

Needs root for a complete scan (otherwise the scope is partial and the figure says so).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _path  # noqa: E402

_path.setup()

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _engine as E, _kernel as K, _runtime as R)

SHM = "/dev/shm"


def _child(work) -> int:
    """Fork a child that runs ``work()`` and then either exits (dead holder left
    behind, no unregister) or waits for a signal (live holder)."""
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    return pid


def build(prefix: str, blocks: int, processes: int, mappers: int):
    names = ["%s%03d" % (prefix, i) for i in range(blocks)]
    for name in names:
        R.create(name, capacity=4, stride=4096).close()
        b = R.attach(name)
        p = R.Producer(b)
        for dummy in range(2):
            p.publish(b"x" * 64)
        b.close()
    dead = []

    def dead_consumer(name):
        R.Consumer(R.attach(name), name="gone")

    def dead_writer(name):
        R.Producer(R.attach(name)).acquire()

    for i, name in enumerate(names):
        dead.append(_child(lambda n=name: dead_consumer(n)))
        if i % 2 == 0:
            dead.append(_child(lambda n=name: dead_writer(n)))
    for pid in dead:
        os.waitpid(pid, 0)

    ready_r, ready_w = os.pipe()

    def live_consumer(name):
        consumer = R.Consumer(R.attach(name), name="live")   # keeps the block mapped
        os.write(ready_w, b".")
        signal.pause()
        del consumer

    live = [_child(lambda n=names[i % blocks]: live_consumer(n)) for i in range(mappers)]
    os.close(ready_w)
    got = 0
    while got < mappers:            # every live holder registered before anything runs
        chunk = os.read(ready_r, mappers)
        if not chunk:
            raise SystemExit("scan cost: a live holder died before registering")
        got += len(chunk)
    os.close(ready_r)
    sleepers = [subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
                for dummy in range(max(0, processes - mappers))]
    return names, live, sleepers


def heal_all(pattern: str) -> dict:
    return E.each_block("heal", pattern, dry_run=True)


SPENT = [0.0]


def _clocked(fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[0] += time.perf_counter() - t
    return wrapper


SLEPT = [0.0]


def clock_the_scan() -> None:
    """Time the kernel's work inside a run (the walk, the per-holder /proc reads, the
    lease probe): module globals that Scans calls, wrapped here only. And the settle
    pauses (time.sleep: cleanup and validate look again before acting on what may be a
    consumer mid-registration), which only the planned actions cost."""
    K.HostScan._walk = _clocked(K.HostScan._walk)
    K.direct_holder = _clocked(K.direct_holder)
    K.exclusive = _clocked(K.exclusive)
    sleep = time.sleep

    def counted_sleep(seconds):
        t = time.perf_counter()
        try:
            sleep(seconds)
        finally:
            SLEPT[0] += time.perf_counter() - t
    time.sleep = counted_sleep


def timed(pattern: str, enabled: bool, blocks: int, spent: list = None,
          slept: list = None) -> float:
    K.set_scan_enabled(enabled)
    SPENT[0] = SLEPT[0] = 0.0
    try:
        t = time.perf_counter()
        out = heal_all(pattern)
        elapsed = time.perf_counter() - t
        if spent is not None:
            spent.append(SPENT[0])
        if slept is not None:
            slept.append(SLEPT[0])
    finally:
        K.set_scan_enabled(True)
    if len(out["blocks"]) != blocks or not all(b["result"] for b in out["blocks"]):
        raise SystemExit("scan cost: heal --all did not plan every block")
    return elapsed


def peak(pattern: str, enabled: bool) -> int:
    K.set_scan_enabled(enabled)
    tracemalloc.start()
    try:
        heal_all(pattern)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        K.set_scan_enabled(True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--processes", type=int, default=2000)
    ap.add_argument("--blocks", type=int, default=100)
    ap.add_argument("--mappers", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    prefix = "plhscan_%d_" % os.getpid()
    pattern = prefix + "*"
    names, live, sleepers = build(prefix, args.blocks, args.processes, args.mappers)
    clock_the_scan()
    try:
        procs = sum(1 for p in os.listdir("/proc") if p.isdigit())
        first = heal_all(pattern)
        dead = sum(len(b["result"]["cleanup"]["outcomes"]) + len(b["result"]["outcomes"])
                   for b in first["blocks"] if b["result"])
        scopes = set()
        for b in first["blocks"]:
            for c in E.diagnose(b["address"])["consumers"]:
                v = c["verdict"]
                scopes.add("%s:%s" % (v["state"], (v.get("scope") or {}).get("name")))
        timed(pattern, True, len(names))               # warm-up (imports, page cache), untimed
        timed(pattern, False, len(names))
        with_scan, without, kernel, slept_on, slept_off = [], [], [], [], []
        for dummy in range(args.rounds):
            with_scan.append(timed(pattern, True, len(names), kernel, slept_on))
            without.append(timed(pattern, False, len(names), None, slept_off))
        a, b = statistics.median(with_scan), statistics.median(without)
        k = statistics.median(kernel)
        za, zb = statistics.median(slept_on), statistics.median(slept_off)
        K.set_scan_enabled(False)
        try:
            planned_off = sum(len(b["result"]["cleanup"]["outcomes"])
                              + len(b["result"]["outcomes"])
                              for b in heal_all(pattern)["blocks"] if b["result"])
        finally:
            K.set_scan_enabled(True)
        pa, pb = peak(pattern, True), peak(pattern, False)
        print("scan cost: %d processes on the host, %d blocks, %d live mapping children; "
              "heal --all --dry-run plans %d actions (dead holders); consumer verdicts:scope %s"
              % (procs, len(names), len(live), dead, ", ".join(sorted(scopes))))
        print("scan cost: kernel work inside the run with the scan (walk, per-holder /proc "
              "reads, lease probes) %.3f s of %.3f s: the run over the run less it %.2fx "
              "(target <= 2x)" % (k, a, a / (a - k)))
        print("scan cost: end to end, with the kernel scan %.3f s, switched off %.3f s "
              "(median of %d): %.2fx -- but switched off, %d of %d planned actions are not "
              "planned (a dead holder in a block a live process maps is 'unknown' without "
              "the scan), so that run skips their work" % (a, b, args.rounds, a / b,
                                                           dead - planned_off, dead))
        print("scan cost: of those, settle pauses (sleeping before acting on a consumer "
              "table, per planned cleanup) %.3f s with the scan, %.3f s without; the runs "
              "less their pauses: %.3f s / %.3f s = %.2fx"
              % (za, zb, a - za, b - zb, (a - za) / (b - zb)))
        print("scan cost: peak Python allocations %.1f MiB with the scan, %.1f MiB without: "
              "ratio %.2fx" % (pa / 2**20, pb / 2**20, pa / pb))
    finally:
        for pid in live:
            os.kill(pid, signal.SIGKILL)
        for pid in live:
            os.waitpid(pid, 0)
        for p in sleepers:
            p.kill()
        for p in sleepers:
            p.wait()
        for name in names:
            try:
                os.unlink(os.path.join(SHM, name))
            except FileNotFoundError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
