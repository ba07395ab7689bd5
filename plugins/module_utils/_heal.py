# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""heal: the safe composite a fleet wants in one call.

cleanup dead consumers -> release what dead holders own (writers, then readers) ->
validate (repair only when asked). Never forced: a slot whose holder is alive is simply
not stuck, and one whose holder is suspect-hung or unknown is reported as refused for an
operator to decide. Every step runs in the same :class:`Plan`, so a dry run observes what
the earlier steps would have left and predicts the real run exactly.
"""

from __future__ import annotations

from typing import Dict, List

from ._cleanup import cleanup
from ._diagnose import report
from ._observe import Scene
from ._plan import Plan
from ._recover import UNSAFE, plan_slot
from ._validate import Progress, validate


def heal(plan: Plan, repair: bool = False, progress: Progress = None) -> Dict[str, object]:
    scene = Scene(plan)
    cleaned = cleanup(scene)
    outcomes: List[Dict[str, object]] = []
    scene = Scene(plan, now=scene.now)       # re-observe through what cleanup planned
    in_use = list(plan.block.slots_in_use())  # a slot in a hole is FREE: nothing to release
    for i in in_use:
        view = scene.slot(i)
        if (view.write_lock and view.writer_dead) or view.orphaned:
            outcomes.append(plan_slot(scene, i, "release_writer"))
        elif view.writer_suspect:
            outcomes.append(plan_slot(scene, i, "release_writer"))    # refused, reported
        view = scene.slot(i)
        if view.releasable_readers:
            outcomes.append(plan_slot(scene, i, "release_readers"))
    checked = validate(plan, repair=repair, progress=progress)
    after = report(Scene(plan, now=scene.now), slots=in_use)
    refused = [o for o in outcomes if o["result"] == UNSAFE]
    return {
        "cleanup": cleaned,
        "outcomes": outcomes,
        "refused": refused,
        "validate": checked,
        "after": {"healthy": after["healthy"] and checked["valid"],
                  "stuck_slots": after["stuck_slots"], "suspect_slots": after["suspect_slots"],
                  "findings": after["findings"]},
        "healthy": after["healthy"] and checked["valid"] and not refused,
    }
