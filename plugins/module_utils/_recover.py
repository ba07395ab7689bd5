# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slot recovery: release_writer, release_readers, force_reset.

Each action is planned from one observation of the slot and applied as one step of CAS
changes (see :mod:`_plan`). Rules (pylabhub's own defects, spec section 6, not copied):

* a holder is released without ``force`` only when its verdict is ``dead``; alive,
  suspect-hung and unknown holders are refused (UNSAFE) with the verdict and evidence;
* releasing a dead writer never makes half-written data readable: WRITING becomes FREE,
  DRAINING (the writer had not touched the data yet) returns to COMMITTED so the last
  commit survives, writer_waiting is cleared, and a write_index the dead writer advanced is
  rolled back as its abort would have done, keeping write_index/commit_index consistent;
* readers are released only as far as they are provably dead (see :mod:`_observe`);
* while changing several words of a slot we hold its write lock under our own PID, so no
  writer (ours or C++) can enter the slot half-way through.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from . import _layout as L
from ._errors import ConcurrentChange, UsageError
from ._observe import Scene, SlotView

ACTIONS = ("release_writer", "release_readers", "force_reset")
SUCCESS, FAILED, UNSAFE, NOT_STUCK, INVALID_SLOT = (
    "SUCCESS", "FAILED", "UNSAFE", "NOT_STUCK", "INVALID_SLOT")
SLOT = L.SLOT
CEV = L.CONSUMER_EVIDENCE
_S = L.SlotState


def outcome(slot: int, result: str, message: str, view: Optional[SlotView] = None,
            **extra: object) -> Dict[str, object]:
    out: Dict[str, object] = {"slot": slot, "result": result, "message": message,
                              "holder": view.writer.to_dict() if view and view.writer else None}
    out.update(extra)
    return out


def _label(index: int, name: str) -> str:
    return "slot[%d].%s" % (index, name)


def _after_writer(state: int) -> int:
    """What a slot becomes once its writer is gone: data a writer touched is neutralised."""
    if state == _S.DRAINING:
        return int(_S.COMMITTED)
    if state == _S.WRITING:
        return int(_S.FREE)
    return state


def _refusal(view: SlotView, what: str, scene: Scene) -> str:
    if what == "writer":
        v = view.writer
        return ("slot %d: write lock held by pid %d, verdict %s (%s); not released without force"
                % (view.index, v.pid, v.state, "; ".join(v.evidence)))
    live = [c for c in scene.live_consumers if c.reading == view.index or not c.has_evidence]
    who = ", ".join("pid %d (%s)" % (c.pid, c.verdict.state) for c in live) or (
        "no reader is attributable and a live process exists (producer pid %s)"
        % (scene.producer_pid or "?"))
    return ("slot %d: %d reader(s), %d provably dead; may still be inside: %s; not released "
            "without force" % (view.index, view.reader_count, view.releasable_readers, who))


def plan_slot(scene: Scene, index: int, action: str, force: bool = False) -> Dict[str, object]:
    """Plan and apply (or, in a dry run, simulate) one action on one slot."""
    view = scene.slot(index)
    release_writer = action in ("release_writer", "force_reset")
    release_readers = action in ("release_readers", "force_reset")
    warnings: List[str] = []

    writer_todo = release_writer and (view.write_lock != 0 or view.orphaned or
                                      (view.writer_waiting and view.state != _S.DRAINING))
    readers_todo = release_readers and view.reader_count > 0
    if not writer_todo and not readers_todo:
        return outcome(index, NOT_STUCK, "slot %d: nothing to release (%s, lock %d, %d readers)"
                       % (index, L.enum_name(_S, view.state), view.write_lock,
                          view.reader_count), view)

    if writer_todo and view.write_lock and not view.writer_dead:
        if not force:
            return outcome(index, UNSAFE, _refusal(view, "writer", scene), view)
        warnings.append("FORCED: released the write lock of pid %d whose verdict is %s"
                        % (view.write_lock, view.writer.state))
    new_readers = view.reader_count
    if readers_todo:
        if force:
            if view.releasable_readers < view.reader_count:
                warnings.append("FORCED: cleared %d reader(s) of slot %d that may be live"
                                % (view.reader_count - view.releasable_readers, index))
            new_readers = 0
        elif view.releasable_readers == 0 or (action == "force_reset" and
                                              view.releasable_readers < view.reader_count):
            return outcome(index, UNSAFE, _refusal(view, "readers", scene), view)
        else:
            new_readers = view.reader_count - view.releasable_readers

    try:
        _apply(scene, view, writer_todo, new_readers)
    except ConcurrentChange as exc:
        lost = scene.plan.rollback()
        kept = ("; left to the live process that changed them: %s" % ", ".join(lost)
                if lost else "; nothing changed")
        return outcome(index, FAILED, "slot %d: %s%s; run again" % (index, exc, kept), view)
    step = scene.plan.commit()
    scene.plan.count_recovery(1 if step else 0)
    left = (" (%d reader(s) kept: they may be live)" % new_readers) if new_readers else ""
    message = "slot %d: %s%s" % (index, _describe(view, writer_todo, new_readers), left)
    result = outcome(index, SUCCESS, message, view)
    if warnings:
        result["warnings"] = warnings
    return result


def _describe(view: SlotView, writer: bool, new_readers: int) -> str:
    parts = []
    if writer:
        after = _after_writer(view.state)
        parts.append("released write lock%s, %s -> %s" % (
            " of dead pid %d" % view.write_lock if view.write_lock else "",
            L.enum_name(_S, view.state), L.enum_name(_S, after)))
    if new_readers != view.reader_count:
        parts.append("reader_count %d -> %d" % (view.reader_count, new_readers))
    return "; ".join(parts)


def _apply(scene: Scene, view: SlotView, writer: bool, new_readers: int) -> None:
    plan, block = scene.plan, scene.block
    base = block.geo.slot_entry(view.index)
    i = view.index
    plan.begin()
    if writer:
        # Claim the slot: the dead (or forced) holder's lock becomes ours for the step.
        plan.cas(_label(i, "write_lock"), SLOT["write_lock"], base, view.write_lock, plan.pid)
        plan.cas(_label(i, "writer_waiting"), SLOT["writer_waiting"], base,
                 view.writer_waiting, 0)
        after = _after_writer(view.state)
        plan.cas(_label(i, "slot_state"), SLOT["slot_state"], base, view.state, after)
        if view.state in (_S.WRITING, _S.DRAINING):
            _roll_back_write_index(scene, i)
    if new_readers != view.reader_count:
        plan.cas(_label(i, "reader_count"), SLOT["reader_count"], base, view.reader_count,
                 new_readers)
        _consume_attribution(scene, view, view.reader_count - new_readers)
    if writer:
        plan.cas(_label(i, "write_lock"), SLOT["write_lock"], base, plan.pid, 0)


def _roll_back_write_index(scene: Scene, index: int) -> None:
    """Undo the dead writer's claim of a slot id, as its abort would have (only when it
    was the newest claim and is not committed)."""
    plan = scene.plan
    write_index = plan.hdr("write_index")
    commit_index = plan.hdr("commit_index")
    claimed = write_index - 1
    if write_index == 0 or claimed % scene.block.geo.capacity != index:
        return
    if commit_index != L.NO_COMMIT and commit_index >= claimed:
        return
    plan.cas("header.write_index", L.HEADER["write_index"], 0, write_index, claimed)


def _consume_attribution(scene: Scene, view: SlotView, released: int) -> None:
    """Clear the 'reading' evidence of the dead consumers whose readers were released."""
    for c in view.readers_in:
        if released <= 0:
            break
        if c.dead:
            ev = L.consumer_evidence(c.index)
            scene.plan.cas("consumer[%d].reading" % c.index, CEV["reading"], ev,
                           view.index + 1, 0)
            released -= 1


def targets(scene: Scene, slot) -> List[int]:
    capacity = scene.block.geo.capacity
    if slot == "all" or slot is None:
        return list(range(capacity))
    scene.block.check_slot(slot)
    return [slot]


def check_action(action: str) -> None:
    if action not in ACTIONS:
        raise UsageError("unknown action %r; choose one of %s" % (action, ", ".join(ACTIONS)))
