"""Benchmark: how long ``datablock-admin --version`` (and ``--help``, ``COMMAND --help``,
``import pylabhub.recovery``) takes, as a ratio against ``python3 -c pass`` measured in
the same run with the same interpreter. Whole processes, interleaved, median of the
rounds. Target (issue 14): ``--version`` <= 2x ``python3 -c pass``.

    python benchmarks/bench_startup.py [--rounds 11] [--installed PATH] [--clock cpu]

By default the working tree is run as an installed copy would run: the collection under
``<tmp>/ansible_collections/pylabhub/recovery`` and ``src/`` on ``PYTHONPATH``, started
by the script pip installs as ``datablock-admin`` (``src/bin/datablock-admin``, which
imports ``sys``, then ``pylabhub.recovery.cli``), with bytecode cached (in a
private ``PYTHONPYCACHEPREFIX``, written by one untimed warm-up run, as pip compiles
at install time). ``--installed PATH`` times an installed ``datablock-admin`` instead
(its interpreter is the reference then). ``--clock cpu`` times each process's CPU (user +
system, from ``getrusage``) instead of the wall clock: on a loaded machine the wall clock
swings with the other processes' share of the cores, the CPU a process needs much less.
The row ``pip's console script`` is the floor of the console script pip would generate
from an entry point (it imports ``re`` and ``sys``): what ``datablock-admin`` was started
by before it shipped its own script.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What pip installs as bin/datablock-admin, but for the interpreter line.
LAUNCHER = REPO / "src" / "bin" / "datablock-admin"
# What pip (distlib) generates for an entry point, up to the import of the CLI: its floor.
PIP_CONSOLE_SCRIPT_FLOOR = "import re\nimport sys\n"


def _interpreter(script: str) -> str:
    with open(script, "rb") as f:
        first = f.readline().decode("utf-8", "replace").strip()
    return first[2:].strip() if first.startswith("#!") else sys.executable


def _commands(python: str, admin: list) -> dict:
    return {
        "python3 -c pass": [python, "-c", "pass"],
        "import pylabhub.recovery": [python, "-c", "import pylabhub.recovery"],
        "pip's console script": [python, "-c", PIP_CONSOLE_SCRIPT_FLOOR],
        "datablock-admin --version": admin + ["--version"],
        "datablock-admin --help": admin + ["--help"],
        "datablock-admin heal --help": admin + ["heal", "--help"],
    }


def _cpu() -> float:
    """CPU seconds (user + system) of the finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _once(argv: list, env: dict, clock=time.perf_counter) -> float:
    t0 = clock()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    took = clock() - t0
    if proc.returncode != 0:
        raise SystemExit("%s failed (exit %d): %s" % (" ".join(argv), proc.returncode,
                                                      proc.stderr.decode()[-2000:]))
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=11, help="timed rounds (median; >= 5)")
    ap.add_argument("--installed", metavar="PATH",
                    help="an installed datablock-admin to time instead of the working tree")
    ap.add_argument("--target", type=float, default=2.0)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time the wall clock (default) or each process's CPU time")
    args = ap.parse_args()
    if args.rounds < 5:
        ap.error("--rounds: at least 5")

    tmp = Path(tempfile.mkdtemp(prefix="plh-startup-"))
    try:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "PYTHONPYCACHEPREFIX")}
        if args.installed:
            python, admin = _interpreter(args.installed), [args.installed]
        else:
            ns = tmp / "collections" / "ansible_collections" / "pylabhub"
            ns.mkdir(parents=True)
            (ns / "recovery").symlink_to(REPO, target_is_directory=True)
            script = LAUNCHER
            env["PYTHONPATH"] = os.pathsep.join([str(tmp / "collections"), str(REPO / "src")])
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
            python, admin = sys.executable, [sys.executable, str(script)]
        commands = _commands(python, admin)
        for argv in commands.values():          # untimed: bytecode written, caches warm
            _once(argv, env)
        times = {name: [] for name in commands}
        clock = _cpu if args.clock == "cpu" else time.perf_counter
        for rnd in range(args.rounds):
            order = list(commands) if rnd % 2 == 0 else list(reversed(commands))
            for name in order:
                times[name].append(_once(commands[name], env, clock))
    finally:
        shutil.rmtree(str(tmp), ignore_errors=True)

    ref = statistics.median(times["python3 -c pass"])
    print("interpreter: %s; %s; median of %d rounds, interleaved; %s time"
          % (python, "installed " + args.installed if args.installed
             else "working tree as installed (bytecode cached)", args.rounds,
             "CPU" if args.clock == "cpu" else "wall-clock"))
    for name, values in times.items():
        med = statistics.median(values)
        print("%-28s %7.1f ms  %5.2fx python3 -c pass" % (name, med * 1e3, med / ref))
    ratio = statistics.median(times["datablock-admin --version"]) / ref
    print("ratio --version / python3 -c pass: %.2f (target <= %.1f: %s)"
          % (ratio, args.target, "met" if ratio <= args.target else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
