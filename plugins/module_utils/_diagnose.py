# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Explain a block: per slot who holds what, whether it is stuck, why, and what to do.

Read-only. Built on :class:`_observe.Scene`, so the stuck/releasable judgement shown to
the operator is exactly the one recovery will act on.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from . import _layout as L
from ._observe import ConsumerView, Scene, SlotView
from ._validate import flex_findings, state_findings

_S = L.SlotState


def _age_s(scene: Scene, stamp: Optional[int]) -> Optional[float]:
    """Seconds since a monotonic stamp of this boot; None when unknown or not ours."""
    if not stamp:
        return None
    age = scene.now.refreshed().monotonic_ns - stamp
    return round(age / 1e9, 3) if age >= 0 else None


def explain_slot(scene: Scene, view: SlotView) -> Dict[str, object]:
    writer_stuck = bool((view.write_lock and view.writer_dead) or view.orphaned)
    readers_stuck = view.releasable_readers > 0
    suspect = view.writer_suspect
    state = L.enum_name(_S, view.state)
    reason, action, since = "", None, None
    if writer_stuck and readers_stuck:
        reason = ("deadlock: writer %s gone while %s, %d reader(s) of dead consumers inside"
                  % ("pid %d" % view.write_lock if view.write_lock else "(none)", state,
                     view.releasable_readers))
        action = "force_reset"
    elif writer_stuck:
        reason = ("write lock held by dead pid %d (%s)" % (view.write_lock, state)
                  if view.write_lock else "%s with no write lock: orphaned" % state)
        action = "release_writer"
    elif readers_stuck:
        waiting = (" ; writer pid %d waits for them forever" % view.write_lock
                   if view.state == _S.DRAINING and view.write_lock else "")
        reason = "%d of %d reader(s) provably dead%s" % (
            view.releasable_readers, view.reader_count, waiting)
        action = "release_readers"
    elif suspect:
        reason = ("write lock held by pid %d whose verdict is %s: not released without --force"
                  % (view.write_lock, view.writer.state))
    elif view.reader_count and view.state == _S.DRAINING:
        reason = ("writer pid %d waits for %d reader(s) that may be live"
                  % (view.write_lock, view.reader_count))
    if writer_stuck:
        since = view.locked_ns or (scene.producer_hb if view.write_lock == scene.producer_pid
                                   else None) or view.changed_ns
    elif readers_stuck:
        since = max([c.heartbeat_ns for c in view.readers_in if c.dead] or [0]) or None
    return {
        "index": view.index,
        "state": state,
        "write_lock": view.write_lock,
        "writer": view.writer.to_dict() if view.writer else None,
        "reader_count": view.reader_count,
        "readers": {
            "attributed": [{"consumer": c.index, "pid": c.pid, "state": c.verdict.state}
                           for c in view.readers_in],
            "provably_dead": view.releasable_readers,
            "may_be_live": view.live_possible,
        },
        "writer_waiting": bool(view.writer_waiting),
        "write_generation": view.generation,
        "is_stuck": writer_stuck or readers_stuck,
        "suspect": suspect,
        "stuck_for_s": _age_s(scene, since) if (writer_stuck or readers_stuck) else None,
        "reason": reason,
        "action": action,
    }


def explain_consumer(scene: Scene, c: ConsumerView) -> Dict[str, object]:
    return {"index": c.index, "pid": c.pid, "name": c.name, "uid": c.uid,
            "last_seen_s": _age_s(scene, c.heartbeat_ns), "reading_slot": c.reading,
            "verdict": c.verdict.to_dict(), "action": "cleanup" if c.dead else None}


def report(scene: Scene, slot: Optional[int] = None,
           slots: Optional[Iterable[int]] = None) -> Dict[str, object]:
    """The whole diagnosis (or one slot's) as plain data. ``slots`` restricts the slots
    explained (heal's summary passes the slots in use: the others are FREE and idle)."""
    block = scene.block
    if slots is not None:
        indexes = list(slots)  # type: Iterable[int]
    else:
        indexes = range(block.geo.capacity) if slot is None else [block.check_slot(slot)]
    slots = [explain_slot(scene, scene.slot(i)) for i in indexes]
    consumers = [explain_consumer(scene, c) for c in scene.consumers]
    findings: List[Dict[str, object]] = []
    if scene.producer and scene.producer.is_dead:
        findings.append({"code": "dead-producer", "severity": "info",
                         "message": "producer pid %d is dead: committed data stays readable; a "
                                    "new producer may attach" % scene.producer_pid})
    for c in consumers:
        if c["action"]:
            findings.append({"code": "dead-consumer", "severity": "warning", "consumer":
                             c["index"], "message": "consumer %d (pid %d) is dead: cleanup"
                             % (c["index"], c["pid"])})
    findings += [f for f in state_findings(scene.plan)
                 if slot is None or f.get("slot") in (None, slot)]
    findings += flex_findings(scene.plan)     # block-level: every read may depend on it
    stuck = [s["index"] for s in slots if s["is_stuck"]]
    suspect = [s["index"] for s in slots if s["suspect"]]
    return {
        "healthy": not stuck and not any(f["severity"] != "info" for f in findings),
        "stuck_slots": stuck,
        "suspect_slots": suspect,
        "slots": slots,
        "consumers": consumers,
        "producer": {
            "pid": scene.producer_pid, "name": block.get("producer_name"),
            "uid": block.get("producer_uid"), "last_seen_s": _age_s(scene, scene.producer_hb),
            "verdict": scene.producer.to_dict() if scene.producer else None,
        },
        "findings": findings,
    }
