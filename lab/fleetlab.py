#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleetlab: N isolated "hosts" on this machine, reachable over real ssh, for fleet tests.

Each host is a set of Linux namespaces (mount, IPC, PID, UTS) created by ``unshare``:
PID 1 inside is this file's ``_init`` (sets the hostname, mounts a private tmpfs on
/dev/shm and on /run, binds its own before-image and audit directories, starts ``sshd
-D`` on 127.0.0.1:<port>, reaps orphans and takes the whole namespace down when it
exits). The network namespace is shared, so every
host's sshd is reachable from here on its own loopback port, and so is ansible.

    python lab/fleetlab.py up --hosts 4 --dir /tmp/lab [--base-port 22200]
    python lab/fleetlab.py status --dir /tmp/lab
    python lab/fleetlab.py exec --dir /tmp/lab lab-01 -- python -c 'import socket; print(socket.gethostname())'
    python lab/fleetlab.py inject --dir /tmp/lab lab-01 stuck_writer [--name BLOCK]
    python lab/fleetlab.py down --dir /tmp/lab

Everything is also importable: ``up()``, ``down()``, ``status()``, ``exec_in()``,
``inject()``. Python 3.11 standard library only; needs root, unshare/nsenter
(util-linux) and openssh-server. See lab/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

LAB_DIR = Path(__file__).resolve().parent
REPO_ROOT = LAB_DIR.parent
FAULT_ACTOR = LAB_DIR / "fault_actor.py"
STATE_FILE = "fleetlab.json"
MAX_HOSTS = 64
MAX_FORKS = 16
DEFAULT_BASE_PORT = 22200
SCENARIOS = ("stuck_writer", "stuck_readers", "stuck_readers_dead_writer", "dead_consumers",
             "corruption", "healthy")
SSHD = "/usr/sbin/sshd"


class LabError(Exception):
    """Anything that stops a lab command; the CLI prints it and exits 1."""


# --------------------------------------------------------------------------- helpers
def _which(name: str, fallback: Optional[str] = None) -> str:
    found = shutil.which(name) or (fallback if fallback and os.path.exists(fallback) else None)
    if not found:
        raise LabError("%s not found (apt-get install -y %s)"
                       % (name, "openssh-server" if "ssh" in name else "util-linux"))
    return found


def missing_prerequisites() -> Optional[str]:
    """Why a lab cannot be brought up on this machine, or None: what `up` needs."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, sshd)"
    for tool in ("unshare", "nsenter", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            return "%s not installed" % tool
    if not os.access(SSHD, os.X_OK):
        return "openssh-server not installed"
    return None


def host_name(i: int) -> str:
    return "lab-%02d" % i


def default_python() -> str:
    """The interpreter ansible runs modules with inside the hosts: this venv's python."""
    if sys.prefix != sys.base_prefix:
        return sys.executable
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def start_ticks(pid: int) -> Optional[int]:
    """Process start time (ticks since boot, /proc/<pid>/stat field 22); None when gone
    or a zombie (a zombie holds nothing any more)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _stat_fields(pid: int) -> Optional[List[bytes]]:
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rindex(b")") + 2:].split()


def alive(pid: Optional[int], start: Optional[int]) -> bool:
    """True while ``pid`` is the very process we started (same start time), not a zombie."""
    return bool(pid) and start is not None and start_ticks(pid) == start


def _reap(pid: int) -> None:
    """Reap ``pid`` if it is our child (when the lab runs inside a long-lived process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _all_pids() -> List[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _children_of(parents: Iterable[int]) -> Dict[int, int]:
    """{parent: first child pid} for the given parents (one /proc scan)."""
    wanted = set(parents)
    found = {}  # type: Dict[int, int]
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and int(fields[1]) in wanted and int(fields[1]) not in found:
            found[int(fields[1])] = pid
    return found


def _global_pid(ns_pid: int, init_pid: int) -> Optional[int]:
    """The host-side pid of the process that is ``ns_pid`` in the PID namespace of
    ``init_pid`` (matching /proc/<pid>/ns/pid and the last NSpid entry)."""
    try:
        target_ns = os.readlink("/proc/%d/ns/pid" % init_pid)
    except OSError:
        return None
    for pid in _all_pids():
        try:
            if os.readlink("/proc/%d/ns/pid" % pid) != target_ns:
                continue
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        if int(line.split()[-1]) == ns_pid:
                            return pid
                        break
        except (OSError, ValueError):
            continue
    return None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_free_base(n: int, start: int = 30000, stop: int = 60000) -> int:
    """A base port P such that P+1 .. P+n are all free on 127.0.0.1."""
    base = start + (os.getpid() * 7) % 1000 * 20
    for _attempt in range((stop - start) // (n + 1)):
        if base + n >= stop:
            base = start
        if all(port_free(base + i) for i in range(1, n + 1)):
            return base
        base += n + 1
    raise LabError("no %d consecutive free ports in %d..%d" % (n, start, stop))


def _ssh_banner(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- state
class Lab:
    """The state file of one lab directory (locked while changed)."""

    def __init__(self, directory: os.PathLike) -> None:
        self.dir = Path(directory).resolve()
        self.path = self.dir / STATE_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            raise LabError("%s: no lab here (no %s)" % (self.dir, STATE_FILE))

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def locked(self):
        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def host(self, state: dict, name: str) -> dict:
        for h in state["hosts"]:
            if h["name"] == name:
                return h
        raise LabError("no host %r in this lab (hosts: %s)"
                       % (name, ", ".join(h["name"] for h in state["hosts"])))


# --------------------------------------------------------------------------- files
SSHD_CONFIG = """\
# generated by fleetlab for {name}
Port {port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {hostdir}/ssh_host_ed25519_key
PidFile {hostdir}/sshd.pid
AuthorizedKeysFile {keys}/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 64
Subsystem sftp internal-sftp
LogLevel {log_level}
"""


def _write_ansible_files(lab_dir: Path, hosts: List[dict], python: str, key: Path) -> None:
    common = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    lines = ["# generated by fleetlab: %d namespace hosts on 127.0.0.1" % len(hosts), "[lab]"]
    for h in hosts:
        lines.append("%s ansible_host=127.0.0.1 ansible_port=%d ansible_user=root "
                     "ansible_ssh_private_key_file=%s ansible_ssh_common_args='%s' "
                     "ansible_python_interpreter=%s" % (h["name"], h["port"], key, common, python))
    (lab_dir / "inventory.ini").write_text("\n".join(lines) + "\n")
    cp_dir = lab_dir / "cp"
    cp_dir.mkdir(mode=0o700, exist_ok=True)
    # ssh's control socket path (<dir>/<40-char hash>) must fit a 108-byte sun_path.
    cp_line = "control_path_dir = %s\n" % cp_dir if len(str(cp_dir)) <= 60 else ""
    (lab_dir / "ansible.cfg").write_text(
        "# generated by fleetlab\n"
        "[defaults]\n"
        "inventory = {inv}\n"
        "host_key_checking = False\n"
        "forks = {forks}\n"
        "collections_path = {coll}\n"
        "retry_files_enabled = False\n"
        "interpreter_python = {py}\n"
        "\n"
        "[ssh_connection]\n"
        "pipelining = True\n"
        "ssh_args = -C -o ControlMaster=auto -o ControlPersist=60s\n"
        "{cp}".format(inv=lab_dir / "inventory.ini", forks=min(len(hosts), MAX_FORKS),
                      coll=lab_dir / "collections", py=python, cp=cp_line))


# --------------------------------------------------------------------------- up
def up(directory: os.PathLike, hosts: int, base_port: Optional[int] = None,
       shm_size: str = "64m", python: Optional[str] = None, log_level: str = "QUIET",
       timeout: float = 30.0) -> dict:
    """Bring up ``hosts`` namespace hosts; returns the state (with ``seconds``).

    ``base_port=0`` picks free ports, and picks again (up to 3 tries) when another
    process takes one between the check and sshd's bind: every caller gets that for free.
    """
    if base_port != 0:
        return _up_once(directory, hosts, base_port, shm_size, python, log_level, timeout)
    for attempt in range(3):
        try:
            return _up_once(directory, hosts, find_free_base(hosts), shm_size, python,
                            log_level, timeout)
        except LabError:
            if attempt == 2:
                raise
    raise AssertionError("not reached")


def _up_once(directory: os.PathLike, hosts: int, base_port: Optional[int], shm_size: str,
             python: Optional[str], log_level: str, timeout: float) -> dict:
    t0 = time.monotonic()
    if os.geteuid() != 0:
        raise LabError("fleetlab needs root (namespaces, mounts, sshd)")
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError("--hosts must be 1..%d" % MAX_HOSTS)
    unshare, keygen = _which("unshare"), _which("ssh-keygen")
    if not os.access(SSHD, os.X_OK):
        raise LabError("%s not found (apt-get install -y openssh-server)" % SSHD)
    lab = Lab(directory)
    if any(ch.isspace() for ch in str(lab.dir)):
        raise LabError("the lab directory may not contain whitespace (sshd_config paths)")
    if lab.exists():
        raise LabError("%s already holds a lab; run `down --dir %s` first" % (lab.dir, lab.dir))
    if lab.dir.exists() and any(lab.dir.iterdir()):
        raise LabError("%s exists and is not empty; give a new or empty directory" % lab.dir)
    base = DEFAULT_BASE_PORT if base_port is None else base_port
    ports = [base + i for i in range(1, hosts + 1)]
    if ports[-1] > 65535:
        raise LabError("ports %d..%d do not fit" % (ports[0], ports[-1]))
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise LabError("port(s) %s on 127.0.0.1 already in use; pick another --base-port"
                       % ", ".join(map(str, busy)))
    python = python or default_python()

    lab.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(lab.dir, 0o755)
    keys = lab.dir / "keys"
    keys.mkdir(mode=0o700)
    coll = lab.dir / "collections" / "ansible_collections" / "pylabhub"
    coll.mkdir(parents=True)
    (coll / "recovery").symlink_to(REPO_ROOT, target_is_directory=True)

    # keys: one client key, one host key per host, generated in parallel
    gens = [subprocess.Popen([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "fleetlab",
                              "-f", str(keys / "id_ed25519")], stdin=subprocess.DEVNULL)]
    records = []
    for i, port in enumerate(ports, 1):
        name = host_name(i)
        hostdir = lab.dir / "hosts" / name
        hostdir.mkdir(parents=True)
        (hostdir / "sshd_config").write_text(SSHD_CONFIG.format(
            name=name, port=port, hostdir=hostdir, keys=keys, log_level=log_level))
        gens.append(subprocess.Popen([keygen, "-q", "-t", "ed25519", "-N", "", "-C", name,
                                      "-f", str(hostdir / "ssh_host_ed25519_key")],
                                     stdin=subprocess.DEVNULL))
        records.append({"name": name, "port": port, "hostdir": str(hostdir)})
    if any(g.wait() for g in gens):
        shutil.rmtree(lab.dir)
        raise LabError("ssh-keygen failed")
    shutil.copyfile(keys / "id_ed25519.pub", keys / "authorized_keys")

    state = {"version": 1, "dir": str(lab.dir), "repo": str(REPO_ROOT), "python": python,
             "base_port": base, "shm_size": shm_size, "created": time.time(),
             "hosts": records, "injected": []}
    _write_ansible_files(lab.dir, records, python, keys / "id_ed25519")
    lab.save(state)   # saved before anything starts: `down` can always clean up

    procs = {}
    for h in records:
        log = open(Path(h["hostdir"]) / "init.log", "ab")
        argv = [unshare, "--mount", "--ipc", "--pid", "--uts", "--fork", "--mount-proc",
                "--propagation", "private", "--kill-child", "--",
                sys.executable, "-I", "-S", str(Path(__file__).resolve()), "_init",
                "--host", h["name"], "--config", str(Path(h["hostdir"]) / "sshd_config"),
                "--shm-size", shm_size]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, close_fds=True)
        log.close()
        procs[h["name"]] = p
        h["pgid"] = h["unshare_pid"] = p.pid
        h["unshare_start"] = start_ticks(p.pid)
    lab.save(state)

    # wait until every sshd answers with its banner
    pending = {h["name"]: h for h in records}
    deadline = time.monotonic() + timeout
    failed = None
    while pending and failed is None:
        for name, h in list(pending.items()):
            if procs[name].poll() is not None:
                failed = "%s: namespace init exited (%s):\n%s" % (
                    name, procs[name].returncode, _tail(Path(h["hostdir"]) / "init.log"))
                break
            if _ssh_banner(h["port"], 0.2):
                h["ready_after"] = round(time.monotonic() - t0, 3)
                del pending[name]
        if pending and failed is None:
            if time.monotonic() > deadline:
                failed = "timed out after %.0f s waiting for sshd on %s" % (
                    timeout, ", ".join(sorted(pending)))
            time.sleep(0.01)
    inits = _children_of(h["unshare_pid"] for h in records)
    for h in records:
        h["init_pid"] = inits.get(h["unshare_pid"])
        h["init_start"] = start_ticks(h["init_pid"]) if h["init_pid"] else None
    state["seconds"] = round(time.monotonic() - t0, 3)
    lab.save(state)
    if failed:
        with contextlib.suppress(Exception):
            down(lab.dir)
        raise LabError(failed)
    return state


# --------------------------------------------------------------------------- down
def _groups(state: dict) -> List[Tuple[str, int, Optional[int]]]:
    """(label, leader pid = pgid, leader start) of every process group the lab started."""
    groups = []
    for inj in state.get("injected", []):
        if inj.get("pgid"):
            groups.append(("inject %s/%s" % (inj["host"], inj["block"]), inj["pgid"],
                           inj.get("pgid_start")))
    for h in state["hosts"]:
        if h.get("pgid"):
            groups.append(("host %s" % h["name"], h["pgid"], h.get("unshare_start")))
    return groups


def _known_pids(state: dict) -> List[Tuple[int, Optional[int]]]:
    known = []
    for h in state["hosts"]:
        known += [(h.get("unshare_pid"), h.get("unshare_start")), (h.get("init_pid"),
                                                                   h.get("init_start"))]
    for inj in state.get("injected", []):
        known.append((inj.get("pgid"), inj.get("pgid_start")))
        known.append(((inj.get("actor") or {}).get("pid"), (inj.get("actor") or {}).get("start")))
        known += [(p.get("pid"), p.get("start")) for p in inj.get("live", [])]
    return [(p, s) for p, s in known if p]


def _close_ssh_masters(lab_dir: Path) -> None:
    cp = lab_dir / "cp"
    ssh = shutil.which("ssh")
    if not ssh or not cp.is_dir():
        return
    procs = [subprocess.Popen([ssh, "-o", "ControlPath=%s" % sock, "-O", "exit", "fleetlab"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for sock in cp.iterdir()]
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=3)


def down(directory: os.PathLike, grace: float = 3.0) -> dict:
    """Stop every process group the lab started (checked by leader start time) and
    remove the lab directory. Nothing outside the lab's namespaces is unmounted: their
    mounts vanish with the namespaces."""
    t0 = time.monotonic()
    lab = Lab(directory)
    state = lab.load()
    _close_ssh_masters(lab.dir)
    signalled = []
    # Injected processes first, from the inside: the actor (in the host's PID namespace)
    # ends its live children and exits, and the nsenter outside reaps it. Killing the
    # nsenter first would leave the actor a zombie whose reaper is outside the namespace,
    # and the namespace's init cannot finish exiting until someone reaps it.
    leaders = []
    for inj in state.get("injected", []):
        actor = inj.get("actor") or {}
        if alive(actor.get("pid"), actor.get("start")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(actor["pid"], signal.SIGTERM)
                leaders.append((inj["pgid"], inj.get("pgid_start")))
                signalled.append("inject %s/%s" % (inj["host"], inj["block"]))
    deadline = time.monotonic() + grace
    while any(alive(p, s) for p, s in leaders) and time.monotonic() < deadline:
        for p, _start in leaders:
            _reap(p)
        time.sleep(0.01)
    for label, pgid, start in _groups(state):
        if alive(pgid, start):             # the leader is still the process we started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
                signalled.append(label)
    known = _known_pids(state)
    deadline = time.monotonic() + grace
    while any(alive(p, s) for p, s in known) and time.monotonic() < deadline:
        for p, _start in known:
            _reap(p)
        time.sleep(0.02)
    forced = []
    for p, s in known:                     # stragglers: SIGKILL by pid, identity checked
        if alive(p, s):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
                forced.append(p)
    deadline = time.monotonic() + grace
    while any(alive(p, s) for p, s in known) and time.monotonic() < deadline:
        for p, _start in known:
            _reap(p)
        time.sleep(0.02)
    for p, _start in known:
        _reap(p)
    survivors = [p for p, s in known if alive(p, s)]
    if survivors:
        raise LabError("processes %s survived; lab directory %s kept" % (survivors, lab.dir))
    shutil.rmtree(lab.dir)
    return {"stopped": signalled, "sigkilled": forced, "removed": str(lab.dir),
            "seconds": round(time.monotonic() - t0, 3)}


# --------------------------------------------------------------------------- status
def _shm_listing(init_pid: int) -> Optional[List[str]]:
    try:
        return sorted(os.listdir("/proc/%d/root/dev/shm" % init_pid))
    except OSError:
        return None


def status(directory: os.PathLike) -> dict:
    lab = Lab(directory)
    state = lab.load()
    hosts = []
    for h in state["hosts"]:
        up_ = alive(h.get("init_pid"), h.get("init_start"))
        hosts.append({"name": h["name"], "port": h["port"], "init_pid": h.get("init_pid"),
                      "running": up_, "ssh": up_ and _ssh_banner(h["port"]),
                      "shm": _shm_listing(h["init_pid"]) if up_ else None})
    injected = []
    for inj in state.get("injected", []):
        injected.append({"host": inj["host"], "scenario": inj["scenario"], "block": inj["block"],
                         "live": [dict(p, alive=alive(p.get("pid"), p.get("start")))
                                  for p in inj.get("live", [])]})
    return {"dir": state["dir"], "hosts": hosts, "injected": injected}


# --------------------------------------------------------------------------- exec
def _nsenter_argv(h: dict) -> List[str]:
    if not alive(h.get("init_pid"), h.get("init_start")):
        raise LabError("host %s is not running" % h["name"])
    return [_which("nsenter"), "-t", str(h["init_pid"]), "-m", "-i", "-p", "-u", "--"]


def _host_env(state: dict, host: str) -> Dict[str, str]:
    env = dict(os.environ)
    coll = str(Path(state["dir"]) / "collections")
    env["PYTHONPATH"] = os.pathsep.join([coll] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p and p != coll])
    env["FLEETLAB_HOST"] = host
    env["FLEETLAB_PYTHON"] = state["python"]
    return env


def exec_in(directory: os.PathLike, host: str, argv: Sequence[str], **kwargs):
    """Run ``argv`` inside ``host`` (its mount/IPC/PID/UTS namespaces) and return the
    CompletedProcess. ``PYTHONPATH`` starts with the lab's collection dir; a leading
    ``python`` means the lab's python. Extra kwargs go to subprocess.run."""
    lab = Lab(directory)
    state = lab.load()
    h = lab.host(state, host)
    argv = list(argv)
    if not argv:
        raise LabError("exec: no command given")
    if argv[0] in ("python", "python3"):
        argv[0] = state["python"]
    kwargs.setdefault("env", _host_env(state, host))
    check = kwargs.pop("check", False)
    return subprocess.run(_nsenter_argv(h) + argv, check=check, **kwargs)


# --------------------------------------------------------------------------- inject
def inject(directory: os.PathLike, host: str, scenario: str, name: Optional[str] = None,
           timeout: float = 30.0, extra: Sequence[str] = ()) -> dict:
    """Leave ``scenario`` in a block of ``host`` (run by lab/fault_actor.py inside it).

    Returns the actor's report (block, slot, processes, observed bytes). Processes it
    leaves alive (a writer waiting in DRAINING, a registered consumer) belong to one
    process group recorded in the state file; ``down`` ends it.
    """
    if scenario not in SCENARIOS:
        raise LabError("unknown scenario %r (one of: %s)" % (scenario, ", ".join(SCENARIOS)))
    lab = Lab(directory)
    state = lab.load()
    h = lab.host(state, host)
    block = name or "%s_block" % scenario
    hostdir = Path(h["hostdir"])
    stamp = "%s-%d" % (block, time.monotonic_ns())
    result = hostdir / ("inject-%s.json" % stamp)
    log_path = hostdir / ("inject-%s.log" % stamp)
    argv = _nsenter_argv(h) + [state["python"], str(FAULT_ACTOR), scenario, "--name", block,
                               "--result", str(result),
                               "--collections", str(Path(state["dir"]) / "collections")]
    argv += list(extra)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=_host_env(state, host), start_new_session=True)
    leader_start = start_ticks(proc.pid)
    deadline = time.monotonic() + timeout
    while not result.exists():
        if proc.poll() is not None:
            raise LabError("fault actor for %s on %s failed (exit %s):\n%s"
                           % (scenario, host, proc.returncode, _tail(log_path)))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise LabError("fault actor for %s on %s timed out:\n%s"
                           % (scenario, host, _tail(log_path)))
        time.sleep(0.01)
    report = json.loads(result.read_text())
    live = [p for p in report.get("processes", []) if p.get("state") == "alive"]
    entry = {"host": host, "scenario": scenario, "block": block, "log": str(log_path),
             "live": []}
    if live:
        for p in live:
            gpid = _global_pid(p["pid"], h["init_pid"])
            p["host_pid"] = gpid
            entry["live"].append({"role": p["role"], "ns_pid": p["pid"], "pid": gpid,
                                  "start": start_ticks(gpid) if gpid else None})
        entry["pgid"], entry["pgid_start"] = proc.pid, leader_start
        actor = _global_pid(report["actor_pid"], h["init_pid"])
        entry["actor"] = {"ns_pid": report["actor_pid"], "pid": actor,
                          "start": start_ticks(actor) if actor else None}
    else:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise LabError("fault actor for %s on %s did not exit" % (scenario, host))
    with lab.locked():
        state = lab.load()
        state.setdefault("injected", []).append(entry)
        lab.save(state)
    report["host"] = host
    return report


# --------------------------------------------------------------------------- _init
MS_NOSUID, MS_NODEV, MS_BIND = 2, 4, 4096
#: The recovery engine's state on a host (before-images, audit log): a real host has its
#: own; every lab host gets its own directory under its host dir, bind-mounted here.
ENGINE_DIRS = ("/var/lib/pylabhub-recovery", "/var/log/pylabhub-recovery")


def _mount_tmpfs(target: str, options: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                  options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount tmpfs on %s: %s" % (target, os.strerror(err)))


def _mount_bind(source: str, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "bind %s on %s: %s" % (source, target, os.strerror(err)))


def _init_main(host: str, config: str, shm_size: str) -> int:
    """PID 1 of one lab host. Runs inside fresh mount/IPC/PID/UTS namespaces."""
    if os.getpid() != 1:
        print("fleetlab _init must run as PID 1 of a new PID namespace", file=sys.stderr)
        return 2
    socket.sethostname(host)
    # Recovery inside a host judges its kernel scan complete (scope "namespace") only when
    # /dev/shm is provably younger than this PID namespace: its birth time must follow
    # PID 1's start by more than the clocks' granularity. Never mount it in the first
    # ticks of our life.
    time.sleep(0.05)
    _mount_tmpfs("/dev/shm", "mode=1777,size=%s" % shm_size)
    # sshd needs its privilege-separation dir /run/sshd (root-owned, not group/world
    # writable). A private /run gives every host its own, and leaves the real one alone.
    _mount_tmpfs("/run", "mode=0755,size=16m")
    os.mkdir("/run/sshd", 0o755)
    # Before-images and the audit log: one directory of each per host, as on a real
    # fleet (shared, every host's heal would list and prune the same snapshot directory
    # and append to one audit log). The mount points are the engine's default paths.
    hostdir = os.path.dirname(os.path.abspath(config))
    for target in ENGINE_DIRS:
        source = os.path.join(hostdir, target.strip("/").replace("/", "_"))
        os.makedirs(source, 0o700, exist_ok=True)
        os.makedirs(target, 0o755, exist_ok=True)
        _mount_bind(source, target)
    os.chdir("/")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL)

    def stop(signum, frame):   # noqa: ARG001 - PID 1 exiting SIGKILLs its whole namespace
        os._exit(0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    while True:                # reap everything re-parented to us; leave with sshd
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == sshd.pid:
            print("sshd exited (status %#x): taking %s down" % (status, host), file=sys.stderr)
            return 1


# --------------------------------------------------------------------------- CLI
def _print_status(st: dict) -> None:
    print("lab %s" % st["dir"])
    for h in st["hosts"]:
        shm = h["shm"]
        print("  %-7s port %-5d init %-7s %-8s ssh %-3s shm: %s" % (
            h["name"], h["port"], h["init_pid"], "running" if h["running"] else "DOWN",
            "ok" if h["ssh"] else "no", "-" if shm is None else (" ".join(shm) or "(empty)")))
    for inj in st["injected"]:
        live = ", ".join(
            "%s pid %s (ns %s) %s" % (p["role"], p["pid"], p["ns_pid"],
                                      "alive" if p["alive"] else "gone")
            for p in inj["live"]) or "no live processes"
        print("  injected %-26s on %s: %s" % (inj["block"], inj["host"], live))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="fleetlab", description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", help="bring up N namespace hosts with sshd")
    p.add_argument("--hosts", type=int, required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--base-port", type=int, default=None,
                   help="host i listens on base+i (default %d; 0 = find free ports)"
                   % DEFAULT_BASE_PORT)
    p.add_argument("--shm-size", default="64m", help="size of each host's /dev/shm tmpfs")
    p.add_argument("--python", default=None, help="ansible_python_interpreter (default: "
                   "the venv python running the lab)")
    p.add_argument("--log-level", default="QUIET", help="sshd LogLevel (QUIET)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("down", help="stop the lab's processes and remove DIR")
    p.add_argument("--dir", required=True)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", help="hosts, their /dev/shm, injected processes")
    p.add_argument("--dir", required=True)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("exec", help="run a command inside a host: exec --dir D HOST -- cmd")
    p.add_argument("--dir", required=True)
    p.add_argument("host")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("inject", help="leave a fault scenario in a block inside a host")
    p.add_argument("--dir", required=True)
    p.add_argument("host")
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--name", default=None, help="block name (default <scenario>_block)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--capacity", type=int, default=None, help="slots in the block (4)")
    p.add_argument("--stride", type=int, default=None, help="slot size in bytes (4096)")
    p.add_argument("--slot", type=int, default=None, help="corruption: slot to corrupt")
    p.add_argument("--live-producer", action="store_true",
                   help="keep a heartbeating producer alive (healthy, corruption, "
                   "dead_consumers)")
    p.add_argument("--replace", action="store_true", help="unlink an existing block first")
    p = sub.add_parser("_init")          # internal: PID 1 inside a host
    p.add_argument("--host", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--shm-size", default="64m")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "_init":
            return _init_main(args.host, args.config, args.shm_size)
        if args.cmd == "up":
            st = up(args.dir, args.hosts, args.base_port, args.shm_size, args.python,
                    args.log_level, args.timeout)
            if args.json:
                print(json.dumps(st, indent=1))
            else:
                print("%d hosts up in %.2f s (ports %d..%d)" % (
                    len(st["hosts"]), st["seconds"], st["hosts"][0]["port"],
                    st["hosts"][-1]["port"]))
                print("  ANSIBLE_CONFIG=%s/ansible.cfg ansible all -m ansible.builtin.ping"
                      % st["dir"])
            return 0
        if args.cmd == "down":
            res = down(args.dir)
            print(json.dumps(res, indent=1) if args.json else
                  "lab down in %.2f s (%d process groups stopped, %d SIGKILLed); %s removed"
                  % (res["seconds"], len(res["stopped"]), len(res["sigkilled"]), res["removed"]))
            return 0
        if args.cmd == "status":
            st = status(args.dir)
            if args.json:
                print(json.dumps(st, indent=1))
            else:
                _print_status(st)
            return 0 if all(h["running"] and h["ssh"] for h in st["hosts"]) else 1
        if args.cmd == "exec":
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            return exec_in(args.dir, args.host, cmd).returncode
        if args.cmd == "inject":
            extra = []
            for opt in ("capacity", "stride", "slot"):
                if getattr(args, opt) is not None:
                    extra += ["--" + opt, str(getattr(args, opt))]
            extra += ["--live-producer"] * args.live_producer + ["--replace"] * args.replace
            print(json.dumps(inject(args.dir, args.host, args.scenario, args.name,
                                    args.timeout, extra), indent=1))
            return 0
    except LabError as exc:
        print("fleetlab: %s" % exc, file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
