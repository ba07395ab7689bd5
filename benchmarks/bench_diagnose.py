"""Benchmark (issue 14): ``datablock-admin diagnose`` of a big block, as whole processes,
against ``python3 -c pass`` run in the same rounds. Prints, per row, the median wall time,
its ratio to the reference and the target, CPU seconds, peak RSS and output bytes.

    python benchmarks/bench_diagnose.py [--slots 65536] [--stride 4096] [--committed 100]
                                        [--rounds 5]

Geometry (the issue's): 65,536 slots x 4 KiB stride, slots 0..99 COMMITTED with their
checksums, slot 100 WRITING under the lock of a dead writer (the one stuck slot), a dead
producer; the rest never written (holes). ``--committed 65535`` fills the whole slot-state
table instead (every entry allocated, the bulk scan reads all 4 MiB of it). The block is
made by our runtime in /dev/shm and removed afterwards. Rows:

* ``diagnose B`` (text) and ``diagnose B --json``: target <= 3x ``python3 -c pass``;
* ``diagnose B --slot 70``: target <= 2x;
* ``diagnose R``: block B again, but its dead writer and producer have the pid of a real
  process that has exited (B's pid, 2147483647, is over PID_MAX_LIMIT: no process can have
  it, so its verdict needs no kernel evidence). R's verdicts are proven by the kernel, as
  a real crash's are (an exclusive lease on the block, after reading the mount table):
  the cost of a diagnosis after a real crash. Target as B's.

The CLI runs with its bytecode cached, as an installed tool's is (:mod:`_proc`: a private
``PYTHONPYCACHEPREFIX`` written by one untimed warm-up run of each command, whatever
``PYTHONDONTWRITEBYTECODE`` says). Ratios: of the wall-clock medians, and of the CPU
medians (user + system of each process: steadier when other processes share the cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _path  # noqa: E402
import _proc  # noqa: E402

_path.setup()

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _layout as L, _runtime as R)

DEAD_PID = 2147483647


def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def build(name: str, slots: int, stride: int, committed: int, dead_pid: int = DEAD_PID) -> int:
    """The block; returns the stuck slot's index."""
    block = R.create(name, capacity=slots, stride=stride, evidence=True)
    try:
        geo = block.geo
        states = bytearray(committed * L.SLOT_ENTRY_SIZE)
        sums = bytearray(committed * L.CHECKSUM_ENTRY_SIZE)
        noise = os.urandom(stride + 4096)
        ring = bytearray(committed * stride)
        for i in range(committed):
            shift = (i * 64) % 4096
            chunk = i.to_bytes(8, "little") + noise[shift:shift + stride - 8]
            ring[i * stride:(i + 1) * stride] = chunk
            e = i * L.SLOT_ENTRY_SIZE
            states[e + 12] = L.SlotState.COMMITTED
            states[e + 16:e + 24] = (1).to_bytes(8, "little")
            c = i * L.CHECKSUM_ENTRY_SIZE
            sums[c:c + 32] = L.blake2b256(chunk)
        block.write(geo.slot_table, bytes(states))
        block.write(geo.checksum_table, bytes(sums))
        block.write(geo.ring_offset, bytes(ring))
        stuck = committed % slots
        block.set("write_index", committed + 1)
        block.set("commit_index", committed - 1)
        block.set("total_slots_written", committed)
        base = geo.slot_entry(stuck)
        block.set(L.SLOT["write_lock"], dead_pid, base)
        block.set(L.SLOT["slot_state"], L.SlotState.WRITING, base)
        block.set("producer_heartbeat_pid", dead_pid)
        return stuck
    finally:
        block.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=65536)
    ap.add_argument("--stride", type=int, default=4096)
    ap.add_argument("--committed", type=int, default=100)
    ap.add_argument("--slot", type=int, default=70, help="the slot of the --slot row")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (median; 3-5)")
    args = ap.parse_args()
    name = "plhbench_diag_%d" % os.getpid()
    real = "plhbench_diagr_%d" % os.getpid()
    stuck = build(name, args.slots, args.stride, args.committed)
    try:
        build(real, args.slots, args.stride, args.committed, exited_pid())
        env = _proc.cli_env()
        rows = {
            "python3 -c pass": [sys.executable, "-c", "pass"],
            "diagnose B": _proc.admin("diagnose", name),
            "diagnose B --json": _proc.admin("diagnose", name, "--json"),
            "diagnose B --slot %d" % args.slot: _proc.admin(
                "diagnose", name, "--slot", str(args.slot)),
            "diagnose R": _proc.admin("diagnose", real),
        }
        got = _proc.interleaved(rows, env, args.rounds)
        ref = got["python3 -c pass"]
        targets = {"diagnose B": 3.0, "diagnose B --json": 3.0,
                   "diagnose B --slot %d" % args.slot: 2.0, "diagnose R": 3.0}
        print("diagnose: %d slots x %d B stride, %d committed, slot %d stuck (dead writer), "
              "dead producer; %d rounds interleaved, medians; %d CPUs, load average %.1f; "
              "bytecode cached (as installed)"
              % (args.slots, args.stride, args.committed, stuck, args.rounds,
                 os.cpu_count() or 0, os.getloadavg()[0]))
        print("%-26s %9s %7s %7s %9s %7s %10s %9s" % ("row", "wall", "ratio", "target", "CPU",
                                                      "ratio", "peak RSS", "output"))
        for key, r in got.items():
            print("%-26s %7.1f ms %6.2fx %7s %6.1f ms %6.2fx %6.1f MiB %7d B"
                  % (key, r.wall * 1e3, r.wall / ref.wall,
                     ("<= %.0fx" % targets[key]) if key in targets else "-", r.cpu * 1e3,
                     r.cpu / ref.cpu, r.maxrss_mib, r.out_bytes))
    finally:
        for block in (name, real):
            if os.path.exists("/dev/shm/" + block):
                os.unlink("/dev/shm/" + block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
