# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Clean up dead consumers, then reconcile the counts from what survives.

pylabhub's own cleanup only CASes the pid to 0 and decrements the count; it leaves the
uid, name and read position stale and never reconciles ``active_consumer_count`` or
``read_index``. Ours, per dead entry: release the readers our evidence attributes to it
(otherwise that knowledge would be wiped with the entry), claim the entry by CAS
dead-pid -> our pid (so a consumer registering at the same moment cannot have its fresh
identity wiped), clear heartbeat, uid, name, read position and evidence, then CAS our pid
-> 0. Afterwards ``active_consumer_count`` and (Sequential_sync) ``read_index`` are
*recomputed* from the surviving entries and set by CAS on the observed value.
"""

from __future__ import annotations

import time
from typing import Dict, List

from . import _layout as L
from ._errors import ConcurrentChange
from ._observe import ConsumerView, Scene
from ._recover import plan_slot
from ._validate import _SETTLE_S

CONS = L.CONSUMER
CEV = L.CONSUMER_EVIDENCE


def cleanup(scene: Scene) -> Dict[str, object]:
    """Clear every dead consumer's entry; return the per-entry outcomes and reconciliation."""
    plan = scene.plan
    outcomes: List[Dict[str, object]] = []
    dead = [c for c in scene.consumers if c.dead]
    # 1. readers the dead consumers still hold (known from our evidence only)
    for index in sorted({c.reading for c in dead if c.reading is not None}):
        if 0 <= index < scene.block.geo.capacity and scene.slot(index).reader_count:
            outcomes.append(plan_slot(scene, index, "release_readers"))
    # 2. the entries themselves
    cleaned = 0
    for c in dead:
        try:
            _clear_entry(scene, c)
        except ConcurrentChange as exc:
            plan.rollback()
            outcomes.append({"consumer": c.index, "pid": c.pid, "result": "FAILED",
                             "message": "consumer %d: %s; nothing changed" % (c.index, exc)})
            continue
        plan.commit()
        cleaned += 1
        outcomes.append({"consumer": c.index, "pid": c.pid, "result": "SUCCESS",
                         "message": "consumer %d (pid %d, %s): entry cleared; %s"
                         % (c.index, c.pid, c.name or "unnamed", "; ".join(c.verdict.evidence)),
                         "verdict": c.verdict.to_dict()})
    # 3. reconcile from survivors; upstream counts one action per entry cleaned
    reconciled = _reconcile(scene)
    fixed = [r for r in reconciled if "after" in r]
    plan.count_recovery(cleaned or (1 if fixed else 0))
    return {"cleaned": cleaned, "outcomes": outcomes, "reconciled": reconciled}


def _clear_entry(scene: Scene, c: ConsumerView) -> None:
    plan = scene.plan
    base = L.consumer_entry(c.index)
    label = "consumer[%d]." % c.index
    plan.begin()
    plan.cas(label + "consumer_pid", CONS["consumer_pid"], base, c.pid, plan.pid)
    plan.cas(label + "last_heartbeat_ns", CONS["last_heartbeat_ns"], base, c.heartbeat_ns, 0)
    for name in ("consumer_uid", "consumer_name"):
        fld = CONS[name]
        before = scene.plan.read(base + fld.offset, fld.size)
        plan.put(label + name, base + fld.offset, before, b"\0" * fld.size)
    pos = L.read_position(c.index)
    plan.cas(label + "read_position", L.READ_POSITION, pos, plan.get(L.READ_POSITION, pos), 0)
    if scene.has_evidence:
        ev = L.consumer_evidence(c.index)
        for name in ("reading", "start", "pid"):
            plan.cas(label + "evidence_" + name, CEV[name], ev, plan.get(CEV[name], ev), 0)
    plan.cas(label + "consumer_pid", CONS["consumer_pid"], base, plan.pid, 0)


def _survey(plan) -> tuple:
    """The words reconciliation reads: every entry's pid, the count and, under
    Sequential_sync, the read positions and read_index."""
    pids = tuple(plan.get(CONS["consumer_pid"], L.consumer_entry(k))
                 for k in range(L.MAX_CONSUMERS))
    # heartbeats are stamped at every registration: a look that returns to the same pids
    # and count after a whole unregister/register cycle still differs here
    beats = tuple(plan.get(CONS["last_heartbeat_ns"], L.consumer_entry(k))
                  for k in range(L.MAX_CONSUMERS))
    if plan.hdr("consumer_sync_policy") != L.ConsumerSync.SEQUENTIAL_SYNC:
        return pids, plan.hdr("active_consumer_count"), None, None, beats
    positions = tuple(plan.get(L.READ_POSITION, L.read_position(k))
                      for k in range(L.MAX_CONSUMERS))
    return pids, plan.hdr("active_consumer_count"), positions, plan.hdr("read_index"), beats


def _targets(seen: tuple) -> Dict[str, int]:
    """What the survivors say the count (and read_index) should be."""
    pids, count, positions, read_index, _ = seen
    survivors = [k for k, pid in enumerate(pids) if pid]
    out = {}
    if count != len(survivors):
        out["active_consumer_count"] = len(survivors)
    if positions is not None and survivors:
        low = min(positions[k] for k in survivors)
        if read_index != low:
            out["read_index"] = low
    return out


def _reconcile(scene: Scene) -> List[Dict[str, object]]:
    plan = scene.plan
    seen = _survey(plan)
    if not _targets(seen):
        return []
    # A live consumer claims its entry a moment before counting itself (and uncounts
    # itself a moment after freeing it): a mismatch is only acted on when every look over
    # ~60 ms reads the very same words, else a count "fixed" mid-(un)registration would
    # drift or underflow when that consumer finishes. A moving table is left for later.
    for pause in _SETTLE_S:
        time.sleep(pause)
        if _survey(plan) != seen:
            return []
    _, count, _, read_index, _ = seen
    targets = _targets(seen)
    done: List[Dict[str, object]] = []
    plan.begin()
    try:
        if "active_consumer_count" in targets:
            plan.cas("header.active_consumer_count", L.HEADER["active_consumer_count"], 0,
                     count, targets["active_consumer_count"])
            done.append({"field": "active_consumer_count", "before": count,
                         "after": targets["active_consumer_count"]})
        if "read_index" in targets:
            plan.cas("header.read_index", L.HEADER["read_index"], 0, read_index,
                     targets["read_index"])
            done.append({"field": "read_index", "before": read_index,
                         "after": targets["read_index"]})
    except ConcurrentChange as exc:
        plan.rollback()
        return [{"field": exc.details.get("target"), "result": "FAILED", "message": str(exc)}]
    plan.commit()
    return done
