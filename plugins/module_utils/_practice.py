# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Practice blocks: a real crashed DataBlock to learn recovery on.

:func:`practice` creates a new block (never an existing one) and leaves in it the fault a
user asks for, made the way a crash makes it: real producer and consumer processes
(:mod:`_actors`) SIGKILLed at a protocol point -- a writer mid-write holding a slot,
readers inside a slot with a live writer waiting behind them, consumers dead while
registered -- or committed bytes flipped behind the checksum's back. ``all`` leaves
every one of them in one block, each in its own slot.

The one live process it may leave (the writer waiting behind dead readers) is detached:
it outlives the command, finishes its write by itself once the readers are released,
and is found again by :func:`stop` through its command line (``_actors.find_actors``).
Every practice block carries :data:`PRACTICE_HUB` as its hub name: :func:`stop` removes
only such a block, so no block of an application can be removed by it.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Dict, List, Optional

from . import _layout as L
from . import _runtime as R
from ._actors import Actor, ActorError, find_actors
from ._block import check_name, open_block
from ._contract import PRACTICE_HUB, PRACTICE_NAME, PRACTICE_SCENARIOS, SCHEMA
from ._errors import BlockNotFound, RecoveryError, UsageError

#: The label of every practice actor (``_actors.find_actors``).
LABEL = "practice"
CAPACITY, STRIDE = 4, 4096
#: Which slot each fault lands in: slot 0 when alone (the README's commands), one slot
#: each under ``all``.
_SLOTS_ALONE = {"stuck_writer": 0, "stuck_readers": 0, "corruption": 0}
_SLOTS_ALL = {"stuck_writer": 0, "stuck_readers": 1, "corruption": 2}
_FLIPPED = 16     # data bytes inverted by ``corruption``


class _Stage:
    """One practice block being made: its actors and what was left in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.actors = []      # type: List[Actor]
        self.faults = []      # type: List[Dict[str, Any]]
        self.processes = []   # type: List[Dict[str, Any]]

    def actor(self, role: str, steps: list, **kwargs: Any) -> Actor:
        a = Actor(self.name, steps, label=LABEL, **kwargs)
        self.actors.append(a)
        a.start()
        return a

    def killed(self, role: str, a: Actor) -> None:
        a.kill()
        self.processes.append({"role": role, "pid": a.pid, "fate": "killed"})

    def publish(self, count: int) -> None:
        """Commit ``count`` slots from a producer process that then exits cleanly."""
        a = self.actor("producer", [("producer",), ("publish", count)])
        a.wait_point()
        a.resume()
        a.wait_exit()
        self.processes.append({"role": "producer", "pid": a.pid, "fate": "exited"})

    # -- the faults --------------------------------------------------------------------
    def stuck_writer(self, slot: int) -> None:
        """A writer SIGKILLed half-way through its write: the slot stays WRITING, locked
        by a dead pid, until ``release_writer``."""
        a = self.actor("writer", [("producer",), ("acquire",), ("write",)],
                       pause="half-written")
        got = a.wait_point()
        _expect(got.get("slot") == slot, "the writer locked slot %s, not %d"
                % (got.get("slot"), slot))
        self.killed("writer", a)
        self.faults.append({"scenario": "stuck_writer", "slot": slot, "pids": [a.pid],
                            "next": [_step("recover", slot, "release_writer")],
                            "what": "writer pid %d SIGKILLed half-way through writing slot "
                                    "%d (WRITING, write lock held by the dead pid)"
                                    % (a.pid, slot)})

    def stuck_readers(self, slot: int, readers: int = 2) -> None:
        """Readers SIGKILLed inside a committed slot, then a live writer that wants the
        slot: it waits (DRAINING) for ever, until ``release_readers``."""
        pids = []
        for k in range(readers):
            a = self.actor("reader", [("consumer", "practice-reader-%d" % k), ("read", slot)])
            a.wait_point()
            self.killed("reader", a)
            pids.append(a.pid)
        w = self.actor("waiting writer", [("producer",), ("acquire",), ("write",),
                                          ("commit",)], pause="draining", detach=True)
        got = w.wait_point()
        _expect(got.get("slot") == slot, "the writer waits on slot %s, not %d"
                % (got.get("slot"), slot))
        w.resume()                       # on into the drain wait: it stays there
        self.processes.append({"role": "waiting writer", "pid": w.pid, "fate": "alive"})
        self.faults.append({"scenario": "stuck_readers", "slot": slot, "pids": pids,
                            "live_pids": [w.pid],
                            "next": [_step("recover", slot, "release_readers"),
                                     _step("cleanup")],
                            "what": "%d readers (pids %s) SIGKILLed inside slot %d; writer "
                                    "pid %d is alive and waits for them (DRAINING)"
                                    % (readers, ", ".join(map(str, pids)), slot, w.pid)})

    def dead_consumers(self, count: int = 3) -> None:
        """Consumers SIGKILLed while registered: their entries stay until ``cleanup``."""
        pids = []
        for k in range(count):
            a = self.actor("consumer", [("consumer", "practice-consumer-%d" % k)])
            a.wait_point()
            self.killed("consumer", a)
            pids.append(a.pid)
        self.faults.append({"scenario": "dead_consumers", "slot": None, "pids": pids,
                            "next": [_step("cleanup")],
                            "what": "%d consumers (pids %s) SIGKILLed while registered"
                                    % (count, ", ".join(map(str, pids)))})

    def corruption(self, slot: int) -> None:
        """Committed bytes changed behind the checksum's back (what a stray write does):
        ``validate`` reports it; only ``--repair`` re-blesses it, on the user's word."""
        with open_block(self.name, writable=True) as block:
            geo = block.geo
            _expect(block.slot(slot, "slot_state") == L.SlotState.COMMITTED,
                    "slot %d is not committed" % slot)
            offset = geo.slot_data(slot)
            block.write(offset, bytes(b ^ 0xFF for b in block.read(offset, _FLIPPED)))
        self.faults.append({"scenario": "corruption", "slot": slot, "pids": [],
                            "next": [_step("validate"), _step("validate", repair=True)],
                            "what": "%d data bytes of committed slot %d inverted: its "
                                    "checksum no longer matches" % (_FLIPPED, slot)})

    def close(self, keep: bool) -> None:
        """Leave detached actors running when ``keep``; kill every other one."""
        for a in self.actors:
            if keep and a.detach and a.exit_status is None:
                a.leave()
            else:
                a.close()


def _step(operation: str, slot: Optional[int] = None, action: Optional[str] = None,
          repair: bool = False) -> Dict[str, Any]:
    """The seed procedure's step for a fault, in the shape of diagnose's ``next``."""
    step = {"operation": operation}  # type: Dict[str, Any]
    if slot is not None:
        step.update(slot=slot, action=action)
    if repair:
        step["repair"] = True
    return step


def _mount_ns(pid: str) -> Optional[int]:
    try:
        return os.stat("/proc/%s/ns/mnt" % pid).st_ino
    except OSError:
        return None


def _ours(pids: List[int]) -> List[int]:
    """The pids that see the same /dev/shm as we do (our mount namespace): a practice
    block of the same name in another namespace is another block."""
    mine = _mount_ns("self")
    return [p for p in pids if _mount_ns(str(p)) == mine]


def _expect(ok: bool, why: str) -> None:
    if not ok:
        raise ActorError(why)


def practice(scenario: str, name: Optional[str] = None) -> Dict[str, Any]:
    """Create block ``name`` (default :data:`PRACTICE_NAME`; refused if it exists) and
    leave ``scenario`` in it; returns what was left, every process and its fate, and
    the pids left alive. On any failure everything made is undone."""
    if scenario not in PRACTICE_SCENARIOS:
        raise UsageError("unknown practice scenario %r (one of: %s)"
                         % (scenario, ", ".join(PRACTICE_SCENARIOS)))
    name = PRACTICE_NAME if name is None else name
    path = check_name(name)
    if os.path.lexists(path):
        raise UsageError("%s already exists: practice makes a new block and never touches "
                         "an existing one; choose another --name" % path)
    block = R.create(name, capacity=CAPACITY, stride=STRIDE, hub_name=PRACTICE_HUB,
                     producer_name=PRACTICE_HUB)   # refused (exit 2) when it exists
    block.close()
    stage = _Stage(name)
    done = False
    try:
        stage.publish(CAPACITY)                  # every slot committed: data to protect
        slots = _SLOTS_ALL if scenario == "all" else _SLOTS_ALONE
        if scenario in ("stuck_writer", "all"):
            stage.stuck_writer(slots["stuck_writer"])
        if scenario in ("stuck_readers", "all"):
            stage.stuck_readers(slots["stuck_readers"])
        if scenario in ("dead_consumers", "all"):
            stage.dead_consumers()
        if scenario in ("corruption", "all"):
            stage.corruption(slots["corruption"])
        done = True
    except ActorError as exc:
        raise RecoveryError("could not make the practice block %s: %s" % (name, exc))
    finally:
        stage.close(keep=done)
        if not done:
            R.destroy(name)
    live = [p["pid"] for p in stage.processes if p["fate"] == "alive"]
    return {"schema": SCHEMA, "operation": "practice", "scenario": scenario, "block": name,
            "path": path, "changed": True, "capacity": CAPACITY, "stride": STRIDE,
            "faults": stage.faults, "processes": stage.processes, "live_pids": live}


def stop(name: Optional[str] = None) -> Dict[str, Any]:
    """Kill the live processes a practice left on block ``name`` and remove the block,
    only if it is a practice block (hub name :data:`PRACTICE_HUB`). Nothing left:
    success, ``changed`` false."""
    name = PRACTICE_NAME if name is None else name
    path = check_name(name)
    exists = True
    try:
        with open_block(name, writable=False) as block:
            hub = block.get("hub_name")
    except BlockNotFound:
        exists, hub = False, PRACTICE_HUB
    if hub != PRACTICE_HUB:
        raise UsageError("%s is not a practice block (its hub name is not %r): not removed"
                         % (name, PRACTICE_HUB))
    killed = _ours(find_actors(LABEL, name))
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10.0
    while _ours(find_actors(LABEL, name)) and time.monotonic() < deadline:
        time.sleep(0.01)
    if exists:
        R.destroy(name)
    return {"schema": SCHEMA, "operation": "practice-stop", "block": name, "path": path,
            "changed": bool(killed) or exists, "killed": killed, "removed": exists}
