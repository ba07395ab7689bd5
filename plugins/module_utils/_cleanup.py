# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Clean up dead consumers, then reconcile the counts with what is true.

pylabhub's own cleanup only CASes the pid to 0 and decrements the count; it leaves the
uid, name and read position stale and never reconciles ``active_consumer_count`` or
``read_index``. Ours: release the readers of the slots dead consumers' evidence names
(by the reader rule of :mod:`_observe`: only what no live process could hold), then per
dead entry (verdicts from the kernel scan: a live consumer, mid-registration included,
is never dead) claim it by CAS dead-pid -> our pid (so a consumer registering at the
same moment cannot have its fresh identity wiped), clear heartbeat, uid, name, read
position and evidence, then CAS our pid -> 0.

``active_consumer_count`` (the count rule, docs/architecture.md): after the clearing,
R = entries with a pid, C = the count. C wrapped (>= 2**31): raised to R. C below R:
left (a consumer between its pid CAS and ``count += 1`` adds its own).
C above R: lowered only in a complete scope (or when nobody else has the block open),
and only to F = R + U, U = live openers with the block mapped writable that occupy no
entry and are not the block's live producer (a consumer paused between its pid-clearing
CAS and its ``count -= 1`` is such an opener: it will still decrement). Either store is
made only when the pids and the count read the same over the settle looks (heartbeat
stores are not changes: a consumer heartbeating every few ms must not prevent it), by CAS
on the observed value. ``each_block``'s look at every block's table before the first
heal counts as the first of those looks when nothing but this run's clearing changed
since: the blocks of one call share one wait (:func:`_pauses`). In a partial scope a count above R is never lowered: reported.

``read_index`` (Sequential_sync only): raised, by CAS on the observed value, to the
slowest read position of the registered consumers once the dead ones' entries (and
positions) are cleared -- whatever the heartbeat and read traffic -- but not past the
latest commit (a consumer still joining shows its entry's previous position:
:func:`_read_index_target`). Sequential's shared
read_index is never touched: a new consumer resumes where the dead one stopped.
"""

from __future__ import annotations

import time

from . import _layout as L
from ._contract import FAILED, SUCCESS
from ._errors import ConcurrentChange
from ._observe import TABLE, ConsumerView, Scene, sole
from ._recover import plan_slot
from ._procinfo import monotonic_ns
from ._validate import _SETTLE_S
from ._wording import did

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, List, Optional, Tuple

CONS = L.CONSUMER
CEV = L.CONSUMER_EVIDENCE


def cleanup(scene: Scene) -> Dict[str, object]:
    """Clear every dead consumer's entry; return the per-entry outcomes and reconciliation."""
    plan = scene.plan
    outcomes: List[Dict[str, object]] = []
    dead = [c for c in scene.consumers if c.dead]
    # 1. readers in the slots dead consumers' evidence names, as far as the reader rule
    #    proves them gone (the entry itself is no longer needed to decide that)
    for index in sorted({c.reading for c in dead if c.reading is not None}):
        if 0 <= index < scene.block.geo.capacity and scene.slot(index).releasable_readers:
            outcomes.append(plan_slot(scene, index, "release_readers"))
    # 2. the entries themselves
    cleaned = 0
    cleared: Dict[int, int] = {}            # entry -> the dead pid this run cleared there
    for c in dead:
        try:
            _clear_entry(scene, c)
        except ConcurrentChange as exc:
            plan.rollback()
            outcomes.append({"consumer": c.index, "pid": c.pid, "result": FAILED,
                             "message": "consumer %d: %s; nothing changed" % (c.index, exc)})
            continue
        plan.commit()
        cleaned += 1
        cleared[c.index] = c.pid
        outcomes.append({"consumer": c.index, "pid": c.pid, "result": SUCCESS,
                         "message": "consumer %d (pid %d, %s, %s): %s"
                         % (c.index, c.pid, c.name or "unnamed", c.verdict.state,
                            did(plan.dry_run, "clear", "its entry")),
                         "verdict": c.verdict.to_dict()})
    # 3. reconcile the counts with what is true
    reconciled = _reconcile(scene, cleared)
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
        plan.put(label + name, base + fld.offset, before, b"\0" * fld.size, text=True)
    pos = L.read_position(c.index)
    plan.cas(label + "read_position", L.READ_POSITION, pos, plan.get(L.READ_POSITION, pos), 0)
    if scene.has_evidence:
        ev = L.consumer_evidence(c.index)
        for name in ("reading", "start", "pid"):
            plan.cas(label + "evidence_" + name, CEV[name], ev, plan.get(CEV[name], ev), 0)
    plan.cas(label + "consumer_pid", CONS["consumer_pid"], base, plan.pid, 0)


def _survey(plan) -> tuple:
    """The words the count is decided on: every entry's pid and the count. Heartbeats
    and read positions are not among them: a heartbeat changes nothing these rules
    depend on, and positions only move forward (read_index is raised from them at the
    moment of the store)."""
    pids = tuple(plan.get(CONS["consumer_pid"], L.consumer_entry(k))
                 for k in range(L.MAX_CONSUMERS))
    return pids, plan.hdr("active_consumer_count")


def _complete(scene: Scene, after_ns: int) -> bool:
    """Absence proves something for this block: a complete scan younger than
    ``after_ns``, or nobody but this engine has it open (exclusive lease)."""
    return (scene.scans.after(after_ns).scope(scene.id).complete
            or bool(scene.scans.exclusive(scene.id, after_ns)))


def _uncounted_openers(scene: Scene, after_ns: int, pids: tuple) -> int:
    """U: live openers (block mapped writable, recovery runs excepted) that occupy no
    entry and are not the block's live producer -- each may be a consumer between its
    pid-clearing CAS and its ``count -= 1``. An entry's pid names an opener only when no
    other opener has that number at some PID-namespace level: pid 1 of one namespace is
    not pid 1 of another, so an opener sharing a number with another one counts in U (the
    count is kept higher, never lower); an entry named wrongly is itself counted in R, so
    the floor R + U never drops below the live consumers. The producer's recorded pid has
    no such counterweight (a dead producer's number, recorded in its own namespace, may
    be a live consumer's in another: pid 1 of two ``unshare --pid`` children), so it
    names an opener only as the pid this namespace knows it by; a live producer of a
    nested namespace then counts in U (the count kept one higher). (Residual risk,
    accepted: a producer process that is also a consumer paused there; the count then
    ends one low until it exits.)"""
    openers = scene.openers(after_ns)
    named = {id(o) for o in (sole(openers, p) for p in pids if p) if o is not None}
    producer = scene.plan.hdr("producer_heartbeat_pid")
    found = sole(openers, producer) if producer else None
    if found is not None and found.pid == producer:
        named.add(id(found))
    return sum(1 for o in openers if id(o) not in named)


def _count_target(scene: Scene, seen: tuple, after_ns: int) -> Tuple[Optional[int], str]:
    """What the count should become (None: leave it), and why (or why not)."""
    pids, count = seen[0], seen[1]
    registered = sum(1 for p in pids if p)
    if count >= 1 << 31:               # wrapped (an old underflow): back to the entries
        return registered, ""
    if count <= registered:
        # Below the entries is the protocol's own window: a consumer has CASed its pid and
        # not yet done ``count += 1`` (it will; a dead one's entry was cleared above).
        # Raising it here would be undone by that increment into a count one too high,
        # for good where the scan is partial (it is never lowered there): leave it.
        return None, ""
    if not _complete(scene, after_ns):
        other = scene.scans.exclusive(scene.id, after_ns) is False
        return None, ("active_consumer_count %d is above the %d registered consumer(s); not "
                      "lowered: the scan is %s (%s)%s, so a consumer between unregistering "
                      "its entry and uncounting itself may be unseen; run cleanup again once "
                      "nobody else has the block open, or where the scan is complete (root, "
                      "in the consumers' PID namespace)"
                      % (count, registered, scene.scope.name, scene.scope.reason,
                         " and another process has the block open" if other else ""))
    floor = registered + _uncounted_openers(scene, after_ns, pids)
    if count > floor:
        return floor, ""
    return None, ("active_consumer_count %d is above the %d registered consumer(s): %d live "
                  "process(es) with the block mapped hold no entry and may still uncount "
                  "themselves" % (count, registered, floor - registered))


def _read_index_target(plan, pids: tuple) -> Tuple[Optional[int], int]:
    """Sequential_sync: (what read_index should be raised to, or None; read_index seen).
    It follows the slowest position of the registered consumers (dead ones are cleared
    by now). Only ever raised: positions only move forward, so a minimum read a moment
    ago is still no more than the true one, and a read_index below it only holds the
    producer back. Sequential keeps its shared read_index: never touched.

    An entry's position is its consumer's only once that consumer has joined: it stores
    its join position (the latest commit) after its pid CAS -- pylabhub's consumer after
    counting itself and its first heartbeat -- so until then the entry shows its previous
    occupant's position, which may be one past the latest commit (that occupant had read
    it). Raised to that, read_index would let the producer overwrite the commit the
    joining consumer is about to read. So it is raised at most to the latest commit, the
    least any joining consumer stores: the producer keeps capacity - 1 slots to go on
    with, and the next release recomputes the true minimum. A ring of one slot is the
    exception: there the cap would leave the producer waiting for ever behind consumers
    that have read everything, so it goes to the slowest position. (Residual risk,
    accepted: a consumer that read the latest commit before this look and stores it
    after -- a window of two instructions -- or one joining a one-slot ring now.)"""
    if plan.hdr("consumer_sync_policy") != L.ConsumerSync.SEQUENTIAL_SYNC:
        return None, 0
    read_index = plan.hdr("read_index")
    live = [k for k, pid in enumerate(pids) if pid]
    if not live:
        return None, read_index
    low = min(plan.get(L.READ_POSITION, L.read_position(k)) for k in live)
    if plan.block.geo.capacity > 1:     # (before the first commit: NO_COMMIT, the top)
        low = min(low, plan.hdr("commit_index"))
    return (low if low > read_index else None), read_index


def _pauses(scene: Scene, seen: tuple, cleared: Dict[int, int]) -> tuple:
    """The settle pauses still to take after the look ``seen``.

    Every look must read the same pids and count over at least ``sum(_SETTLE_S)`` (~60
    ms). ``each_block`` already looked at every block's table before healing the first
    (``_observe.preobserve``): when that look read what ``seen`` reads (the entries this
    run cleared since held the dead pids it cleared) it is the first look of this
    settle: the short pauses are taken, and the long one only for what the time since
    that look does not cover. A host's blocks then share one wait instead of ~60 ms
    each. A table that moved since that look (or with no such look: one block, a second
    pass) gets every pause. Times are taken after the reads of a look, so the span
    between the first look and the last is never overstated."""
    pids = tuple(p or cleared.get(k, 0) for k, p in enumerate(seen[0]))
    now = monotonic_ns()
    first = scene.scans.first_seen(scene.block.inode + TABLE, (pids, seen[1]), now)
    short = _SETTLE_S[:-1]
    left = sum(_SETTLE_S) - sum(short) - (now - first) / 1e9
    return short + ((left,) if left > 0 else ())


def _reconcile(scene: Scene,
               cleared: Optional[Dict[int, int]] = None) -> List[Dict[str, object]]:
    plan = scene.plan
    t = monotonic_ns()
    seen = _survey(plan)
    count_to, why = _count_target(scene, seen, t)
    index_to, dummy = _read_index_target(plan, seen[0])
    notes = [{"field": "active_consumer_count", "result": "KEPT", "message": why}] if why else []
    if count_to is None and index_to is None:
        return notes
    # A live consumer claims its entry a moment before counting itself (and uncounts
    # itself a moment after freeing it): act only when every look over ~60 ms reads the
    # same pids and count: a table that is moving is left for a later run.
    for pause in _pauses(scene, seen, cleared or {}):
        time.sleep(pause)
        if _survey(plan) != seen:
            return notes + [{"field": "active_consumer_count", "result": "KEPT",
                             "message": "the consumer table kept changing; run again"}]
    count = seen[1]
    done: List[Dict[str, object]] = []
    plan.begin()
    try:
        if count_to is not None:
            plan.cas("header.active_consumer_count", L.HEADER["active_consumer_count"], 0,
                     count, count_to)
            done.append({"field": "active_consumer_count", "before": count, "after": count_to})
        index_to, read_index = _read_index_target(plan, seen[0])   # positions as of now
        if index_to is not None:
            plan.cas("header.read_index", L.HEADER["read_index"], 0, read_index, index_to)
            done.append({"field": "read_index", "before": read_index, "after": index_to})
    except ConcurrentChange as exc:
        plan.rollback()
        return [{"field": exc.details.get("target"), "result": FAILED, "message": str(exc)}]
    plan.commit()
    return notes + done
