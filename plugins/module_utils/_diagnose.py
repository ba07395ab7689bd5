# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Explain a block: per slot who holds what, whether it is stuck, why, and what to do.

Read-only. Built on :class:`_observe.Scene`, so the stuck/releasable judgement shown to
the operator is exactly the one recovery will act on, and on :mod:`_status`, so the
block's health word is the one validate and heal give. :func:`assess` is that shared
judgement (every slot, every finding); :func:`report` is diagnose's document.
"""

from __future__ import annotations


from . import _layout as L
from ._observe import ConsumerView, Scene, SlotView
from ._scan import SlotScan, scan_slots
from ._status import blocked_drains, health, judge_slot, next_steps
from ._procinfo import monotonic_ns
from ._validate import flex_findings, index_step, state_findings, uncommitted_findings

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, Iterable, List, Optional, Set

_S = L.SlotState


def _age_s(scene: Scene, stamp: Optional[int]) -> Optional[float]:
    """Seconds since a monotonic stamp of this boot; None when unknown or not ours."""
    if not stamp:
        return None
    age = scene.now.refreshed().monotonic_ns - stamp
    return round(age / 1e9, 3) if age >= 0 else None


def producer_dead(scene: Scene) -> bool:
    """No live producer could be behind what the block shows (none recorded, or dead)."""
    return scene.producer is None or scene.producer.is_dead


def nobody_could_claim(scene: Scene, t: int) -> bool:
    """No live process could be a producer between its claim of a slot id and its lock
    (a C++ producer re-attaching, paused there before stamping the heartbeat): a complete
    scan younger than ``t`` shows no live opener with the block mapped writable, or nobody
    but this engine has the block open (exclusive lease). ``t``: monotonic time taken
    before the indexes were read."""
    scan = scene.scans.after(t)
    if scan.scope(scene.id).complete and not scene.openers(t):
        return True
    return bool(scene.scans.exclusive(scene.id, t))


def claims_orphaned(scene: Scene) -> bool:
    """An index out of step can only be a dead producer's: the producer heartbeat's pid
    is dead AND the kernel shows nobody who could be claiming (:func:`nobody_could_claim`;
    the heartbeat alone is not proof: a new producer need not have stamped it yet).
    The scan is taken only when the indexes are out of step."""
    if not producer_dead(scene):
        return False
    t = monotonic_ns()
    return index_step(scene.plan) is None or nobody_could_claim(scene, t)


def explain_slot(scene: Scene, view: SlotView, judged: Dict[str, object]) -> Dict[str, object]:
    writer_stuck = bool((view.write_lock and view.writer_dead) or view.orphaned)
    readers_stuck = view.releasable_readers > 0
    since = None
    if writer_stuck:
        since = view.locked_ns or (scene.producer_hb if view.write_lock == scene.producer_pid
                                   else None) or view.changed_ns
    elif readers_stuck:
        since = max([c.heartbeat_ns for c in view.readers_in if c.dead] or [0]) or None
    return {
        "index": view.index,
        "state": L.enum_name(_S, view.state),
        "write_lock": view.write_lock,
        "writer": view.writer.to_dict() if view.writer else None,
        "reader_count": view.reader_count,
        "readers": {
            "attributed": [{"consumer": c.index, "pid": c.pid, "state": c.verdict.state}
                           for c in view.readers_in],
            "provably_dead": view.releasable_readers,
            "may_be_live": view.live_possible,
            # who could be inside, by the kernel scan, and what each may hold
            "could_be_inside": [c.to_dict() for c in view.candidates],
            "scope": view.scope,
        },
        "writer_waiting": bool(view.writer_waiting),
        "write_generation": view.generation,
        "is_stuck": bool(judged["stuck"]),
        "suspect": bool(judged["suspect"]),
        "stuck_for_s": _age_s(scene, since) if judged["stuck"] else None,
        "reason": judged["reason"],
        "action": judged["action"],
        "next": judged["next"],
    }


def explain_consumer(scene: Scene, c: ConsumerView) -> Dict[str, object]:
    return {"index": c.index, "pid": c.pid, "name": c.name, "uid": c.uid,
            "last_seen_s": _age_s(scene, c.heartbeat_ns), "reading_slot": c.reading,
            "verdict": c.verdict.to_dict(), "action": "cleanup" if c.dead else None}


def read_positions(scene: Scene) -> Optional[Dict[str, object]]:
    """Sequential and Sequential_sync: the shared ``read_index`` and (Sequential_sync)
    each registered consumer's next-read position (2560 + 8k) with its verdict; None
    under Latest_only. Sequential consumers share read_index (a new consumer resumes
    where the last one stopped); Sequential_sync keeps read_index at the minimum
    position over registered consumers, recomputed by pylabhub only when one releases
    a slot (so a dead consumer's position pins it)."""
    plan = scene.plan
    policy = plan.hdr("consumer_sync_policy")
    if policy not in (L.ConsumerSync.SEQUENTIAL, L.ConsumerSync.SEQUENTIAL_SYNC):
        return None
    out: Dict[str, object] = {"policy": L.enum_name(L.ConsumerSync, policy),
                              "read_index": plan.hdr("read_index"),
                              "write_index": plan.hdr("write_index")}
    if policy == L.ConsumerSync.SEQUENTIAL_SYNC:
        out["positions"] = [{"consumer": c.index, "pid": c.pid, "verdict": c.verdict.state,
                             "position": plan.get(L.READ_POSITION, L.read_position(c.index))}
                            for c in scene.consumers]
    return out


def position_findings(scene: Scene) -> List[Dict[str, object]]:
    """A producer held back by a dead consumer's read position (Sequential_sync):
    write_index - read_index reached the capacity and the slowest registered position,
    which read_index follows, is a dead consumer's. cleanup/heal clear that entry and
    move read_index up to the slowest live position (at most the latest commit)."""
    got = read_positions(scene)
    if not got or "positions" not in got:
        return []
    read_index, write_index = int(got["read_index"]), int(got["write_index"])  # type: ignore
    if write_index - read_index < scene.block.geo.capacity:
        return []
    positions = got["positions"]  # type: List[Dict[str, object]]  # type: ignore
    if not positions:
        return []
    low = min(int(p["position"]) for p in positions)  # type: ignore[arg-type]
    holders = [p for p in positions if p["position"] == low]
    if low != read_index or not all(p["verdict"] == "dead" for p in holders):
        return []
    return [{"code": "read-index-held-by-dead-consumer", "severity": "warning",
             "field": "read_index",
             "message": "read_index %d is consumer %s's read position and that consumer is "
                        "dead: write_index %d - read_index = %d, the capacity, so the "
                        "producer waits for ever; heal clears the entry and moves read_index "
                        "up to the slowest live position (at most the latest commit)" % (
                            read_index, ", ".join(str(p["consumer"]) for p in holders),
                            write_index, write_index - read_index)}]


def holder_findings(scene: Scene) -> List[Dict[str, object]]:
    """What the holders' verdicts say about the block as a whole: a dead producer
    (information), a full consumer table (information), a read_index a dead consumer's
    position holds back, and dead consumers still registered (cleanup)."""
    out: List[Dict[str, object]] = []
    if scene.producer and scene.producer.is_dead:
        out.append({"code": "dead-producer", "severity": "info",
                    "message": "producer pid %d is dead: committed data stays readable; a "
                               "new producer may attach" % scene.producer_pid})
    if scene.table_full:
        out.append({"code": "consumer-table-full", "severity": "info",
                    "message": "consumer table full (%d entries): readers may be "
                               "unregistered (a further consumer reads with no entry), so "
                               "a writer waiting on readers is never proven free of live "
                               "ones" % len(scene.consumers)})
    out += position_findings(scene)
    for c in scene.consumers:
        if c.dead:
            out.append({"code": "dead-consumer", "severity": "warning", "consumer": c.index,
                        "message": "consumer %d (pid %d) is dead: cleanup clears its entry"
                                   % (c.index, c.pid)})
    return out


def assess(scene: Scene, findings: Iterable[Dict[str, object]],
           blocked: Optional[Set[int]] = None,
           indexes: Optional[Iterable[int]] = None) -> Dict[str, object]:
    """THE judgement of a block, shared by diagnose, validate and heal: every slot judged
    (a writer waiting on readers that do not move included), and the health word of
    :func:`_status.health` over those slots and ``findings`` (the caller's: diagnose's,
    or validate's plus :func:`holder_findings`). Returns ``health``, ``healthy``,
    ``stuck_slots``, ``suspect_slots``, ``next_steps`` and, for the caller, ``views``
    and ``judged`` (per slot index). ``blocked``: the blocked drains the caller already
    established in this same call (heal), instead of looking again. ``indexes``: the
    slots to look at (default: the slots a bulk scan finds not plain; a plain slot --
    FREE or COMMITTED, no lock, no reader, no writer waiting -- gets no verdict from
    :func:`_status.judge_slot`, see :mod:`_scan`)."""
    findings = list(findings)
    if indexes is None:
        indexes = scan_slots(scene.plan).interesting
    views = [scene.slot(i) for i in indexes]
    if blocked is None:
        blocked = blocked_drains(scene, views)
    judged = {v.index: judge_slot(v, v.index in blocked) for v in views}
    stuck = [i for i, j in sorted(judged.items()) if j["stuck"]]
    suspect = [i for i, j in sorted(judged.items()) if j["suspect"]]
    word = health(stuck, suspect, findings)
    return {"health": word, "healthy": word == "healthy", "stuck_slots": stuck,
            "suspect_slots": suspect,
            "next_steps": next_steps([judged[i] for i in sorted(judged)], findings),
            "views": views, "judged": judged}


def _where(f: Dict[str, object]) -> tuple:
    return (f.get("code"), f.get("slot"), f.get("consumer"), f.get("field"))


def merge_findings(first: Iterable[Dict[str, object]],
                   second: Iterable[Dict[str, object]]) -> List[Dict[str, object]]:
    """``first``, then what ``second`` adds (the same code at the same place once)."""
    out = list(first)
    seen = {_where(f) for f in out}
    out += [f for f in second if _where(f) not in seen]
    return out


def findings_of(scene: Scene, scan: Optional[SlotScan] = None,
                only_slot: Optional[int] = None) -> List[Dict[str, object]]:
    """diagnose's findings: holders, state sanity (indexes included), and FREE slots that
    pylabhub's own validation would fail (no committed slot is hashed here). ``scan``:
    this call's bulk scan of the slot table (taken when None). ``only_slot``: hash no
    other slot's data than this one's (``diagnose --slot N``: one slot costs one slot; a
    FREE slot whose check needs its bytes hashed is counted in an info finding)."""
    scan = scan or scan_slots(scene.plan)
    return (holder_findings(scene) + state_findings(scene.plan, claims_orphaned(scene), scan)
            + uncommitted_findings(scene.plan, scan, only_slot)
            + flex_findings(scene.plan))     # block-level: every read may depend on it


def report(scene: Scene, slot: Optional[int] = None, all_slots: bool = False,
           scan: Optional[SlotScan] = None) -> Dict[str, object]:
    """The whole diagnosis. ``slots`` explains the slots that are not plain (see
    :mod:`_scan`), every slot with ``all_slots``, or only ``slot``; ``slot_counts`` counts
    them all. The block's health, its stuck and suspect slots, next steps and findings
    are always the whole block's (a jam elsewhere is never hidden by looking at one
    slot). ``scan``: this call's bulk scan (taken when None)."""
    block = scene.block
    if slot is not None:
        block.check_slot(slot)
    scan = scan or scan_slots(scene.plan)
    findings = findings_of(scene, scan, slot)
    if slot is not None:
        listed = [slot]                                     # type: Iterable[int]
    elif all_slots:
        listed = range(block.geo.capacity)
    else:
        listed = scan.interesting
    wanted = set(listed)
    judgement = assess(scene, findings, indexes=sorted(set(scan.interesting) | wanted))
    views, judged = judgement.pop("views"), judgement.pop("judged")
    shown = [v for v in views if v.index in wanted]
    out: Dict[str, object] = dict(judgement)
    out.update({
        "slots_listed": "one" if slot is not None else "all" if all_slots else "not_plain",
        "slot_counts": scan.slot_counts(len(shown)),
        "slots": [explain_slot(scene, v, judged[v.index]) for v in shown],
        "consumers": [explain_consumer(scene, c) for c in scene.consumers],
        "read_positions": read_positions(scene),
        "producer": {
            "pid": scene.producer_pid, "name": block.get("producer_name"),
            "uid": block.get("producer_uid"), "last_seen_s": _age_s(scene, scene.producer_hb),
            "verdict": scene.producer.to_dict() if scene.producer else None,
        },
        "findings": findings,
    })
    return out


def validate_health(scene: Scene, findings: List[Dict[str, object]],
                    scan: Optional[SlotScan] = None) -> Dict[str, object]:
    """validate's judgement by the one rule: its findings plus the holders' (dead
    consumers, dead producer), and every slot judged. ``holder_findings`` is returned
    apart: validate's own ``findings`` stay what validation checks."""
    holders = holder_findings(scene)
    judgement = assess(scene, merge_findings(findings, holders),
                       indexes=None if scan is None else scan.interesting)
    return {"health": judgement["health"], "healthy": judgement["healthy"],
            "stuck_slots": judgement["stuck_slots"],
            "suspect_slots": judgement["suspect_slots"],
            "next_steps": judgement["next_steps"], "holder_findings": holders}
