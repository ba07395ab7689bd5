"""Benchmark: ``ansible-playbook pylabhub.recovery.heal`` on a fleet lab against
``ansible all -m ansible.builtin.ping`` on the same hosts, same forks, same run. Prints
both times (median of the rounds), their ratio and the difference per host; the targets
(issue 14) are <= 1.2 at 16 hosts and <= 1.1 at 64 hosts with forks 16, i.e. heal costs
one module round trip per host, not one per block, slot or step. It also prints the
controller's CPU time (the ansible process and every process it waited for: workers,
ssh clients), median per command and per host: the per-host controller cost, which on
the lab is the part of the wall time that is not the "hosts'" own work (the lab's hosts
share this machine's cores with the controller, a real fleet's do not).

    python benchmarks/bench_fleet.py [--hosts 16] [--rounds 3] [--forks N] [-e VAR=VALUE]
                                     [--strategy free] [--no-pipelining]

Needs root, util-linux and openssh-server (see lab/README.md). Every round first leaves
fresh faults on every host with the lab's fault injector (two scenarios per host, new
block names each round: stuck writers, readers stuck behind a waiting writer, dead
consumers, corruption, healthy blocks; untimed), then times ping and heal, alternating
which runs first. heal runs with the summary callback on, as documented, and with
``datablock_recovery_allow_repair=true`` so that every block ends healthy (a heal that
leaves anything unhealthy fails the benchmark). ssh control masters are opened by an
untimed ping before the first round, so neither side pays for connection setup.

It also prints the **hosts' CPU time** per command: every host's sshd and everything
under it (sessions, the module's Python), read from /proc before and after, each
process's own time plus what it reaped (a process gone since is in its reaper's). That
is the work a real fleet's hosts do on their own cores, and the lab's on this machine's.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lab"))
import fleetlab  # noqa: E402

BIN = Path(sys.executable).parent
SCENARIOS = ("stuck_writer", "stuck_readers", "dead_consumers", "corruption",
             "stuck_readers_dead_writer", "healthy")


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def inject_round(lab_dir: Path, hosts: list, rnd: int) -> int:
    """Two scenarios on every host (rotating), block names unique to the round."""
    jobs = []
    for i, host in enumerate(hosts):
        for k in (0, 3):
            scenario = SCENARIOS[(i + k) % len(SCENARIOS)]
            jobs.append((host, scenario, "r%d_%s" % (rnd, scenario)))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda j: fleetlab.inject(lab_dir, j[0], j[1], j[2]), jobs))
    return len(jobs)


def hosts_cpu(lab_dir: Path) -> float:
    """CPU seconds used so far by the hosts' sshd (every host's PID 2) and everything
    under it: each process's user + system time plus its reaped children's. The
    difference of two readings is the hosts' work for the commands in between: a process
    that exited meanwhile moved its whole time into its reaper's (sshd sessions, sshd).
    The processes the fault injector left running (a producer waiting, consumers
    heartbeating) are not under sshd and are not counted."""
    state = fleetlab.Lab(lab_dir).load()
    inits = {h["init_pid"] for h in state["hosts"] if h.get("init_pid")}
    spaces = set()
    for pid in inits:
        try:
            spaces.add(os.readlink("/proc/%d/ns/pid" % pid))
        except OSError:
            continue
    parent, used = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/ns/pid" % entry) not in spaces:
                continue
            with open("/proc/%s/stat" % entry) as f:
                name, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        pid = int(entry)
        parent[pid] = int(fields[1])
        used[pid] = (sum(int(v) for v in fields[11:15]), name.endswith("(sshd"))
    ticks = 0
    for pid, (spent, sshd) in used.items():
        top = pid
        while top in parent and parent[top] not in inits:
            top = parent[top]
        if top in used and used[top][1]:             # under (or is) a host's sshd
            ticks += spent
    return ticks / os.sysconf("SC_CLK_TCK")


def timed(argv: list, env: dict, lab_dir: Path) -> tuple:
    """(wall seconds, controller CPU seconds, hosts' CPU seconds, the finished process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    hosts_before = hosts_cpu(lab_dir)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, hosts_cpu(lab_dir) - hosts_before, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--forks", type=int, default=None,
                    help="ansible forks for both commands (default: the lab's, min(hosts, 16))")
    ap.add_argument("-e", "--extra-vars", action="append", default=[],
                    help="extra variables for the heal playbook (repeatable)")
    ap.add_argument("--strategy", default=None,
                    help="ANSIBLE_STRATEGY for both commands (e.g. free; default: linear)")
    ap.add_argument("--no-pipelining", action="store_true",
                    help="ANSIBLE_PIPELINING=False for both (the lab's ansible.cfg enables it)")
    ap.add_argument("--target", type=float, default=None,
                    help="ratio to meet (default: 1.2 up to 16 hosts, else 1.1)")
    args = ap.parse_args()
    forks = args.forks or min(args.hosts, fleetlab.MAX_FORKS)
    target = args.target or (1.2 if args.hosts <= 16 else 1.1)

    lab_dir = Path(tempfile.mkdtemp(prefix="plh-bench-", dir="/tmp"))
    env = dict(os.environ, ANSIBLE_CONFIG=str(lab_dir / "ansible.cfg"),
               ANSIBLE_CALLBACKS_ENABLED="pylabhub.recovery.fleet_summary",
               ANSIBLE_DEPRECATION_WARNINGS="False", ANSIBLE_NOCOLOR="1")
    if args.strategy:
        env["ANSIBLE_STRATEGY"] = args.strategy
    if args.no_pipelining:
        env["ANSIBLE_PIPELINING"] = "False"
    ping = [_tool("ansible"), "all", "-m", "ansible.builtin.ping", "--forks", str(forks)]
    heal = [_tool("ansible-playbook"), "pylabhub.recovery.heal", "--forks", str(forks),
            "-e", "datablock_recovery_allow_repair=true"]
    for extra in args.extra_vars:
        heal += ["-e", extra]
    times = {"ping": [], "heal": []}
    cpus = {"ping": [], "heal": []}
    on_hosts = {"ping": [], "heal": []}
    try:
        t0 = time.perf_counter()
        fleetlab.up(lab_dir, args.hosts, 0)      # 0: free ports, retried if one is taken
        hosts = [fleetlab.host_name(i) for i in range(1, args.hosts + 1)]
        print("fleet lab: %d hosts up in %.2f s; forks %d; strategy %s; pipelining %s; heal %s"
              % (args.hosts, time.perf_counter() - t0, forks, args.strategy or "linear",
                 "off" if args.no_pipelining else "on", " ".join(heal[1:])))
        warm = subprocess.run(ping, env=env, capture_output=True, text=True, check=False)
        if warm.returncode != 0:
            print(warm.stdout + warm.stderr)
            return 1
        for rnd in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            n = inject_round(lab_dir, hosts, rnd)
            print("round %d: %d faults injected in %.1f s (untimed)"
                  % (rnd, n, time.perf_counter() - t0))
            order = ("ping", "heal") if rnd % 2 else ("heal", "ping")
            for what in order:
                seconds, cpu, host_cpu, proc = timed(ping if what == "ping" else heal, env,
                                                     lab_dir)
                if proc.returncode != 0:
                    print("%s failed (exit %d):\n%s%s"
                          % (what, proc.returncode, proc.stdout[-4000:], proc.stderr[-2000:]))
                    return 1
                if what == "heal" and "PYLABHUB FLEET SUMMARY" not in proc.stdout:
                    print("heal printed no fleet summary:\n" + proc.stdout[-3000:])
                    return 1
                times[what].append(seconds)
                cpus[what].append(cpu)
                on_hosts[what].append(host_cpu)
                print("  %-4s %6.2f s  (controller CPU %.2f s, hosts' CPU %.2f s)"
                      % (what, seconds, cpu, host_cpu))
    finally:
        if (lab_dir / fleetlab.STATE_FILE).exists():
            fleetlab.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)

    p, h = statistics.median(times["ping"]), statistics.median(times["heal"])
    ratio = h / p
    print("ansible all -m ansible.builtin.ping : %.2f s (median of %d)" % (p, len(times["ping"])))
    print("ansible-playbook pylabhub.recovery.heal: %.2f s (median of %d)" % (h, len(times["heal"])))
    pc, hc = statistics.median(cpus["ping"]), statistics.median(cpus["heal"])
    print("controller CPU: ping %.2f s (%.0f ms per host), heal %.2f s (%.0f ms per host), "
          "ratio %.2f" % (pc, pc * 1e3 / args.hosts, hc, hc * 1e3 / args.hosts, hc / pc))
    po, ho = statistics.median(on_hosts["ping"]), statistics.median(on_hosts["heal"])
    print("hosts' CPU: ping %.2f s (%.0f ms per host), heal %.2f s (%.0f ms per host)"
          % (po, po * 1e3 / args.hosts, ho, ho * 1e3 / args.hosts))
    print("heal - ping: %.0f ms per host" % ((h - p) * 1e3 / args.hosts))
    print("ratio heal/ping: %.2f (target <= %.1f: %s)"
          % (ratio, target, "met" if ratio <= target else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
