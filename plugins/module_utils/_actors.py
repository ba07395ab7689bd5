# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Crash actors: real processes that run our runtime on a block and stop or wait at a
named protocol point, for the drill, the lab's fault injector and every test.

An :class:`Actor` is a child process (``python -c``: a fresh interpreter that imports
this very package from the parent's ``sys.path``, so it works inside an Ansible module
too) running a small script of steps on one block::

    a = Actor("my_block", [("producer",), ("publish", 2), ("acquire",)],
              pause="locked", mode="wait").start()
    a.wait_point(10)         # {"event": "point", "point": "locked", "pid": ..., ...}
    a.pid                    # its pid in OUR PID namespace
    a.kill()                 # SIGKILL exactly there (or a.resume() to go on)

Steps: ``("producer",)``, ``("publish", n)``, ``("acquire",)`` (lock a slot and keep it),
``("write",)``, ``("commit",)``, ``("consumer", name)``, ``("read", index_or_None)``
(enter a slot and stay inside), ``("release",)`` (leave the oldest slot held),
``("unregister", style)`` (style "cpp" leaves our evidence behind, as the C++ library
does), ``("exit", code)``. Points: ``_runtime.PRODUCER_POINTS`` and ``CONSUMER_POINTS``;
``nth`` picks the n-th time the point is reached. At the point the actor reports, then
``mode="stop"`` sends itself SIGSTOP (state T: "paused at a protocol point") and goes on
after SIGCONT (:meth:`Actor.cont`); ``mode="wait"`` blocks (state S) until
:meth:`Actor.resume` or until killed. After its last step it reports ``done`` and waits
the same way (``resume`` lets it exit 0). ``style="cpp"`` plays a live C++ peer: no
evidence at all and the C++ orders of register/unregister (see ``_runtime.Consumer``).

Namespaces: ``wrap`` prefixes the command (``["unshare", "--time", "--boottime", "-100",
"--fork"]``); :class:`ActorNamespace` keeps a PID namespace alive (its PID 1 is a small
spawner of ours) in which actors are started with a chosen pid through
``/proc/sys/kernel/ns_last_pid`` -- deterministic PID reuse.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

Step = Tuple[Any, ...]
_BOOT = ("import sys, json, importlib; sys.path[:0] = json.loads(sys.argv[1]); "
         "importlib.import_module(sys.argv[2])._main(sys.argv[3:])")
_PR_SET_PDEATHSIG = 1


class ActorError(RuntimeError):
    """An actor failed, died early or did not reach its point in time."""


# --------------------------------------------------------------------------- wire
class _Wire:
    """JSON lines over one end of a Unix stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, obj: Dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def recv(self, timeout: Optional[float]) -> Optional[Dict[str, Any]]:
        """The next message; None at end of stream; ActorError after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ActorError("no message within %.1f s" % timeout)
            if not select.select([self.sock], [], [], left)[0]:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def _python_path() -> List[str]:
    return [p for p in sys.path if isinstance(p, str) and p]


def _argv(role: str, fd: int, spec: Dict[str, Any], nonce: str) -> List[str]:
    return [sys.executable, "-c", _BOOT, json.dumps(_python_path()), __name__, role, str(fd),
            json.dumps(spec), nonce]


def _pdeathsig() -> None:
    """In a forked child before exec: die with the parent (tests never leak actors)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # pylint: disable=broad-except
        pass


def _status(pid: int, proc: str = "/proc") -> Dict[str, str]:
    out = {}
    try:
        with open("%s/%d/status" % (proc, pid), "rb") as f:
            for line in f:
                key, sep, value = line.decode("utf-8", "replace").partition(":")
                if sep:
                    out[key] = value.strip()
    except OSError:
        pass
    return out


def find_pid(nonce: str, ns_pid: int) -> Optional[int]:
    """Our-namespace pid of the process whose command line carries ``nonce`` and whose
    own pid (last NSpid level) is ``ns_pid``."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                if nonce.encode() not in f.read():
                    continue
        except OSError:
            continue
        nspid = _status(int(name)).get("NSpid", "").split()
        if nspid and int(nspid[-1]) == ns_pid:
            return int(name)
    return None


# --------------------------------------------------------------------------- parent side
class Actor:
    """One actor process (module doc). Methods raise :class:`ActorError` on failure."""

    def __init__(self, block: str, steps: Sequence[Step], pause: Optional[str] = None,
                 nth: int = 1, mode: str = "wait", style: str = "ours",
                 wrap: Sequence[str] = (), namespace: Optional["ActorNamespace"] = None,
                 pid: Optional[int] = None, label: str = "actor") -> None:
        if mode not in ("wait", "stop"):
            raise ValueError("mode must be 'wait' or 'stop', got %r" % (mode,))
        if pid is not None and namespace is None:
            raise ValueError("a chosen pid needs an ActorNamespace")
        self.spec = {"block": block, "steps": [list(s) for s in steps], "pause": pause,
                     "nth": nth, "mode": mode, "style": style, "label": label}
        self.wrap = list(wrap)
        self.namespace = namespace
        self.wanted_pid = pid
        self.label = label
        self.nonce = "plh-actor-%s" % uuid.uuid4().hex
        self.pid = 0                         # in our PID namespace
        self.ns_pid = 0                      # in its own
        self.start_ticks = None              # type: Optional[int]
        self.reports = []                    # type: List[Dict[str, Any]]
        self.exit_status = None              # type: Optional[int]
        self._proc = None                    # type: Any
        self._wire = None                    # type: Optional[_Wire]

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Actor":
        """Start the process and wait until it runs (its ``started`` report)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.namespace is not None:
                self.ns_pid = self.namespace.spawn(self.spec, theirs, self.nonce,
                                                   self.wanted_pid)
            else:
                import subprocess
                self._proc = subprocess.Popen(
                    self.wrap + _argv("actor", theirs.fileno(), self.spec, self.nonce),
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    preexec_fn=_pdeathsig)
        finally:
            theirs.close()
        self._wire = _Wire(ours)
        first = self._next(timeout)
        if first.get("event") != "started":
            raise ActorError("%s: unexpected first report %r" % (self.label, first))
        self.ns_pid = int(first["pid"])
        self.start_ticks = first.get("start_ticks")
        if self._proc is not None and not self.wrap:
            self.pid = self._proc.pid
        else:
            deadline = time.monotonic() + timeout
            nonce = self.namespace.nonce if self.namespace is not None else self.nonce
            while not self.pid:        # (a namespace's actors are forks of its spawner)
                self.pid = find_pid(nonce, self.ns_pid) or 0
                if not self.pid and time.monotonic() > deadline:
                    raise ActorError("%s: cannot find its pid here" % self.label)
        return self

    def _next(self, timeout: Optional[float]) -> Dict[str, Any]:
        if self._wire is None:
            raise ActorError("%s: not started" % self.label)
        try:
            msg = self._wire.recv(timeout)
        except ActorError as exc:
            raise ActorError("%s (pid %s): %s" % (self.label, self.pid or "?", exc))
        if msg is None:
            raise ActorError("%s (pid %s) ended early (status %s)"
                             % (self.label, self.pid or "?", self.wait_exit(5.0)))
        if msg.get("event") == "error":
            raise ActorError("%s (pid %s) failed:\n%s"
                             % (self.label, self.pid or "?", msg.get("traceback")))
        self.reports.append(msg)
        return msg

    def wait_point(self, timeout: float = 15.0) -> Dict[str, Any]:
        """The report at the pause point (or ``done`` after the last step). With
        ``mode="stop"`` it returns once the process is really stopped."""
        msg = self._next(timeout)
        if self.spec["mode"] == "stop" and msg.get("event") == "point":
            deadline = time.monotonic() + timeout
            while _status(self.pid).get("State", "?")[:1] not in ("T", "t"):
                if time.monotonic() > deadline:
                    raise ActorError("%s: never stopped" % self.label)
                time.sleep(0.002)
        return msg

    def resume(self) -> None:
        """Let a waiting actor go on (``mode="wait"``; after ``done``: exit 0)."""
        if self._wire is not None:
            self._wire.send({"go": True})

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> Optional[int]:
        """SIGKILL and wait for it to be gone; returns the exit status when known."""
        if self.pid and self.exit_status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.wait_exit(15.0)

    def wait_exit(self, timeout: float = 15.0) -> Optional[int]:
        """Wait for the actor to end; its status like Popen.returncode (-9 = SIGKILL),
        or None when not ours to reap (an unshare --fork child: then only its end)."""
        if self.exit_status is not None:
            return self.exit_status
        deadline = time.monotonic() + timeout
        if self.namespace is not None and self.ns_pid:
            if self.namespace.closed:    # its PID 1 is gone: so is everything inside
                return None
            self.exit_status = self.namespace.wait(self.ns_pid, timeout)
            return self.exit_status
        if self._proc is not None:      # ours, or unshare (which passes the status on)
            try:
                self.exit_status = self._proc.wait(timeout)
            except Exception:  # pylint: disable=broad-except
                raise ActorError("%s (pid %s) still running after %.0f s"
                                 % (self.label, self.pid, timeout))
            return self.exit_status
        while self.pid and _status(self.pid).get("State", "Z")[:1] not in ("Z", "X"):
            if time.monotonic() > deadline:
                raise ActorError("%s (pid %s) still running" % (self.label, self.pid))
            time.sleep(0.005)
        return None

    def close(self) -> None:
        """Kill if still running; release the socket."""
        try:
            if self.pid and self.exit_status is None:
                try:
                    os.kill(self.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                self.kill()
        finally:
            if self._wire is not None:
                self._wire.sock.close()
                self._wire = None

    def __enter__(self) -> "Actor":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class ActorNamespace:
    """A PID namespace kept alive by a spawner of ours (its PID 1), so that actors can be
    started in it one after another, each with a chosen pid (``ns_last_pid``).

    ``wrap``: how to enter it (default ``unshare --pid --fork --mount-proc``; add
    ``--time``/``--boottime`` etc. as needed). Root is required to choose pids."""

    def __init__(self, wrap: Sequence[str] = ("unshare", "--pid", "--fork", "--mount-proc"),
                 timeout: float = 30.0) -> None:
        import subprocess
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.nonce = "plh-actor-ns-%s" % uuid.uuid4().hex
        try:
            self._proc = subprocess.Popen(
                list(wrap) + _argv("spawner", theirs.fileno(), {}, self.nonce),
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, preexec_fn=_pdeathsig)
        finally:
            theirs.close()
        self._sock = ours
        self._wire = _Wire(ours)
        self.closed = False
        hello = self._wire.recv(timeout)
        if not hello or hello.get("event") != "started":
            raise ActorError("actor namespace did not start: %r" % (hello,))
        self.init_ns_pid = int(hello["pid"])
        self.init_pid = find_pid(self.nonce, self.init_ns_pid) or 0

    def spawn(self, spec: Dict[str, Any], sock: socket.socket, nonce: str,
              pid: Optional[int]) -> int:
        fds = array.array("i", [sock.fileno()])
        self._sock.sendmsg([(json.dumps({"op": "spawn", "spec": spec, "pid": pid,
                                         "nonce": nonce}) + "\n").encode()],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        reply = self._wire.recv(30.0)
        if not reply or "ns_pid" not in reply:
            raise ActorError("spawner: %r" % (reply,))
        if pid is not None and reply["ns_pid"] != pid:
            raise ActorError("asked for pid %d in the namespace, got %d (taken?)"
                             % (pid, reply["ns_pid"]))
        return int(reply["ns_pid"])

    def wait(self, ns_pid: int, timeout: float) -> Optional[int]:
        self._wire.send({"op": "wait", "ns_pid": ns_pid, "timeout": timeout})
        reply = self._wire.recv(timeout + 5.0)
        if not reply or "status" not in reply:
            raise ActorError("spawner: %r" % (reply,))
        return reply["status"]

    def close(self) -> None:
        """End the namespace: its PID 1 exits, and the kernel kills every actor in it."""
        if self.closed:
            return
        self.closed = True
        try:
            self._wire.send({"op": "quit"})
        except OSError:
            pass
        try:
            self._proc.wait(10)
        except Exception:  # pylint: disable=broad-except
            self._proc.kill()
            self._proc.wait()
        self._sock.close()

    def __enter__(self) -> "ActorNamespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- child side
def _main(argv: List[str]) -> None:
    role, fd, spec, nonce = argv[0], int(argv[1]), json.loads(argv[2]), argv[3]
    del nonce                               # only there to be found in /proc/PID/cmdline
    sock = socket.socket(fileno=fd)
    if role == "spawner":
        _spawner(sock)
    else:
        _actor(sock, spec)


def _self_facts() -> Dict[str, Any]:
    st = _status(os.getpid())
    try:
        with open("/proc/self/stat", "rb") as f:
            raw = f.read()
        ticks = int(raw[raw.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        ticks = None
    return {"pid": os.getpid(), "nspid": [int(x) for x in st.get("NSpid", "").split()],
            "start_ticks": ticks}


def _actor(sock: socket.socket, spec: Dict[str, Any]) -> None:
    wire = _Wire(sock)
    code = 0
    try:
        wire.send(dict(_self_facts(), event="started"))
        _Script(wire, spec).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # pylint: disable=broad-except
        import traceback
        code = 1
        try:
            wire.send({"event": "error", "traceback": traceback.format_exc()})
        except OSError:
            pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Script:
    """The actor's steps, with the pause hook."""

    def __init__(self, wire: _Wire, spec: Dict[str, Any]) -> None:
        from . import _runtime
        self.R = _runtime
        self.wire = wire
        self.spec = spec
        self.seen = {}  # type: Dict[str, int]
        self.block = None  # type: Any
        self.producer = None  # type: Any
        self.consumer = None  # type: Any
        self.slot = None  # type: Any
        self.reads = []  # type: List[Any]

    def state(self) -> Dict[str, Any]:
        """Where the actor is: its slot (the one it holds locked, inside acquire too),
        its consumer entry (found by pid while still registering), its reads."""
        R, b, pid = self.R, self.block, os.getpid()
        slot = self.slot.index if self.slot is not None else None
        if slot is None and b is not None:
            slot = next((i for i in range(b.geo.capacity)
                         if b.get(R.SLOT["write_lock"], b.geo.slot_entry(i)) == pid), None)
        consumer = getattr(self.consumer, "index", None)
        if consumer is None and b is not None:
            consumer = next((k for k in range(R.L.MAX_CONSUMERS)
                             if b.get(R.CONS["consumer_pid"], R.L.consumer_entry(k)) == pid),
                            None)
        return {"pid": pid, "slot": slot,
                "slot_id": self.slot.slot_id if self.slot is not None else None,
                "write_index": b.get("write_index") if b is not None else None,
                "consumer": consumer, "reading": [r.index for r in self.reads]}

    def at(self, point: str) -> None:
        self.seen[point] = self.seen.get(point, 0) + 1
        if point != self.spec.get("pause") or self.seen[point] != self.spec.get("nth", 1):
            return
        self.pause(dict(self.state(), event="point", point=point))

    def pause(self, report: Dict[str, Any]) -> None:
        self.wire.send(report)
        if self.spec.get("mode") == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        if self.wire.recv(None) is None:      # parent gone: nothing left to do
            os._exit(0)

    def payload(self, slot_id: int) -> bytes:
        stride = self.block.geo.stride
        head = b"plh-actor slot %d " % slot_id
        return (head * (stride // len(head) + 1))[:stride]

    def run(self) -> None:
        R = self.R
        self.block = R.attach(self.spec["block"])
        style = self.spec.get("style", "ours")
        for step in self.spec["steps"]:
            op, args = step[0], step[1:]
            if op == "producer":
                self.producer = R.Producer(self.block, at=self.at, style=style)
            elif op == "publish":
                for dummy in range(int(args[0]) if args else 1):
                    ws = self.producer.acquire(timeout=None)
                    self.producer.write(ws, self.payload(ws.slot_id))
                    self.producer.commit(ws)
            elif op == "acquire":
                self.slot = self.producer.acquire(timeout=None)
            elif op == "write":
                self.producer.write(self.slot, self.payload(self.slot.slot_id))
            elif op == "commit":
                self.producer.commit(self.slot)
                self.slot = None
            elif op == "consumer":
                self.consumer = R.Consumer(self.block, name=args[0] if args else "actor",
                                           at=self.at, style=style)
            elif op == "read":
                rs = self.consumer.acquire(args[0] if args else None)
                if rs is None:
                    raise RuntimeError("no readable slot %s" % (args[0] if args else "latest"))
                self.reads.append(rs)
            elif op == "release":
                self.consumer.release(self.reads.pop(0))
            elif op == "unregister":
                if args and args[0] == "cpp":
                    self.consumer.evidence = False     # C++ unregister leaves ours behind
                self.consumer.unregister()
            elif op == "exit":
                raise SystemExit(int(args[0]) if args else 0)
            else:
                raise ValueError("unknown actor step %r" % (op,))
        self.pause(dict(self.state(), event="done"))


def _spawner(sock: socket.socket) -> None:
    """PID 1 of an ActorNamespace: spawn actors (chosen pids), reap, report exits."""
    wire = _Wire(sock)
    wire.send(dict(_self_facts(), event="started"))
    statuses = {}  # type: Dict[int, int]
    while True:
        msg, fds = _recv_with_fds(wire)
        if msg is None or msg.get("op") == "quit":
            os._exit(0)
        if msg["op"] == "spawn":
            child_sock = socket.socket(fileno=fds[0])
            if msg.get("pid"):
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(int(msg["pid"]) - 1))
            pid = os.fork()
            if pid == 0:
                sock.close()
                _actor(child_sock, msg["spec"])
            child_sock.close()
            wire.send({"ns_pid": pid})
        elif msg["op"] == "wait":
            wire.send({"status": _reap(int(msg["ns_pid"]), float(msg["timeout"]), statuses)})


def _reap(pid: int, timeout: float, statuses: Dict[int, int]) -> Optional[int]:
    deadline = time.monotonic() + timeout
    while pid not in statuses:
        try:
            got, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return statuses.get(pid)
        if got:
            statuses[got] = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                             else os.WEXITSTATUS(status))
            continue
        if time.monotonic() > deadline:
            return None
        time.sleep(0.005)
    return statuses.pop(pid)      # the pid may be handed out again (ns_last_pid)


def _recv_with_fds(wire: _Wire) -> Tuple[Optional[Dict[str, Any]], List[int]]:
    """One JSON line plus any fds passed with it (SCM_RIGHTS)."""
    fds = []  # type: List[int]
    while b"\n" not in wire.buf:
        data, ancdata, dummy_flags, dummy_addr = wire.sock.recvmsg(
            65536, socket.CMSG_SPACE(4 * 4))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[:len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
        if not data:
            return None, fds
        wire.buf += data
    line, wire.buf = wire.buf.split(b"\n", 1)
    return json.loads(line), fds
