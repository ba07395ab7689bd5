# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one rule for "healthy", and the next step that clears each problem.

diagnose, validate and heal (and therefore ``list``, ``each_block``, the modules and the
API) all call :func:`health`, so the same block at the same moment gets the same word:

* ``corrupt`` -- a finding of severity ``error`` is left (checksum, header, index or
  count that does not add up; a repaired finding no longer counts);
* ``stuck`` -- a slot is blocked by a holder proven gone: heal (or the slot's recover
  command) clears it without force;
* ``suspect`` -- a slot is blocked and nothing proves its holder gone: a write lock held
  by a suspect-hung or unknown process, or a writer waiting for readers that do not move
  and are not provably gone (whoever they are: a reader that could not register leaves
  no trace). Only a forced action clears it, so heal reports it as refused;
* ``degraded`` -- nothing blocked, but a ``warning`` is left (a dead consumer's entry, a
  count out of step...);
* ``healthy`` -- none of these (``info`` findings do not count).

The words are ranked in that order and a block gets the worst that applies. Every stuck or
suspect slot, and every refusal, carries a structured *next step* (``{"operation":
"recover", "slot": 2, "action": "release_readers", "force": true}``) that the faces render
as a command or keep as data.
"""

from __future__ import annotations

import time

from . import _layout as L
from ._observe import Scene, SlotView
from . import _validate

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, Iterable, List, Optional, Sequence, Set
    Step = Dict[str, object]

HEALTHY, DEGRADED, SUSPECT, STUCK, CORRUPT = (
    "healthy", "degraded", "suspect", "stuck", "corrupt")
RANK = (HEALTHY, DEGRADED, SUSPECT, STUCK, CORRUPT)
_S = L.SlotState
DRAIN_FACTOR = 10
_DRAIN_WORDS = ("write_lock", "reader_count", "slot_state", "writer_waiting", "write_generation")


def step(operation: str, slot: Optional[int] = None, action: Optional[str] = None,
         force: Optional[bool] = None, **extra: object) -> Step:
    """A next step as data: the engine operation and the arguments that clear a problem."""
    out: Step = {"operation": operation}
    if slot is not None:
        out["slot"] = slot
    if action is not None:
        out["action"] = action
    if force is not None:
        out["force"] = force
    out.update(extra)
    return out


def health(stuck: Sequence[int], suspect: Sequence[int],
           findings: Iterable[Dict[str, object]]) -> str:
    """THE rule: the worst word that applies (see the module doc)."""
    left = [f for f in findings if not f.get("repaired")]
    if _validate.unrepaired(left):
        return CORRUPT
    if stuck:
        return STUCK
    if suspect:
        return SUSPECT
    if any(f.get("severity") == "warning" for f in left):
        return DEGRADED
    return HEALTHY


def worst(words: Iterable[str]) -> str:
    return max(words, key=RANK.index, default=HEALTHY)


# -- writers waiting on readers ---------------------------------------------------------------
def _waits_on_readers(view: SlotView) -> bool:
    return bool(view.state == _S.DRAINING and view.writer_waiting and view.reader_count)


def blocked_drains(scene: Scene, views: Iterable[SlotView]) -> Set[int]:
    """The slots whose writer waits for readers that do not move.

    A slot DRAINING with ``writer_waiting`` and readers inside is normal for a moment (a
    reader finishing); it counts as blocked only when every later look reads the very same
    words. The looks are validation's settle pauses stretched :data:`DRAIN_FACTOR` times
    (about 0.6 s in all): a live reader descheduled on a loaded host must not make a
    block "suspect", while a reader that died inside never moves again, so the longer
    wait costs nothing in accuracy, and a drain that is moving ends the looks at once.
    Slots are looked at together, so the pause is paid once per block, not per slot."""
    plan = scene.plan
    pending = {}
    for view in views:
        # a dead writer, or readers all provably dead, are stuck whatever the looks say
        if (_waits_on_readers(view) and not view.writer_dead
                and view.reader_count > view.releasable_readers):
            base = scene.block.geo.slot_entry(view.index)
            pending[view.index] = (base, _words(plan, base))
    for pause in _validate._SETTLE_S:      # read at call time (tests shorten it)
        pause *= DRAIN_FACTOR
        if not pending:
            break
        time.sleep(pause)
        pending = {i: (base, seen) for i, (base, seen) in pending.items()
                   if _words(plan, base) == seen}
    return set(pending)


def _words(plan, base: int) -> tuple:
    return tuple(plan.get(L.SLOT[n], base) for n in _DRAIN_WORDS)


# -- one slot ----------------------------------------------------------------------------------
def judge_slot(view: SlotView, blocked: bool) -> Dict[str, object]:
    """Whether a slot is stuck or suspect, why, and the step that clears it.

    ``blocked``: the slot's writer waits for readers that did not move (see
    :func:`blocked_drains`). Returns ``stuck``, ``suspect``, ``action`` (what recover
    does without force, or None), ``reason`` and ``next`` (a step, or None)."""
    writer_stuck = bool((view.write_lock and view.writer_dead) or view.orphaned)
    readers_stuck = view.releasable_readers > 0
    stuck = writer_stuck or readers_stuck
    readers_left = view.reader_count - view.releasable_readers
    drain_suspect = blocked and not writer_stuck and readers_left > 0
    suspect = view.writer_suspect or drain_suspect
    state = L.enum_name(_S, view.state)
    reason, action, nxt = "", None, None
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
        waiting = ("; writer pid %d waits for them forever" % view.write_lock
                   if view.state == _S.DRAINING and view.write_lock else "")
        reason = "%d of %d reader(s) provably dead%s" % (
            view.releasable_readers, view.reader_count, waiting)
        action = "release_readers"
        if drain_suspect:
            reason += ("; %d more may be live: releasing them needs --force" % readers_left)
    elif view.writer_suspect:
        reason = ("write lock held by pid %d whose verdict is %s: releasing it needs --force"
                  % (view.write_lock, view.writer.state if view.writer else "?"))
    elif drain_suspect:
        reason = ("writer pid %d waits for %d reader(s) that have not moved and are not "
                  "provably gone (a reader killed inside, perhaps one that could not register): "
                  "if no reader is inside, release them with --force"
                  % (view.write_lock, view.reader_count))
    elif view.reader_count and view.state == _S.DRAINING:
        reason = ("writer pid %d waits for %d reader(s) that are still moving"
                  % (view.write_lock, view.reader_count))
    if action:
        nxt = step("recover", view.index, action, False)
    elif view.writer_suspect:
        nxt = step("recover", view.index, "release_writer", True)
    elif drain_suspect:
        nxt = step("recover", view.index, "release_readers", True)
    return {"stuck": stuck, "suspect": suspect, "action": action, "reason": reason,
            "next": nxt}


# -- block-level steps -----------------------------------------------------------------------
def finding_step(f: Dict[str, object]) -> Optional[Step]:
    """The step that clears a finding, when one does."""
    code = f.get("code")
    if f.get("repaired") or f.get("severity") == "info":
        return None
    if code == "dead-consumer":
        return step("cleanup")
    if code in ("uncommitted-checksum-mismatch", "index-out-of-step",
                "consumer-count-mismatch", "read-index-held-by-dead-consumer"):
        return step("heal")
    if code in ("checksum-mismatch", "checksum-missing") and f.get("repairable"):
        return step("validate", repair=True)
    return None


def next_steps(slots: Iterable[Dict[str, object]],
               findings: Iterable[Dict[str, object]]) -> List[Step]:
    """Every distinct next step: the slots' (in slot order), then the findings'."""
    out: List[Step] = []
    for s in slots:
        if s.get("next") and s["next"] not in out:
            out.append(s["next"])  # type: ignore[arg-type]
    for f in findings:
        nxt = finding_step(f)
        if nxt and nxt not in out:
            out.append(nxt)
    return out
