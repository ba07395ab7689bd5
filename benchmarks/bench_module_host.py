"""Benchmark: what one heal module call costs the managed host, against ``ansible.builtin.ping``.

A fleet heal's wall time over ping's is, on a real fleet, each host's own work: the module
call's CPU on the host. The lab cannot show it apart from the controller's (its hosts
share this machine's cores), so this runs the payloads ansible-playbook would send - the
AnsiballZ wrapper, built by ``module_common`` as bench_payload builds it, ZIP_DEFLATED -
as whole processes on this machine, the way a host runs them, and prints their CPU time
(user + system, from ``wait4``; children included), median of the rounds:

* ``ping``: ``ansible.builtin.ping`` (the reference);
* ``heal``: ``datablock_recover action=heal repair=true`` on the blocks of one round's
  faults, the fleet benchmark's scenarios (two per round, rotating, left by the lab's
  fault injector with real processes and SIGKILL);
* ``heal, zipimport as is``: the same payload with ``_zipload.compile_once`` replaced by
  a stub that does nothing, in the zip itself: the engine's modules compiled twice, as
  CPython's zipimport does (python/cpython#141276) - what heal cost before.

Each heal gets its own fresh faults of the same scenarios; the three commands run in a
rotating order. Needs root (the fault injector's blocks and processes).

    python benchmarks/bench_module_host.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import base64
import glob
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

import _path

_path.setup()

from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.plugins.loader import init_plugin_loader  # noqa: E402
from ansible.template import Templar  # noqa: E402

import bench_payload  # noqa: E402

SCENARIOS = ("stuck_writer", "dead_consumers", "corruption", "stuck_readers_dead_writer",
             "healthy")
FAULT_ACTOR = _path.REPO_ROOT / "lab" / "fault_actor.py"
STUB = b"def compile_once(package):\n    return False\n"


def wrapper(fqcn: str, args: dict, templar: Templar) -> bytes:
    """The AnsiballZ wrapper for ``fqcn`` with ``args``."""
    return bench_payload.payload(fqcn, templar, args)[0]


def without_compile_once(data: bytes) -> bytes:
    """``data`` with ``_zipload.py`` in its zip replaced by a stub that does nothing."""
    match = re.search(rb"zip_data='([^']*)'", data)
    old = zipfile.ZipFile(io.BytesIO(base64.b64decode(match.group(1))))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            body = old.read(info)
            if info.filename.endswith("/plugins/module_utils/_zipload.py"):
                body = STUB
            new.writestr(info, body)
    if buf.getvalue() == base64.b64decode(match.group(1)):
        raise SystemExit("no _zipload.py in the heal payload")
    return data[:match.start(1)] + base64.b64encode(buf.getvalue()) + data[match.end(1):]


def inject(collections: str, prefix: str, scenarios: tuple, work: str, kept: list) -> None:
    """Leave ``scenarios`` in blocks named ``<prefix>_<scenario>`` (untimed). A scenario
    that leaves processes alive (a live producer, a registered consumer) keeps its
    injector as their parent: its process group goes into ``kept``, ended at exit."""
    for scenario in scenarios:
        result = os.path.join(work, "%s_%s.json" % (prefix, scenario))
        log = result[:-len(".json")] + ".log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, str(FAULT_ACTOR), scenario, "--name",
                                     "%s_%s" % (prefix, scenario), "--result", result,
                                     "--collections", collections],
                                    stdout=out, stderr=out, start_new_session=True)
        kept.append(proc)
        deadline = time.monotonic() + 60
        while not os.path.exists(result):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log, "rb") as out:
                    raise SystemExit("fault injector %s failed: %s"
                                     % (scenario, out.read().decode()[-1500:]))
            time.sleep(0.01)


def end(kept: list) -> None:
    """End every injector left alive and its processes."""
    for proc in kept:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def cpu(path: str, expect: bytes) -> float:
    """CPU seconds of running the wrapper at ``path`` as a host runs it; it must exit 0
    and print ``expect``. (A dead-consumers block may stay degraded here: where this
    machine's process scan is partial the consumer count is never lowered, by design;
    the lab's hosts, each its own PID namespace, see everything.)"""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPATH", None)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, path], stdout=out, env=env, cwd="/")
        _pid, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0 or expect not in text:
        raise SystemExit("%s failed: %s" % (path, text[-1500:].decode(errors="replace")))
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--rounds", type=int, default=15)
    opts = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the fault injector's blocks and processes)")
    collections = sys.path[0]
    init_plugin_loader([collections])
    templar = Templar(loader=DataLoader())
    work = tempfile.mkdtemp(prefix="plh-bench-host-")
    os.chmod(work, 0o700)
    kept: list = []
    rows = {"ping": [], "heal": [], "heal, zipimport as is": []}
    ping = os.path.join(work, "ping.py")
    with open(ping, "wb") as f:
        f.write(wrapper("ansible.builtin.ping", {}, templar))
    try:
        for rnd in range(opts.rounds + 1):                       # round 0: warm-up
            scenarios = (SCENARIOS[rnd % len(SCENARIOS)], SCENARIOS[(rnd + 2) % len(SCENARIOS)])
            runs = {"ping": (ping, b'"ping": "pong"')}
            for key in ("heal", "heal, zipimport as is"):
                prefix = "plhbmh%d_r%d_%s" % (os.getpid(), rnd, "as_is" if "as is" in key
                                              else "heal")
                inject(collections, prefix, scenarios, work, kept)
                data = wrapper("pylabhub.recovery.datablock_recover", {
                    "all": True, "pattern": prefix + "_*", "action": "heal", "repair": True,
                    "snapshot_dir": os.path.join(work, "snap"),
                    "audit_log": os.path.join(work, "audit.jsonl")}, templar)
                if "as is" in key:
                    data = without_compile_once(data)
                path = os.path.join(work, "%s.py" % prefix)
                with open(path, "wb") as f:
                    f.write(data)
                runs[key] = (path, b'"changed": true')       # every pair holds a fault
            keys = list(rows)
            for key in keys[rnd % 3:] + keys[:rnd % 3]:
                seconds = cpu(*runs[key])
                if rnd:
                    rows[key].append(seconds)
            end(kept)
            kept.clear()
    finally:
        end(kept)
        for block in glob.glob("/dev/shm/plhbmh%d_*" % os.getpid()):
            os.unlink(block)
        subprocess.run(["rm", "-rf", work], check=False)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print("host CPU of one module call, median of %d rounds (scenarios rotating, two per "
          "heal)" % opts.rounds)
    for key, value in med.items():
        print("  %-24s %7.1f ms   %.2f x ping" % (key, value * 1e3, value / med["ping"]))
    print("  heal / heal with zipimport as is: %.2f (saves %.0f ms a call)"
          % (med["heal"] / med["heal, zipimport as is"],
             (med["heal, zipimport as is"] - med["heal"]) * 1e3))
    print(json.dumps({k: round(v * 1e3, 1) for k, v in med.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
