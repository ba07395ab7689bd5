# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""heal: the safe composite a fleet wants in one call.

cleanup dead consumers -> release what dead holders own (writers, then readers) -> scrub
FREE slots pylabhub's own check fails -> give back slot ids a dead producer claimed and no
writer holds -> validate (repair only when asked) -> judge the result by the one rule
(:mod:`_status`). Never forced: a slot whose holder is alive is simply not stuck, and one
that only force could clear (a suspect-hung or unknown writer, a writer waiting on readers
nothing proves gone) is reported as refused, with the forced command, for an operator to
decide; such a block is never called healthy. Every step runs in the same :class:`Plan`,
so a dry run observes what the earlier steps would have left and predicts the real run
exactly.
"""

from __future__ import annotations


from ._cleanup import cleanup
from ._diagnose import assess, claims_orphaned, findings_of, merge_findings
from ._observe import Scene
from ._plan import Plan
from ._recover import UNSAFE, plan_scrub, plan_slot, repair_write_index
from ._scan import scan_slots
from ._status import blocked_drains
from ._validate import index_step, uncommitted_findings, validate

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, List
    from ._validate import Progress


def heal(plan: Plan, repair: bool = False, progress: Progress = None) -> Dict[str, object]:
    scene = Scene(plan)
    cleaned = cleanup(scene)
    outcomes: List[Dict[str, object]] = []
    scene = Scene(plan, now=scene.now)       # re-observe through what cleanup planned
    # a plain slot (FREE or COMMITTED, no lock, no reader, no writer waiting) holds
    # nothing to release: only the slots a bulk scan finds not plain are looked at
    in_use = scan_slots(plan).interesting
    for i in in_use:
        view = scene.slot(i)
        if (view.write_lock and view.writer_dead) or view.orphaned:
            outcomes.append(plan_slot(scene, i, "release_writer"))
        elif view.writer_suspect:
            outcomes.append(plan_slot(scene, i, "release_writer"))    # refused, reported
        view = scene.slot(i)
        if view.releasable_readers:
            outcomes.append(plan_slot(scene, i, "release_readers"))
    # A writer waiting for readers nothing proves gone: only force can free it. Refused,
    # with the command, so the block is never called healthy while a producer is blocked.
    refused_slots = {o["slot"] for o in outcomes if o["result"] == UNSAFE}
    blocked = blocked_drains(scene, [scene.slot(i) for i in in_use])
    for i in sorted(blocked - refused_slots):
        outcomes.append(plan_slot(scene, i, "release_readers"))
    # FREE slots whose torn bytes pylabhub's validate_integrity fails on (Enforced)
    for f in uncommitted_findings(plan):
        if f["severity"] == "error":
            outcomes.append(plan_scrub(scene, int(f["slot"])))  # type: ignore[arg-type]
    # slot ids a dead producer claimed and no writer holds
    indexes = []
    orphaned = claims_orphaned(scene)
    out_of_step = index_step(plan)
    if (out_of_step and orphaned
            and len(out_of_step["unexplained"]) == len(out_of_step["holders"])):  # type: ignore
        indexes.append(repair_write_index(scene, int(out_of_step["write_index"]),  # type: ignore
                                          int(out_of_step["following"])))  # type: ignore
    checked = validate(plan, repair=repair, progress=progress,
                       producer_dead=orphaned)
    final = Scene(plan, now=scene.now)
    findings = merge_findings(findings_of(final), checked["findings"])
    # the drains found blocked above were refused or released since: not looked at again
    # (the looks take ~0.6 s); judge_slot re-reads each slot's words
    judgement = assess(final, findings, blocked)
    after = {key: judgement[key] for key in ("health", "healthy", "stuck_slots",
                                             "suspect_slots", "next_steps")}
    after["findings"] = findings
    # refused, released, failed, healthy (after's, and nothing refused): the engine's
    return {
        "cleanup": cleaned,
        "outcomes": outcomes,
        "indexes": indexes,
        "validate": checked,
        "after": after,
        "health": after["health"],
    }
