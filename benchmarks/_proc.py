"""Run whole processes and measure them: wall seconds, CPU seconds (user + system of
that child alone, from ``wait4``), peak resident memory and bytes written to stdout.

Peak memory is the child's own ``VmHWM`` (``/proc/self/status``, written at exit by a
hook prepended to a Python ``-c`` program, in an extra untimed run): ``wait4``'s
``ru_maxrss`` also counts the parent's pages the child had before ``exec`` (the
benchmark's own ~25 MiB), which hides what the command itself needs.

The CLI is run from the working tree as an installed copy runs: the collection under
``<tmp>/ansible_collections/pylabhub/recovery`` (:mod:`_path`) and ``src/`` on
``PYTHONPATH``, the script pip installs (``src/bin/datablock-admin``) as ``-c``, bytecode
cached in a private ``PYTHONPYCACHEPREFIX`` (written by an untimed warm-up run, as pip
compiles at install).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, NamedTuple, Sequence

import _path

ADMIN = (_path.REPO_ROOT / "src" / "bin" / "datablock-admin").read_text()
_HWM = ("import atexit, os\n"
        "def _plh_hwm():\n"
        "    with open('/proc/self/status') as f:\n"
        "        kib = [l.split()[1] for l in f if l.startswith('VmHWM:')][0]\n"
        "    with open(os.environ['PLH_BENCH_HWM'], 'w') as f:\n"
        "        f.write(kib)\n"
        "atexit.register(_plh_hwm)\n")


class Run(NamedTuple):
    wall: float
    cpu: float
    maxrss_mib: float             # from interleaved(): the command's own peak (VmHWM)
    out_bytes: int
    rc: int


def cli_env() -> Dict[str, str]:
    """The environment in which ``python -c ADMIN`` is the working tree's CLI."""
    _path.setup()
    tree = [p for p in sys.path if os.path.isdir(os.path.join(p, "ansible_collections"))][0]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([tree, str(_path.REPO_ROOT / "src")])
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="plh-bench-pyc-")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def admin(*args: str) -> List[str]:
    return [sys.executable, "-c", ADMIN] + list(args)


def run(argv: Sequence[str], env: Dict[str, str], ok=(0,)) -> Run:
    """One whole process, measured by itself (``wait4`` gives this child's rusage)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        size = out.seek(0, os.SEEK_END)
        if proc.returncode not in ok:
            err.seek(0)
            raise SystemExit("%s: exit %d: %s" % (" ".join(argv[-4:]), proc.returncode,
                                                  err.read().decode()[-2000:]))
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, size,
               proc.returncode)


def peak_rss_mib(argv: Sequence[str], env: Dict[str, str], ok=(0, 1)) -> float:
    """The peak RSS of a ``python -c CODE ...`` command, from its own ``VmHWM`` (NaN for
    any other command)."""
    argv = list(argv)
    if argv[0] != sys.executable or argv[1] != "-c":
        return float("nan")
    fd, where = tempfile.mkstemp(prefix="plh-bench-hwm-")
    os.close(fd)
    try:
        run(argv[:2] + [_HWM + argv[2]] + argv[3:], dict(env, PLH_BENCH_HWM=where), ok)
        with open(where) as f:
            return int(f.read()) / 1024.0
    finally:
        os.unlink(where)


def medians(rows: Dict[str, List[Run]]) -> Dict[str, Run]:
    return {k: Run(*(statistics.median(getattr(r, f) for r in v) for f in Run._fields))
            for k, v in rows.items()}


def interleaved(commands: Dict[str, List[str]], env: Dict[str, str], rounds: int,
                ok=(0, 1)) -> Dict[str, Run]:
    """Every command once per round, rounds interleaved (the host's load drifts), after
    one untimed warm-up of each; medians per command."""
    for argv in commands.values():
        run(argv, env, ok)
    rows: Dict[str, List[Run]] = {k: [] for k in commands}
    for dummy in range(rounds):
        for key, argv in commands.items():
            rows[key].append(run(argv, env, ok))
    out = medians(rows)
    return {k: r._replace(maxrss_mib=peak_rss_mib(commands[k], env, ok)) for k, r in out.items()}
