# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slot recovery: release_writer, release_readers, force_reset.

Each action is planned from one observation of the slot and applied as one step of CAS
changes (see :mod:`_plan`). Rules (pylabhub's own defects, spec section 6, not copied):

* a holder is released without ``force`` only when its verdict is ``dead``; alive,
  suspect-hung and unknown holders are refused (UNSAFE) with the verdict and evidence, and
  with the forced command that would release them (``next``);
* releasing a dead writer never makes half-written data readable: WRITING becomes FREE,
  DRAINING (the writer had not touched the data yet) returns to COMMITTED so the last
  commit survives, writer_waiting is cleared, and a write_index the dead writer advanced is
  rolled back as its abort would have done, keeping write_index/commit_index consistent;
* a dead writer's torn bytes never stay behind: before WRITING becomes FREE the slot's
  data is scrubbed to zeros (only pages not zero already) and, under the Enforced checksum
  policy, its checksum becomes BLAKE2b(zeros) with the verified byte 0, so pylabhub's own
  validate_integrity (which checks FREE slots once the ring has wrapped) passes;
* readers are released only as far as no live process could be inside (see
  :mod:`_observe`, the reader rule);
* while changing several words of a slot we hold its write lock under our own PID, so no
  writer (ours or C++) can enter the slot half-way through.

Kill safety (a recovery SIGKILLed between any two stores is finished by the next run):
a writer release stores, in this order, (1) the claim: lock -> our pid (once we are dead,
our pid is a dead holder the next run releases); (2) the rollback of the lock holder's
write_index claim, while the state still says what the dead writer left, decided by a
test that is false once done
(``write_index == commit_index + 2``), so a second run never rolls back twice; (3) the
scrub and checksum, decided from the bytes themselves (already zero: nothing to do);
(4) the state; (5) writer_waiting; (6) the readers; (7) the unlock. Every prefix is a
slot still locked by a dead pid with a state the next run handles the same way.
"""

from __future__ import annotations


from . import _layout as L
from ._contract import FAILED, NOT_STUCK, SUCCESS, UNSAFE
from ._contract import SLOT_ACTIONS as ACTIONS
from ._errors import ConcurrentChange, UsageError
from ._observe import Scene, SlotView
from ._status import step
from ._wording import did, did_all, plural

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, List, Optional, Tuple

SLOT = L.SLOT
_S = L.SlotState
_U64 = (1 << 64) - 1


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


def _refusal(view: SlotView, what: str, scene: Scene) -> Tuple[str, List[str]]:
    """A refusal in one short line (who holds the slot, the verdict), and the evidence
    behind each verdict (the outcome's ``evidence``; the CLI shows it with --verbose)."""
    if what == "writer":
        v = view.writer
        return ("slot %d: write lock held by pid %d, verdict %s; releasing it needs force"
                % (view.index, v.pid, v.state), ["pid %d: %s" % (v.pid, e) for e in v.evidence])
    inside = [c for c in view.candidates if c.contribution != 0]
    who = ", ".join("pid %d (alive) [%s]" % (c.opener.pid, c.why) for c in inside)
    if view.scope not in ("host", "namespace", "exclusive"):     # partial: no proof
        who = ((who + "; and ") if who else "") + "any process this partial scan cannot see"
    waits = (", writer pid %d waits for them" % view.write_lock
             if view.state == _S.DRAINING and view.writer_waiting and view.write_lock else "")
    evidence = ["pid %d (NSpid %s, state %s): %s" % (
        c.opener.pid, " ".join(str(p) for p in c.opener.nspid), c.opener.state, c.why)
        for c in view.candidates]
    message = ("slot %d: %s%s, %d provably gone; may still be inside: %s; releasing them "
               "needs force" % (view.index, plural(view.reader_count, "reader"), waits,
                                view.releasable_readers, who or "?"))
    return message, evidence


def refused(index: int, action: str, why: Tuple[str, List[str]],
            view: SlotView) -> Dict[str, object]:
    """An UNSAFE outcome: one short ``message``, the ``evidence`` of the verdicts, and the
    forced command that would do it anyway (``next``)."""
    message, evidence = why
    return outcome(index, UNSAFE, message, view, evidence=evidence,
                   next=step("recover", index, action, True))


def plan_slot(scene: Scene, index: int, action: str, force: bool = False) -> Dict[str, object]:
    """Plan and apply (or, in a dry run, simulate) one action on one slot."""
    view = scene.slot(index)
    release_writer = action in ("release_writer", "force_reset")
    release_readers = action in ("release_readers", "force_reset")
    warnings: List[str] = []
    dry = scene.plan.dry_run

    writer_todo = release_writer and (view.write_lock != 0 or view.orphaned or
                                      (view.writer_waiting and view.state != _S.DRAINING))
    readers_todo = release_readers and view.reader_count > 0
    if not writer_todo and not readers_todo:
        return outcome(index, NOT_STUCK, "slot %d: nothing to release (%s, lock %d, %d readers)"
                       % (index, L.enum_name(_S, view.state), view.write_lock,
                          view.reader_count), view)

    if writer_todo and view.write_lock and not view.writer_dead:
        if not force:
            return refused(index, action, _refusal(view, "writer", scene), view)
        warnings.append("FORCED: %s" % did(dry, "release", "the write lock of pid %d whose "
                                           "verdict is %s" % (view.write_lock, view.writer.state)))
    new_readers = view.reader_count
    if readers_todo:
        if force:
            if view.releasable_readers < view.reader_count:
                maybe_live = view.reader_count - view.releasable_readers
                warnings.append("FORCED: %s" % did(dry, "clear", "%s of slot %d that may be live"
                                                   % (plural(maybe_live, "reader"), index)))
            new_readers = 0
        elif view.releasable_readers == 0 or (action == "force_reset" and
                                              view.releasable_readers < view.reader_count):
            return refused(index, action, _refusal(view, "readers", scene), view)
        else:
            new_readers = view.reader_count - view.releasable_readers

    try:
        _apply(scene, view, writer_todo, new_readers)
    except ConcurrentChange as exc:
        lost = scene.plan.rollback()
        kept = ("; left to the live process that changed them: %s" % ", ".join(lost)
                if lost else "; nothing changed")
        return outcome(index, FAILED, "slot %d: %s%s; run again" % (index, exc, kept), view)
    done = scene.plan.commit()
    scene.plan.count_recovery(1 if done else 0)
    scrubbed = any(c.target == _label(index, "data") for c in done)
    message = "slot %d: %s" % (index, _describe(view, writer_todo, new_readers, scrubbed, dry))
    result = outcome(index, SUCCESS, message, view)
    if warnings:
        result["warnings"] = warnings
    return result


def _describe(view: SlotView, writer: bool, new_readers: int, scrubbed: bool,
              dry: bool) -> str:
    """What a release did (or, in a dry run, would do), in the tense of the run."""
    parts = []
    if writer:
        after = _after_writer(view.state)
        if view.writer_dead:
            what = "the write lock of dead pid %d" % view.write_lock
        elif view.write_lock:
            what = "the write lock of pid %d (%s)" % (
                view.write_lock, view.writer.state if view.writer else "?")
        elif view.orphaned:
            what = "the orphaned slot"
        else:               # unlocked, neither WRITING nor DRAINING: writer_waiting alone
            what = "the stray writer_waiting flag"
        parts.append(("release", "%s (%s)" % (what, "%s → %s" % (
            L.enum_name(_S, view.state), L.enum_name(_S, after)) if after != view.state
            else "the slot stays %s" % L.enum_name(_S, after))))
    if scrubbed:
        parts.append(("scrub", "the torn bytes to zeros"))
    if new_readers != view.reader_count:
        parts.append(("release", "%s (reader_count %d → %d)" % (
            plural(view.reader_count - new_readers, "reader"), view.reader_count,
            new_readers)))
    text = did_all(dry, parts)
    if new_readers:
        text += "; %s may be live and stay%s counted" % (
            plural(new_readers, "reader"), "s" if new_readers == 1 else "")
    return text


def _apply(scene: Scene, view: SlotView, writer: bool, new_readers: int) -> None:
    """One step, stores in kill-safe order (module doc): claim, write_index, scrub, state,
    writer_waiting, readers, unlock."""
    plan, block = scene.plan, scene.block
    base = block.geo.slot_entry(view.index)
    i = view.index
    plan.begin()
    if writer:
        # 1. Claim the slot: the dead (or forced) holder's lock becomes ours for the step.
        plan.cas(_label(i, "write_lock"), SLOT["write_lock"], base, view.write_lock, plan.pid)
        # 2. Undo the holder's claim of a slot id while the state still shows it. Only a
        #    lock's holder is known to have claimed: with no lock (an orphan, a stray
        #    writer_waiting) the id may be a live producer's between its claim and its
        #    lock; an index left out of step is heal's, by the producer's verdict.
        if view.write_lock:
            roll_back_write_index(scene, i)
        # 3. Torn bytes of a writer that is gone never stay behind (a writer released by
        #    force may be alive and still writing: its bytes are left to it).
        if view.state == _S.WRITING and (view.writer_dead or not view.write_lock):
            scrub_slot(scene, i)
        plan.cas(_label(i, "slot_state"), SLOT["slot_state"], base, view.state,
                 _after_writer(view.state))
        plan.cas(_label(i, "writer_waiting"), SLOT["writer_waiting"], base,
                 view.writer_waiting, 0)
    if new_readers != view.reader_count:
        plan.cas(_label(i, "reader_count"), SLOT["reader_count"], base, view.reader_count,
                 new_readers)
    if writer:
        plan.cas(_label(i, "write_lock"), SLOT["write_lock"], base, plan.pid, 0)


def roll_back_write_index(scene: Scene, index: int) -> None:
    """Undo a dead writer's claim of the slot id after the last commit, as its abort would
    have: only when ``write_index == commit_index + 2`` (mod 2**64; commit_index + 1 = 0
    before the first commit), i.e. exactly one id is claimed and not committed, and that
    id is this slot's. The test is false once the rollback is done, so a run killed after
    it and run again never rolls back twice (whatever the capacity)."""
    plan = scene.plan
    write_index = plan.hdr("write_index")
    following = (plan.hdr("commit_index") + 1) & _U64
    if write_index != (following + 1) & _U64:
        return
    if following % scene.block.geo.capacity != index:
        return
    plan.cas("header.write_index", L.HEADER["write_index"], 0, write_index, following)


def torn(scene: Scene, index: int) -> bool:
    """True when a slot's bytes are not vouched for by its stored checksum (none stored,
    or it does not match): what :func:`scrub_slot` would overwrite."""
    plan, geo = scene.plan, scene.block.geo
    stored = plan.read(geo.checksum_entry(index), L.HASH_SIZE)
    return not any(stored) or L.blake2b256(plan.data(geo.slot_data(index), geo.stride)) != stored


def scrub_slot(scene: Scene, index: int) -> None:
    """Make a slot we hold (under our lock) that holds no committed data safe to leave:
    zeros over its stride and, under the Enforced checksum policy, BLAKE2b(zeros) with the
    verified byte 0. Nothing is written when the bytes still match their stored checksum
    (the writer had changed nothing, or had finished) or are already zero with the right
    checksum. Under Manual and None the checksum entry is left as it is: only the producer
    writes checksums there (decision: docs/architecture.md). What changed is in the
    plan's step (a ``<slot>.data`` change when bytes were scrubbed)."""
    plan, geo = scene.plan, scene.block.geo
    if not torn(scene, index):
        return
    data_off, entry_off = geo.slot_data(index), geo.checksum_entry(index)
    plan.scrub(_label(index, "data"), data_off, geo.stride)
    if plan.hdr("checksum_policy") == L.ChecksumPolicy.ENFORCED:
        entry = plan.read(entry_off, L.CHECKSUM_ENTRY_SIZE)
        blessed = L.blake2b256(bytes(geo.stride)) + b"\0"
        plan.put(_label(index, "checksum"), entry_off, entry, blessed)


def plan_scrub(scene: Scene, index: int) -> Dict[str, object]:
    """Scrub a FREE, unlocked slot whose bytes fail pylabhub's own check (heal, once the
    ring has wrapped): claim its lock 0 -> our pid, check it is still FREE, scrub, unlock.
    A live producer that reaches the slot meanwhile waits for our lock (it is alive)."""
    plan = scene.plan
    view = scene.slot(index)
    base = scene.block.geo.slot_entry(index)
    if view.write_lock or view.state != _S.FREE or view.reader_count or not torn(scene, index):
        return outcome(index, NOT_STUCK, "slot %d: nothing to scrub" % index, view)
    plan.begin()
    try:
        plan.cas(_label(index, "write_lock"), SLOT["write_lock"], base, 0, plan.pid)
        if plan.get(SLOT["slot_state"], base) != _S.FREE:
            raise ConcurrentChange("slot %d left FREE" % index, target=_label(index, "slot_state"))
        scrub_slot(scene, index)
        plan.cas(_label(index, "write_lock"), SLOT["write_lock"], base, plan.pid, 0)
    except ConcurrentChange as exc:
        lost = plan.rollback()
        return outcome(index, FAILED, "slot %d: %s; %s; run again" % (
            index, exc, "left to the live process: %s" % ", ".join(lost) if lost
            else "nothing changed"), view)
    plan.commit()
    plan.count_recovery(1)
    parts = [("scrub", "the torn bytes of this FREE slot to zeros")]
    if plan.hdr("checksum_policy") == L.ChecksumPolicy.ENFORCED:
        parts.append(("set", "its checksum to match"))
    return outcome(index, SUCCESS, "slot %d: %s" % (index, did_all(plan.dry_run, parts)), view)


def repair_write_index(scene: Scene, observed: int, following: int) -> Dict[str, object]:
    """Put write_index back to the id after the last commit (by CAS on the value
    observed): claimed ids that no slot's writer explains, left by a producer that is
    dead. A producer attaching meanwhile moves the word and the CAS fails: nothing changes."""
    plan = scene.plan
    plan.begin()
    try:
        plan.cas("header.write_index", L.HEADER["write_index"], 0, observed, following)
    except ConcurrentChange as exc:
        plan.rollback()
        return {"field": "write_index", "result": FAILED, "message": "%s; nothing changed; "
                "run again" % exc}
    plan.commit()
    plan.count_recovery(1)
    return {"field": "write_index", "result": SUCCESS, "before": observed, "after": following,
            "message": "%s (write_index %d → %d)" % (
                did(plan.dry_run, "give back", "the slot ids a dead producer claimed and no "
                    "writer holds"), observed, following)}


def targets(scene: Scene, slot) -> List[int]:
    capacity = scene.block.geo.capacity
    if slot == "all" or slot is None:
        return list(range(capacity))
    scene.block.check_slot(slot)
    return [slot]


def check_action(action: str) -> None:
    if action not in ACTIONS:
        raise UsageError("unknown action %r; choose one of %s" % (action, ", ".join(ACTIONS)))
