# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The watch: diagnose every block of a policy on an interval, heal what stayed stuck.

Why a delay on top of the engine's proof: a slot is stuck only when its holder is proven
dead, and heal releases nothing else, so the delay is a second gate of time: the same
slot must be seen stuck, with the same holder and the same words (state, write lock,
reader count, generation, readers), on consecutive passes spanning at least ``delay``
seconds before the watch heals its block. A slot whose words move between passes (a slow
writer going on) starts its clock again; a slot seen stuck once and then not is
forgotten. Suspect slots (holder alive and silent, or unknown) are never healed: heal is
never forced, and the watch never passes ``force_refused``.

The observations survive the process (``state_file``, JSON, written atomically), so a
timer running ``--once`` sees consecutive passes too. Times are ``CLOCK_MONOTONIC`` with
the boot id (a reboot forgets everything: /dev/shm is empty then anyway); a previous pass
older than :data:`GAP_INTERVALS` intervals is not consecutive and is forgotten.

Every heal goes through the engine's :func:`heal`, so through the before-images and the
audit log like any other (its record's ``watch`` context names the policy and the pass);
each pass writes ``pylabhub_recovery_watch.prom`` (and, after a heal, refreshes the
engine's ``pylabhub_recovery.prom``) in the policy's ``textfile`` directory.

One watch per host: an exclusive ``flock`` on :func:`lock_path` (released by the kernel
when the process dies, so a SIGKILLed watch never leaves a stale lock). SIGTERM or SIGINT
ends the watch between passes (a pass under way is finished). Policy: docs/watch.md.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ._contract import SCHEMA
from ._errors import PolicyError, RecoveryError, WatchRunning
from ._metrics import exposition, write_textfile
from ._snapshot import secure_dir, state_home

POLICY_FORMAT = "pylabhub.recovery/watch-policy-v1"
STATE_FORMAT = "pylabhub.recovery/watch-state-v1"
TEXTFILE = "pylabhub_recovery_watch.prom"
ENV_LOCK = "PYLABHUB_RECOVERY_WATCH_LOCK"
ROOT_LOCK = "/run/pylabhub-recovery/watch.lock"
ROOT_STATE = "/var/lib/pylabhub-recovery/watch-state.json"
GAP_INTERVALS = 3          # a previous pass older than this many intervals is forgotten

#: key -> (types, default, check, what it must be); the policy takes no other key.
_NUMBER = (int, float)
POLICY_KEYS: Dict[str, Tuple[tuple, object, Callable[[Any], bool], str]] = {
    "format": ((str,), POLICY_FORMAT, lambda v: v == POLICY_FORMAT, '"%s"' % POLICY_FORMAT),
    "blocks": ((list,), ["*"], lambda v: bool(v) and all(isinstance(p, str) and p for p in v),
               "a non-empty list of shell patterns (block names or addresses)"),
    "interval": (_NUMBER, 30, lambda v: 0 < v <= 86400, "seconds between passes, > 0"),
    "delay": (_NUMBER, 60, lambda v: 0 <= v <= 7 * 86400,
              "seconds a slot must be seen stuck before its block is healed, >= 0"),
    "repair": ((bool,), False, lambda v: True, "true or false (heal --repair)"),
    "max_bytes": ((int, type(None)), None, lambda v: v is None or v > 0,
                  "a positive byte count or null"),
    "textfile": ((str, type(None)), None, lambda v: v is None or os.path.isabs(v),
                 "an absolute directory (node_exporter's textfile directory) or null"),
    "state_file": ((str, type(None)), None, lambda v: v is None or os.path.isabs(v),
                   "an absolute file path or null (the default)"),
}


# --------------------------------------------------------------------------- the policy
def load_policy(path: str) -> Dict[str, Any]:
    """The policy at ``path``: a JSON object of :data:`POLICY_KEYS`, defaults filled in.
    Anything else is :class:`PolicyError` (one line naming the file and the key)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except OSError as exc:
        raise PolicyError("watch policy %s: %s" % (path, exc.strerror or exc))
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PolicyError("watch policy %s is not JSON: %s" % (path, exc))
    return check_policy(doc, path)


def check_policy(doc: object, where: str = "policy") -> Dict[str, Any]:
    """``doc`` checked key by key (see :func:`load_policy`)."""
    if not isinstance(doc, dict):
        raise PolicyError("watch policy %s: a JSON object is required" % where)
    unknown = sorted(set(doc) - set(POLICY_KEYS))
    if unknown:
        raise PolicyError("watch policy %s: unknown key %r (known: %s)"
                          % (where, unknown[0], ", ".join(sorted(POLICY_KEYS))))
    policy: Dict[str, Any] = {}
    for key, (types, default, ok, what) in POLICY_KEYS.items():
        value = doc.get(key, default)
        bad_type = isinstance(value, bool) and bool not in types
        if bad_type or not isinstance(value, types) or not ok(value):
            raise PolicyError("watch policy %s: %s must be %s, not %s"
                              % (where, key, what, json.dumps(value)))
        policy[key] = value
    policy["path"] = where
    return policy


# --------------------------------------------------------------------------- the lock
def lock_path() -> str:
    """The host's one watch lock: $PYLABHUB_RECOVERY_WATCH_LOCK, else
    /run/pylabhub-recovery/watch.lock for root, else ``$XDG_RUNTIME_DIR`` (or the state
    home) ``/pylabhub-recovery/watch.lock``."""
    chosen = os.environ.get(ENV_LOCK)
    if chosen:
        return os.path.abspath(chosen)
    if os.geteuid() == 0:
        return ROOT_LOCK
    runtime = os.environ.get("XDG_RUNTIME_DIR") or ""
    base = os.path.join(runtime, "pylabhub-recovery") if os.path.isabs(runtime) else state_home()
    return os.path.join(base, "watch.lock")


def take_lock(path: Optional[str] = None) -> int:
    """Hold the watch lock (an fd; closing it, or dying, releases it) or raise
    :class:`WatchRunning` naming the pid that holds it."""
    path = path or lock_path()
    dfd = secure_dir(os.path.dirname(path), RecoveryError)
    os.close(dfd)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RecoveryError("cannot open the watch lock %s: %s" % (path, exc.strerror or exc))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise WatchRunning("another watch is running on this host (pid %s holds %s); "
                               "nothing was done" % (holder, path), lock=path)
        raise RecoveryError("cannot lock %s: %s" % (path, exc.strerror or exc))
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


# --------------------------------------------------------------------------- the state
def state_path(policy: Dict[str, Any]) -> str:
    """Where the observations persist: the policy's ``state_file``, else
    /var/lib/pylabhub-recovery/watch-state.json for root, else the state home's."""
    if policy.get("state_file"):
        return str(policy["state_file"])
    return ROOT_STATE if os.geteuid() == 0 else os.path.join(state_home(), "watch-state.json")


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def load_state(path: str, interval: float, now: float) -> Dict[str, Any]:
    """The previous pass's observations, or an empty state when there is none, it is of
    another boot, it is unreadable (said in ``note``) or too old to be consecutive."""
    empty: Dict[str, Any] = {"format": STATE_FORMAT, "boot_id": boot_id(), "passes": 0,
                             "heals": 0, "last_pass": None, "seen": {}}
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as exc:
        return dict(empty, note="state %s unreadable (%s): started afresh" % (path, exc))
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        return dict(empty, note="state %s is not a watch state: started afresh" % path)
    counts = {k: doc.get(k) if isinstance(doc.get(k), int) else 0 for k in ("passes", "heals")}
    last = doc.get("last_pass")
    if (doc.get("boot_id") != empty["boot_id"] or not isinstance(last, (int, float))
            or not isinstance(doc.get("seen"), dict)
            or not 0 <= now - last <= GAP_INTERVALS * interval):
        return dict(empty, **counts)         # not consecutive: nothing was seen before
    return dict(doc, **counts)


def save_state(path: str, state: Dict[str, Any]) -> None:
    """Write the state atomically (temp file, fsync, rename) in a safe directory."""
    dfd = secure_dir(os.path.dirname(path) or ".", RecoveryError)
    os.close(dfd)
    temp = "%s.%d.tmp" % (path, os.getpid())
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(state, sort_keys=True).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except OSError as exc:
        raise RecoveryError("cannot write the watch state %s: %s" % (path, exc.strerror or exc))


# --------------------------------------------------------------------------- one pass
def _identity(block: Dict[str, Any]) -> str:
    """The block's file (device:inode), so a block re-created under the same name
    starts afresh; its address when it cannot be stat'ed."""
    try:
        st = os.stat(str(block.get("path")))
    except (OSError, ValueError):
        return str(block.get("address"))
    return "%d:%d" % (st.st_dev, st.st_ino)


def stuck_items(result: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """What of a diagnose result the watch times: every stuck slot (keyed by every word
    that says who holds it and how) and every dead consumer entry (index, pid, uid,
    name). Two passes see "the same" item only when every one of those is equal."""
    items: Dict[str, Dict[str, Any]] = {}
    for s in result.get("slots") or []:
        if not s.get("is_stuck"):
            continue
        readers = sorted((r.get("consumer"), r.get("pid"))
                         for r in (s.get("readers") or {}).get("attributed") or [])
        key = json.dumps(["slot", s["index"], s.get("state"), s.get("write_lock"),
                          (s.get("writer") or {}).get("pid"), s.get("reader_count"),
                          s.get("write_generation"), bool(s.get("writer_waiting")), readers])
        items[key] = {"slot": s["index"], "state": s.get("state"),
                      "write_lock": s.get("write_lock"), "reason": s.get("reason")}
    for c in result.get("consumers") or []:
        if c.get("action") != "cleanup":
            continue
        key = json.dumps(["consumer", c["index"], c.get("pid"), c.get("uid"), c.get("name")])
        items[key] = {"consumer": c["index"], "pid": c.get("pid")}
    return items


def _diagnosed(engine, policy: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every block of the policy, diagnosed (one ``each_block`` per pattern, each block
    once): the engine's entries."""
    seen: Dict[str, Dict[str, Any]] = {}
    for pattern in policy["blocks"]:
        for entry in engine.each_block("diagnose", pattern,
                                       max_bytes=policy["max_bytes"])["blocks"]:
            seen.setdefault(str(entry["address"]), entry)
    return [seen[a] for a in sorted(seen)]


def one_pass(engine, policy: Dict[str, Any], state: Dict[str, Any], number: int,
             record: Dict[str, Any]) -> Dict[str, Any]:
    """Diagnose every block of the policy, time its stuck items against ``state``
    (updated in place) and heal each block with an item seen stuck, unchanged, for at
    least ``delay``. Returns the pass's document.

    Times err on the side of waiting: an item first seen in this pass is stamped with the
    time the pass's diagnoses *ended* (no later than that observation), and its age is
    measured at the time they *began* (no earlier than this one), so two observations of
    it are at least ``seen_for_s`` apart."""
    began = time.monotonic()
    diagnosed = _diagnosed(engine, policy)
    now = time.monotonic()
    old_seen: Dict[str, Any] = state.get("seen") or {}
    new_seen: Dict[str, Any] = {}
    blocks: List[Dict[str, Any]] = []
    heals = 0
    for entry in diagnosed:
        result = entry.get("result")
        row: Dict[str, Any] = {"address": entry["address"], "health": entry.get("health"),
                               "error": entry.get("error"), "skipped": entry.get("skipped"),
                               "stuck": [], "waiting": [], "suspect_slots": [],
                               "healed": None}
        blocks.append(row)
        if result is None:
            continue
        row["suspect_slots"] = list(result.get("suspect_slots") or [])
        ident = "%s@%s" % (entry["address"], _identity(result.get("block") or {}))
        before = old_seen.get(ident)
        before = before if isinstance(before, dict) else {}
        mine: Dict[str, float] = {}
        for key, item in stuck_items(result).items():
            first = before.get(key)
            first = first if isinstance(first, (int, float)) and first <= began else now
            mine[key] = first
            seen_for = round(max(0.0, began - first), 3)
            (row["stuck"] if seen_for >= policy["delay"] else row["waiting"]).append(
                dict(item, seen_for_s=seen_for))
        if mine:
            new_seen[ident] = mine
        if row["stuck"]:
            row["healed"] = _heal(engine, policy, str(entry["address"]), number, record)
            heals += 1
    state.update(seen=new_seen, last_pass=now, passes=int(state.get("passes") or 0) + 1,
                 heals=int(state.get("heals") or 0) + heals, boot_id=boot_id())
    return {"schema": SCHEMA, "operation": "watch", "pass": number,
            "time": round(time.time(), 3), "blocks": blocks,
            "healed": heals, "waiting": sum(len(b["waiting"]) for b in blocks),
            "stuck": sum(len(b["stuck"]) for b in blocks),
            "suspect": sum(len(b["suspect_slots"]) for b in blocks),
            "errors": sum(1 for b in blocks if b["error"])}


def _heal(engine, policy: Dict[str, Any], address: str, number: int,
          record: Dict[str, Any]) -> Dict[str, Any]:
    """One unforced heal through the engine (before-image, audit line), summarised."""
    context = {"watch": {"policy": policy["path"], "pass": number, "delay": policy["delay"]}}
    try:
        done = engine.heal(address, repair=policy["repair"], max_bytes=policy["max_bytes"],
                           context=context, **record)
    except RecoveryError as exc:
        return {"ok": False, "error": exc.to_dict()}
    ids = done.get("snapshots") or [(done.get("snapshot") or {}).get("id")]
    return {"ok": bool(done["ok"]), "changed": bool(done["changed"]),
            "result": done["result"], "health": done.get("health"),
            "released": len(done["released"]), "refused": len(done["refused"]),
            "snapshots": [i for i in ids if i], "error": None}


# --------------------------------------------------------------------------- metrics
WATCH_METRICS = (
    ("watch_last_pass_timestamp_seconds", "gauge", "when the watch last finished a pass"),
    ("watch_passes_total", "counter", "passes of the watch (its state file keeps the count)"),
    ("watch_heals_total", "counter", "heals the watch ran"),
    ("watch_waiting_items", "gauge", "stuck slots and dead consumers seen but not yet for "
                                     "the policy's delay"),
    ("watch_suspect_slots", "gauge", "slots the watch leaves alone: holder suspect or unknown"),
)


def render(doc: Dict[str, Any], state: Dict[str, Any]) -> str:
    """The watch's textfile (Prometheus text format; names in docs/watch.md)."""
    samples = {
        "watch_last_pass_timestamp_seconds": [({}, float(doc["time"]))],
        "watch_passes_total": [({}, float(state["passes"]))],
        "watch_heals_total": [({}, float(state["heals"]))],
        "watch_waiting_items": [({"block": b["address"]}, float(len(b["waiting"])))
                                for b in doc["blocks"]],
        "watch_suspect_slots": [({"block": b["address"]}, float(len(b["suspect_slots"])))
                                for b in doc["blocks"]],
    }
    return exposition(WATCH_METRICS, samples)


# --------------------------------------------------------------------------- the loop
class _Stop:
    """When to stop: ``event`` (a caller's threading.Event) or SIGTERM/SIGINT, whose
    handler (installed in the main thread, restored on exit) only sets a flag and writes
    a byte to a pipe: a handler that took a lock (``Event.set``) could deadlock against
    the very wait it interrupts."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.signalled = False
        self.saved: Dict[int, Any] = {}
        self.pipe: Optional[Tuple[int, int]] = None

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) if hasattr(os, "pipe2") \
                else os.pipe()
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: object) -> None:  # pylint: disable=unused-argument
        self.signalled = True
        if self.pipe is not None:
            try:
                os.write(self.pipe[1], b"x")
            except OSError:
                pass

    def is_set(self) -> bool:
        return self.signalled or self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until told to stop; whether told to stop."""
        end = time.monotonic() + seconds
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            if self.pipe is not None:
                select.select([self.pipe[0]], [], [], min(left, 0.25))
            else:
                self.event.wait(min(left, 0.25))
        return True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)


def run(policy_file: str, once: bool = False,
        on_pass: Optional[Callable[[Dict[str, Any]], None]] = None,
        stop: Optional[threading.Event] = None, **record: Any) -> Dict[str, Any]:
    """Load the policy (a bad one: :class:`PolicyError` before anything else), take the
    host's watch lock (:class:`WatchRunning`), then run passes every ``interval`` seconds
    until ``stop`` is set (SIGTERM/SIGINT set it, in the main thread) or, with ``once``,
    one pass. ``on_pass(doc)`` gets each pass's document as it ends. ``record``: the
    before-image and audit options of every heal. Returns the last pass's document with
    the totals."""
    from . import _engine as engine      # the front door (which imports this module lazily)
    policy = load_policy(policy_file)
    stop = stop or threading.Event()
    fd = take_lock()
    last: Dict[str, Any] = {}
    told = _Stop(stop)
    try:
        with told:
            path = state_path(policy)
            while True:
                state = load_state(path, float(policy["interval"]), time.monotonic())
                number = int(state.get("passes") or 0) + 1
                last = one_pass(engine, policy, state, number, record)
                if state.get("note"):
                    last["note"] = state.pop("note")
                save_state(path, state)
                _export(engine, policy, last, state, record)
                if on_pass is not None:
                    on_pass(last)
                if once or told.wait(float(policy["interval"])):
                    break
    finally:
        os.close(fd)
    return dict(last, policy=policy, host=socket.gethostname(), stopped=told.is_set())


def _export(engine, policy: Dict[str, Any], doc: Dict[str, Any], state: Dict[str, Any],
            record: Dict[str, Any]) -> None:
    """The pass's textfile; after a heal the engine's metrics too (health, last heal)."""
    if not policy["textfile"]:
        return
    doc["textfiles"] = [write_textfile(policy["textfile"], render(doc, state), TEXTFILE)]
    if doc["healed"]:
        done = engine.metrics(None, textfile=policy["textfile"],
                              audit_log=record.get("audit_log"), max_bytes=policy["max_bytes"])
        doc["textfiles"].append(done["textfile"])
