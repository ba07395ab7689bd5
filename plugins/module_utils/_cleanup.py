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
*recomputed* from the surviving entries and set by CAS on the observed value, but only
when the table stays still for ~60 ms (a live consumer claims its entry a moment before it
counts itself): a table that is moving is left for a later run.
"""

from __future__ import annotations

import time
from typing import Dict, List

from . import _layout as L
from ._contract import FAILED, SUCCESS
from ._errors import ConcurrentChange
from ._observe import ConsumerView, Scene
from ._recover import plan_slot
from ._validate import _SETTLE_S
from ._wording import did

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
    cleaned = counted = 0
    for c in dead:
        if _still_inside(scene, c):
            outcomes.append({"consumer": c.index, "pid": c.pid, "result": FAILED,
                             "message": "consumer %d (pid %d): its reader in slot %d cannot "
                             "be released yet (see that slot's outcome); the entry stays so a "
                             "later run can still attribute it" % (c.index, c.pid, c.reading)})
            continue
        try:
            _clear_entry(scene, c)
        except ConcurrentChange as exc:
            plan.rollback()
            outcomes.append({"consumer": c.index, "pid": c.pid, "result": FAILED,
                             "message": "consumer %d: %s; nothing changed" % (c.index, exc)})
            continue
        plan.commit()
        cleaned += 1
        counted += 1 if c.heartbeat_ns else 0    # stamped after its count += 1
        outcomes.append({"consumer": c.index, "pid": c.pid, "result": SUCCESS,
                         "message": "consumer %d (pid %d, %s, %s): %s"
                         % (c.index, c.pid, c.name or "unnamed", c.verdict.state,
                            did(plan.dry_run, "clear", "its entry")),
                         "verdict": c.verdict.to_dict()})
    # 3. reconcile from survivors; upstream counts one action per entry cleaned
    reconciled = _reconcile(scene, counted)
    fixed = [r for r in reconciled if "after" in r]
    plan.count_recovery(cleaned or (1 if fixed else 0))
    return {"cleaned": cleaned, "outcomes": outcomes, "reconciled": reconciled}


def _still_inside(scene: Scene, c: ConsumerView) -> bool:
    """True when our evidence still says ``c`` reads a slot whose readers step 1 could not
    release (refused, or a live reader moved the count): clearing the entry now would
    wipe the only record of that reader, and the writer waiting on it would wait forever."""
    if c.reading is None or not 0 <= c.reading < scene.block.geo.capacity:
        return False
    if scene.plan.get(CEV["reading"], L.consumer_evidence(c.index)) != c.reading + 1:
        return False                      # step 1 released it and consumed the evidence
    return bool(scene.plan.get(L.SLOT["reader_count"],
                               scene.block.geo.slot_entry(c.reading)))


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
        plan.put(label + name, base + fld.offset, before, b"\0" * fld.size, text=True)
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
    pids, count, positions, read_index = seen[:4]
    survivors = [k for k, pid in enumerate(pids) if pid]
    out = {}
    if count != len(survivors):
        out["active_consumer_count"] = len(survivors)
    if positions is not None and survivors:
        low = min(positions[k] for k in survivors)
        if read_index != low:
            out["read_index"] = low
    return out


def _uncount(plan, counted: int) -> List[Dict[str, object]]:
    """The table keeps moving (live consumers stamp their heartbeat at every read), so it
    cannot be recounted: do what each cleared consumer's own unregister would have done,
    count -= 1 per entry that had counted itself, never below zero, by CAS on the value
    seen (retried: live consumers move the count too)."""
    field = L.HEADER["active_consumer_count"]
    for dummy in range(16):
        count = plan.get(field)
        if counted <= 0 or count == 0 or count >= 1 << 31:
            return []
        plan.begin()
        try:
            plan.cas("header.active_consumer_count", field, 0, count, max(0, count - counted))
        except ConcurrentChange:
            plan.rollback()
            continue
        plan.commit()
        return [{"field": "active_consumer_count", "before": count,
                 "after": max(0, count - counted)}]
    return [{"field": "header.active_consumer_count", "result": FAILED,
             "message": "active_consumer_count kept changing; run again"}]


def _reconcile(scene: Scene, counted: int = 0) -> List[Dict[str, object]]:
    plan = scene.plan
    seen = _survey(plan)
    if not _targets(seen):
        return []
    # A live consumer claims its entry a moment before counting itself (and uncounts
    # itself a moment after freeing it): a mismatch is only acted on when every look over
    # ~60 ms reads the very same words, else a count "fixed" mid-(un)registration would
    # drift or underflow when that consumer finishes. A moving table is only uncounted.
    for pause in _SETTLE_S:
        time.sleep(pause)
        if _survey(plan) != seen:
            return _uncount(plan, counted)
    count, read_index = seen[1], seen[3]
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
        return [{"field": exc.details.get("target"), "result": FAILED, "message": str(exc)}]
    plan.commit()
    return done
