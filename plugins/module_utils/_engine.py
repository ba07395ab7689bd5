# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The recovery engine's front door: what the CLI, the API and the modules call.

Each operation takes a block address, attaches (read-only unless it may write), runs in a
:class:`Plan`, and returns one JSON-ready dict in schema ``pylabhub.recovery/v1``
(docs/schema.md). Errors are raised from the ``_errors`` hierarchy. Nothing here decides
policy: that lives in the modules it calls.

The faces import this module and nothing below it. So every derived fact a face shows is
published here, once: ``released``, ``refused`` and ``failed`` outcomes and the aggregate
``result`` of every mutating operation (heal's cleanup, slot and index steps merged),
``unrepaired`` errors of validate and heal, ``health``/``healthy`` by the one rule for
every block (also per entry of :func:`each_block`, and as :func:`examine`'s summary), and
``next_steps``. So are the constants (:mod:`_contract`, the health words, the errors and
exit codes) and the entry points the faces need (:func:`drill`, :func:`scan`,
:func:`atomics`, :func:`geometry_problem`, :func:`is_process_alive`, ...).
"""

from __future__ import annotations

from . import _kernel, _registry
from . import _layout as L
from ._block import Block, check_budget, open_block
from ._contract import (DRILL_CAPACITY, DRILL_ITERATIONS, DRILL_STRIDE, FAILED,
                        INVALID_SLOT, NOT_STUCK, SCHEMA, SLOT_ACTIONS, SUCCESS, UNSAFE)
from ._contract import PRACTICE_HUB, PRACTICE_NAME, PRACTICE_SCENARIOS
from ._diagnose import assess, claims_orphaned, findings_of, report, validate_health
from ._errors import (EXIT_CONCURRENT, EXIT_FINDINGS, EXIT_INTERNAL, EXIT_NO_BLOCK,
                      EXIT_OK, EXIT_PERMISSION, EXIT_REFUSED, EXIT_SNAPSHOT, EXIT_USAGE,
                      AtomicsUnavailable,
                      BlockNotFound, BlockNotReady, ConcurrentChange, Declined, HolderAlive,
                      InvalidName, NotADataBlock, OverBudget, PermissionDenied,
                      PolicyError, RecoveryError, SlotOutOfRange, SnapshotError,
                      SnapshotMismatch, TruncatedBlock, UndoRefused, UnsafePath, WatchRunning,
                      UnsupportedLayout, UsageError, WrongOwner, exit_code_for, printable,
                      printable_tree)
from ._kernel import Scans
from ._liveness import Verdict, is_process_alive, judge
from ._observe import Scene, preobserve
from ._plan import Plan
from ._scan import SlotScan, scan_slots
from ._status import (CORRUPT, DEGRADED, HEALTHY, RANK as HEALTH_RANK, STUCK, SUSPECT,
                      finding_step, health as _health, step as _step)
from ._validate import validate as _validate
from ._wording import (CONDITIONAL_FORMS, PAST_FORMS, change_lines, did, done, plural,
                       reblessed, reconciled, summary)

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Dict, Iterable, List, Optional
    from ._validate import Progress

#: The front door: what a face may use (the faces import nothing below this module).
__all__ = [
    # operations (one block, by address), and on every block of the host
    "diagnose", "recover", "cleanup", "validate", "heal", "each_block", "examine",
    "discover", "scan", "list_blocks", "drill", "practice", "practice_stop",
    # before-images, undo, metrics (docs/audit-and-undo.md); the watch (docs/watch.md)
    "undo", "snapshots", "metrics", "watch",
    # entry points into what the operations are made of
    "aggregate", "atomics", "block_info", "geometry_problem", "state_name",
    "is_process_alive", "judge", "Verdict", "open_block", "Block", "Plan",
    # names and numbers
    "SCHEMA", "SLOT_ACTIONS", "SUCCESS", "FAILED", "UNSAFE", "NOT_STUCK", "INVALID_SLOT",
    "HEALTHY", "DEGRADED", "SUSPECT", "STUCK", "CORRUPT", "HEALTH_RANK",
    "DRILL_ITERATIONS", "DRILL_CAPACITY", "DRILL_STRIDE",
    "PRACTICE_SCENARIOS", "PRACTICE_NAME", "PRACTICE_HUB",
    "EXIT_OK", "EXIT_FINDINGS", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_NO_BLOCK",
    "EXIT_PERMISSION", "EXIT_CONCURRENT", "EXIT_INTERNAL", "EXIT_SNAPSHOT",
    # errors, and the one escaping rule for untrusted text
    "RecoveryError", "UsageError", "InvalidName", "SlotOutOfRange", "BlockNotFound",
    "UnsafePath", "NotADataBlock", "UnsupportedLayout", "TruncatedBlock", "BlockNotReady",
    "OverBudget", "PermissionDenied", "WrongOwner", "HolderAlive", "ConcurrentChange",
    "AtomicsUnavailable", "Declined", "SnapshotError", "UndoRefused", "SnapshotMismatch",
    "PolicyError", "WatchRunning",
    "exit_code_for", "printable", "printable_tree",
    # the words of a change, in the run's tense (_wording: the one place they are chosen)
    "did", "done", "plural", "reblessed", "reconciled", "summary", "change_lines",
    "PAST_FORMS", "CONDITIONAL_FORMS",
]

_RANK = {NOT_STUCK: 0, SUCCESS: 1, UNSAFE: 2, FAILED: 3}


def block_info(block: Block) -> Dict[str, object]:
    """Identity and geometry of an attached block."""
    info: Dict[str, object] = {"address": block.address, "name": block.name, "path": block.path,
                               "kind": block.kind, "size": block.size}
    if block.geometry is not None:
        g = block.geometry
        info.update({
            "capacity": g.capacity, "stride": g.stride, "flex_size": g.flex_size,
            "policy": L.enum_name(L.Policy, block.get("policy")),
            "consumer_sync": L.enum_name(L.ConsumerSync, block.get("consumer_sync_policy")),
            "checksum_policy": L.enum_name(L.ChecksumPolicy, block.get("checksum_policy")),
            "write_index": block.get("write_index"), "commit_index": _index(block),
            "has_evidence": block.has_evidence,
        })
    return info


def _index(block: Block) -> Optional[int]:
    value = block.get("commit_index")
    return None if value == L.NO_COMMIT else value


def _envelope(operation: str, block: Block, plan: Optional[Plan], **body: object) -> dict:
    out: Dict[str, object] = {"schema": SCHEMA, "operation": operation,
                              "block": block_info(block)}
    if plan is not None:
        out.update({"dry_run": plan.dry_run, "changed": plan.changed,
                    "changes": plan.change_dicts()})
    out.update(body)
    return out


def aggregate(outcomes: Iterable[Dict[str, object]]) -> str:
    """One result for many slots: FAILED > UNSAFE > SUCCESS > NOT_STUCK."""
    results = [str(o["result"]) for o in outcomes if "result" in o]
    return max(results, key=lambda r: _RANK.get(r, 3)) if results else NOT_STUCK


class _Attached:
    """The block, attached for one engine call. Its mapping is the engine's own (left out
    of the kernel scan: recovery is not a holder) and a writable attachment registers
    this process as a recovery run (``_registry.registration``) for concurrent runs.
    (A class: ``contextlib`` costs a small command milliseconds at start-up.)"""

    def __init__(self, address: str, writable: bool, strict: bool = True) -> None:
        self.args = (address, writable, strict)
        self.block = None  # type: Optional[Block]
        self.own = None  # type: Optional[_kernel.engine_mapping]
        self.registered = _registry.registration(active=writable)

    def __enter__(self) -> Block:
        address, writable, strict = self.args
        block = open_block(address, writable=writable, strict=strict)
        try:
            own = _kernel.engine_mapping(block)
            own.__enter__()
            try:
                self.registered.__enter__()
            except BaseException:
                own.__exit__(None, None, None)
                raise
        except BaseException:
            block.close()
            raise
        self.block, self.own = block, own
        return block

    def __exit__(self, *exc: object) -> None:
        try:
            try:
                self.registered.__exit__(*exc)
            finally:
                self.own.__exit__(*exc)  # type: ignore[union-attr]
        finally:
            self.block.close()  # type: ignore[union-attr]


def _plan(block: Block, dry_run: bool, scan: Optional[Scans], journal=None) -> Plan:
    plan = Plan(block, dry_run, journal)      # journal: the run's before-image (_audit)
    plan.scans = scan            # shared kernel scans (None: the first Scene makes them)
    return plan


def _warnings(outcomes: Iterable[Dict[str, object]]) -> List[str]:
    return [w for o in outcomes for w in o.get("warnings", [])]  # type: ignore[union-attr]


def _scanned(plan: Plan, operation: str, max_bytes: Optional[int], listed: int = 0,
             hashing: bool = False, hint: str = "") -> SlotScan:
    """The bulk scan of the slot table (:mod:`_scan`), within the budget: checked before
    it (the table's allocated bytes, ``listed`` slots, what ``hashing`` reads) and after
    it, when the slots found not plain are known (each is examined one by one)."""
    block = plan.block
    check_budget(block, operation, max_bytes, listed=listed, hashing=hashing, hint=hint)
    scan = scan_slots(plan)
    if len(scan.interesting) > listed:
        check_budget(block, operation, max_bytes, listed=len(scan.interesting),
                     hashing=hashing, hint="; %d slots are not plain, each examined one by "
                     "one" % len(scan.interesting))
    return scan


def _settled(outcomes: List[Dict[str, object]]) -> Dict[str, object]:
    """What a mutating result says of its outcomes, so that no face sorts them again:
    ``released`` (SUCCESS: done, or would be in a dry run), ``refused`` (UNSAFE: a holder
    not provably dead), ``failed`` (FAILED: a word changed under us; nothing half-done),
    the aggregate ``result`` (:func:`aggregate`) and ``ok`` (nothing refused or failed)."""
    result = aggregate(outcomes)
    return {"result": result, "ok": result in (SUCCESS, NOT_STUCK),
            "released": [o for o in outcomes if o.get("result") == SUCCESS],
            "refused": [o for o in outcomes if o.get("result") == UNSAFE],
            "failed": [o for o in outcomes if o.get("result") == FAILED]}


def diagnose(address: str, slot: Optional[int] = None,
             max_bytes: Optional[int] = None, all_slots: bool = False,
             scan: Optional[Scans] = None) -> dict:
    """Explain who holds what in the slots that are not plain (or one ``slot``, or
    every slot with ``all_slots``), the liveness verdict on every holder with its
    evidence, whether the slot is stuck or suspect, why, and the next step that clears
    it; ``slot_counts`` counts every slot (a plain slot -- FREE or COMMITTED, no lock, no
    reader, no writer waiting -- is counted, not listed); plus consumers, producer,
    block-wide findings and the block's ``health`` by the one rule (always the whole
    block's, also with ``slot``; with ``slot`` no other slot's data is read). Read-only
    (the file is opened O_RDONLY and never mapped). ``max_bytes``: see
    :func:`_block.check_budget`.

    ``scan`` (every operation takes it): the kernel scans to share with other blocks of
    one call (``each_block``); by default one is taken when a verdict needs it."""
    with _Attached(address, False) as block:
        plan = _plan(block, True, scan)
        if slot is not None:
            block.check_slot(slot)
            slots = _scanned(plan, "diagnose", max_bytes, listed=1)
        elif all_slots:
            slots = _scanned(plan, "diagnose", max_bytes, listed=block.geo.capacity,
                             hint="; diagnose without all_slots lists only the slots that "
                                  "are not plain, or diagnose a single slot")
        else:
            slots = _scanned(plan, "diagnose", max_bytes)
        return _envelope("diagnose", block, None,
                         **report(Scene(plan), slot, all_slots=all_slots, scan=slots))


def recover(address: str, slot, action: str, force: bool = False,
            dry_run: bool = False, max_bytes: Optional[int] = None,
            scan: Optional[Scans] = None, **record) -> dict:
    """Apply ``action`` (release_writer, release_readers or force_reset) to ``slot`` (an
    index or "all"). Holders not proven dead are refused (UNSAFE) unless ``force``;
    committed data is never made unreadable and half-written data never readable.
    ``dry_run`` returns the identical plan without writing. ``record``: the before-image
    and audit options of :class:`_audit.Recorder` (``snapshot``, ``snapshot_dir``,
    ``audit_log``, ``audit``)."""
    from ._audit import Recorder
    from ._recover import check_action, plan_slot, targets
    check_action(action)
    with _Attached(address, not dry_run) as block, \
            Recorder("recover", block, dry_run, forced=force, **record) as rec:
        every = slot == "all"
        check_budget(block, "recover", max_bytes, walk=every,
                     listed=block.geo.capacity if every else 1)
        plan = _plan(block, dry_run, scan, rec.journal)
        scene = Scene(plan)
        outcomes = [plan_slot(scene, i, action, force) for i in targets(scene, slot)]
        return rec.finish(_envelope("recover", block, plan, action=action, force=force,
                                    slot=slot, outcomes=outcomes,
                                    warnings=_warnings(outcomes), **_settled(outcomes)))


def cleanup(address: str, dry_run: bool = False, max_bytes: Optional[int] = None,
            scan: Optional[Scans] = None, **record) -> dict:
    """Clear every dead consumer's heartbeat entry (pid, identity, heartbeat, read
    position, evidence) after releasing the readers attributed to it, then recompute
    active_consumer_count and read_index from the survivors."""
    from ._audit import Recorder
    from ._cleanup import cleanup as _cleanup
    with _Attached(address, not dry_run) as block, \
            Recorder("cleanup", block, dry_run, **record) as rec:
        check_budget(block, "cleanup", max_bytes, walk=False)
        plan = _plan(block, dry_run, scan, rec.journal)
        body = _cleanup(Scene(plan))
        outcomes = body["outcomes"]
        settled = _settled(outcomes)  # type: ignore[arg-type]
        if settled["result"] == NOT_STUCK and plan.changed:
            settled["result"] = SUCCESS   # only counts were reconciled
        return rec.finish(_envelope("cleanup", block, plan, warnings=_warnings(outcomes),
                                    **dict(body, **settled)))


def validate(address: str, repair: bool = False, dry_run: bool = False,
             progress: Progress = None, max_bytes: Optional[int] = None,
             scan: Optional[Scans] = None, **record) -> dict:
    """Check header, state sanity (indexes included) and every checksum (recomputed,
    never the cached "verified" flag), and FREE slots pylabhub's own check would fail.
    Writes nothing unless ``repair``, which re-blesses only COMMITTED slots and lists
    each. ``valid``: no error finding left; ``health``: the one rule over these findings,
    the holders' and every slot (as diagnose and heal judge). ``progress(done_bytes,
    total_bytes)`` follows the hashing."""
    from ._audit import Recorder
    writes = repair and not dry_run
    with _Attached(address, writes, strict=False) as block, \
            Recorder("validate", block, not writes, **record) as rec:
        plan = _plan(block, not writes, scan, rec.journal)
        slots = None
        if block.geometry is not None:
            slots = _scanned(plan, "validate", max_bytes, hashing=True)
        scene = Scene(plan) if block.geometry is not None else None
        body = _validate(plan, repair=repair, progress=progress,
                         producer_dead=scene is not None and claims_orphaned(scene), scan=slots)
        if scene is not None:
            # a re-bless changes checksums only, never a slot's words: the scan still holds
            body.update(validate_health(Scene(plan, now=scene.now), body["findings"], slots))
        else:                      # no geometry to trust: the header findings say it all
            word = _health([], [], body["findings"])
            body.update(health=word, healthy=word == HEALTHY, stuck_slots=[],
                        suspect_slots=[], next_steps=[], holder_findings=[])
        out = _envelope("validate", block, plan, repair=repair, ok=body["valid"],
                        dry_run=dry_run, **body)
        return rec.finish(out) if writes else out


def heal(address: str, repair: bool = False, dry_run: bool = False,
         progress: Progress = None, max_bytes: Optional[int] = None,
         force_refused: Optional[Iterable[Dict[str, object]]] = None,
         scan: Optional[Scans] = None, **record) -> dict:
    """The safe composite: cleanup, release what dead holders own, scrub FREE slots
    pylabhub's own check fails, give back slot ids a dead producer claimed, validate
    (repair only when asked), and judge the result by the one rule (``health``). Never
    forced: what only force could clear (a suspect or unknown holder, a writer waiting on
    readers nothing proves gone) is reported as refused, with the forced command.

    ``force_refused``: the forced actions an operator enabled, ``{"name", "slot",
    "action", "reason"}`` each (``slot`` an index or ``"all"``; entries naming another
    block are ignored). Each slot this heal refused that an entry names gets the entry's
    action with force (:func:`recover`), and the block is healed again; ``forced`` lists
    them (``slot``, ``action``, ``reason``, ``result``, ``changed``, ``message``,
    ``warnings``). A slot heal did not refuse is never forced. In a dry run the forced
    actions are predicted apart from the heal (a plan sees only its own changes), so the
    refusal stays in the result.

    ``record``: as :func:`recover`'s; with ``force_refused`` each heal and each forced
    action is a run of its own (its before-image, its audit line): ``snapshots`` and
    ``audits`` list them all, in order."""
    first = _heal_once(address, repair, dry_run, progress, max_bytes, scan, record)
    todo = _enabled(first, force_refused or ())
    if not todo:
        return first
    forced = []
    for slot, action, reason in todo:
        done = recover(address, slot, action, force=True, dry_run=dry_run,
                       max_bytes=max_bytes, scan=scan, **record)
        outcome = done["outcomes"][0] if done["outcomes"] else {}
        forced.append({"slot": slot, "action": action, "reason": reason,
                       "result": done["result"], "changed": done["changed"],
                       "message": outcome.get("message", ""), "warnings": done["warnings"],
                       "outcomes": done["outcomes"], "changes": done["changes"],
                       "snapshot": (done.get("snapshot") or {}).get("id"),
                       "audit": done.get("audit")})
    if dry_run:      # nothing written: a second heal would only repeat the first
        last, before = first, []
    else:
        last, before = (_heal_once(address, repair, dry_run, None, max_bytes, scan, record),
                        [first])
    return _with_forced(before, forced, last)


def _heal_once(address: str, repair: bool, dry_run: bool, progress: Progress,
               max_bytes: Optional[int], scan: Optional[Scans],
               record: Dict[str, Any]) -> dict:
    from ._audit import Recorder
    from ._heal import heal as _heal
    with _Attached(address, not dry_run) as block, \
            Recorder("heal", block, dry_run, **record) as rec:
        plan = _plan(block, dry_run, scan, rec.journal)
        _scanned(plan, "heal", max_bytes, hashing=True)   # heal scans again after cleanup
        body = _heal(plan, repair=repair, progress=progress)
        outcomes = (body["cleanup"]["outcomes"] + body["outcomes"]  # type: ignore[operator]
                    + body["indexes"])
        body.update(_settled(outcomes))
        checked = body["validate"]
        body.update(valid=checked["valid"], unrepaired=checked["unrepaired"],  # type: ignore
                    forced=[],
                    # the one rule after the steps, and nothing refused (never forced)
                    healthy=bool(body["after"]["healthy"]) and not body["refused"])  # type: ignore
        return rec.finish(_envelope("heal", block, plan, repair=repair,
                                    warnings=_warnings(outcomes), **body))


def _enabled(result: dict, entries: Iterable[Dict[str, object]]) -> List[tuple]:
    """``(slot, action, reason)`` for every refused slot of ``result`` that an entry
    enables (same block address, same slot or ``all``), each once, in refusal order."""
    address = str(result["block"]["address"])
    todo: List[tuple] = []
    for refused in result["refused"]:
        for entry in entries:
            if str(entry.get("name")) != address or refused.get("slot") is None:
                continue
            if str(entry.get("slot")).lower() not in (str(refused["slot"]), "all"):
                continue
            action = str(entry.get("action"))
            from ._recover import check_action
            check_action(action)
            item = (refused["slot"], action, str(entry.get("reason") or ""))
            if item not in todo:
                todo.append(item)
    return todo


def _with_forced(before: List[dict], forced: List[dict], last: dict) -> dict:
    """The last heal's result, with what came before it (an earlier heal, the forced
    actions) in ``forced``, ``released``, ``failed``, ``changes``, ``warnings`` and
    ``changed``; what is refused and the health are the last heal's."""
    out = dict(last)
    steps = [o for f in forced for o in f["outcomes"]]
    out["forced"] = [{k: v for k, v in f.items() if k not in ("outcomes", "changes", "audit")}
                     for f in forced]
    out["released"] = ([o for r in before for o in r["released"]]
                       + [o for o in steps if o.get("result") == SUCCESS] + last["released"])
    out["failed"] = [o for o in steps if o.get("result") == FAILED] + last["failed"]
    out["changes"] = ([c for r in before for c in r["changes"]]
                      + [c for f in forced for c in f["changes"]] + last["changes"])
    out["warnings"] = ([w for r in before for w in r["warnings"]]
                       + [w for f in forced for w in f["warnings"]] + last["warnings"])
    out["changed"] = bool(out["changes"]) or any(r["changed"] for r in before + [last])
    out["ok"] = last["ok"] and not out["failed"]
    out["result"] = aggregate(steps + last["cleanup"]["outcomes"] + last["outcomes"]
                              + last["indexes"])
    # each heal and each forced action is a run of its own: its before-image, its audit
    ids = ([(r.get("snapshot") or {}).get("id") for r in before]
           + [f.get("snapshot") for f in forced] + [(last.get("snapshot") or {}).get("id")])
    out["snapshots"] = [i for i in ids if i]
    out["audits"] = [r["audit"] for r in before + forced + [last] if r.get("audit")]
    return out


def undo(snapshot_id: str, dry_run: bool = False, snapshot_dir: Optional[str] = None,
         **record) -> dict:
    """Put back what the run of ``snapshot_id`` (an id in the snapshot directory, or the
    path of a snapshot) stored, newest first, by CAS on the value that run wrote. A dry pass over every
    store comes first: if anything changed since (or the block was re-created), the
    whole undo is refused naming the field (:class:`_errors.UndoRefused`, exit 6;
    :class:`_errors.SnapshotMismatch`, exit 4) and nothing changes. The undo is itself
    journaled (its own snapshot), so an undo can be undone. See :mod:`_snapshot`."""
    from ._audit import Recorder
    from ._snapshot import apply_undo, check_identity, load, locate
    snap = load(locate(snapshot_id, snapshot_dir))
    head = snap["head"]
    address = str(head["block"]["address"])                        # type: ignore[index]

    def refuse(problems: List[str], block_address: str) -> UndoRefused:
        more = " (and %d more)" % (len(problems) - 1) if len(problems) > 1 else ""
        return UndoRefused("%s: undo of %s refused: %s%s; nothing was changed"
                           % (block_address, head["id"], problems[0], more),
                           snapshot=head["id"], fields=problems)

    with _Attached(address, not dry_run) as block, \
            Recorder("undo", block, dry_run, snapshot_dir=snapshot_dir,
                     context={"undo_of": head["id"]}, **record) as rec:
        check_identity(block, head)                                # type: ignore[arg-type]
        plan = Plan(block, dry_run=True)
        problems = apply_undo(plan, snap)
        if problems:
            raise refuse(problems, block.address)
        if not dry_run:
            plan = Plan(block, False, rec.journal)
            plan.begin()
            try:
                problems = apply_undo(plan, snap)
            except ConcurrentChange as exc:
                problems = [exc.message]
            if problems:                    # a live change between the two passes
                plan.rollback()
                raise refuse(problems, block.address)
            plan.commit()
        return rec.finish(_envelope(
            "undo", block, plan, undo_of=head["id"], undone_operation=head["operation"],
            complete=snap["complete"], result=SUCCESS if plan.changed else NOT_STUCK,
            ok=True, outcomes=[], refused=[], warnings=[]))


def snapshots(snapshot_dir: Optional[str] = None) -> dict:
    """The before-images in the snapshot directory, newest first (read-only)."""
    from ._snapshot import listing
    return dict(schema=SCHEMA, operation="snapshots", **listing(snapshot_dir))


def metrics(pattern: Optional[str] = None, textfile: Optional[str] = None,
            audit_log: Optional[str] = None, max_bytes: Optional[int] = None) -> dict:
    """Prometheus metrics of this host (:mod:`_metrics`): every block validated read-only
    (health, stuck and suspect slots, dead consumers, integrity errors) and the audit
    log's history (last heal, actions taken and refused). ``text`` is the textfile;
    with ``textfile`` (node_exporter's textfile directory) it is also written there,
    atomically, as ``pylabhub_recovery.prom``."""
    from . import _metrics
    from ._audit import log_path
    checked = each_block("validate", pattern, max_bytes=max_bytes)
    doc = _metrics.collect(checked, log_path(audit_log))
    text = _metrics.render(doc)
    path = _metrics.write_textfile(textfile, text) if textfile else None
    return dict(schema=SCHEMA, operation="metrics", textfile=path, text=text, **doc)


def watch(policy: str, once: bool = False, on_pass: Optional[Callable[[dict], None]] = None,
          stop=None, **record) -> dict:
    """Diagnose the policy's blocks every ``interval`` and heal (never forced) a block
    whose stuck slot or dead consumer was seen unchanged for the policy's ``delay``
    (:mod:`_watch`, docs/watch.md). ``policy``: the policy file (a bad one:
    :class:`PolicyError`, exit 2); one watch per host (:class:`WatchRunning`, exit 3).
    ``once``: one pass; else until ``stop`` (a ``threading.Event``) is set, or SIGTERM /
    SIGINT in the main thread, between passes. ``on_pass(doc)`` gets each pass's document;
    ``record``: every heal's before-image and audit options, as :func:`heal`'s."""
    from ._watch import run
    return run(policy, once=once, on_pass=on_pass, stop=stop, **record)


def discover(pattern: Optional[str] = None, scan: Optional[Scans] = None) -> List[dict]:
    """Every DataBlock on this host (see :mod:`_discovery`), producers judged by one
    kernel scan taken after every header was read."""
    from ._discovery import discover as _discover
    return _discover(pattern, scans=scan)


def scan(pattern: Optional[str] = None) -> Dict[str, object]:
    """:func:`discover`, plus what could not be read: ``{"blocks", "unreadable"}``."""
    from ._discovery import scan as _scan
    return _scan(pattern)


def list_blocks(pattern: Optional[str] = None,
                max_bytes: Optional[int] = None) -> Dict[str, object]:
    """Every DataBlock on this host (:func:`_discovery.scan`: ``{"blocks", "unreadable"}``),
    each sound block with its ``health`` by the one rule (the word diagnose gives:
    healthy, degraded, suspect, stuck or corrupt) and its ``stuck_slots`` and
    ``suspect_slots``. Read-only and cheap: the slots in use, the consumer table and the
    header, hashing no committed slot. A block whose header is not sound, that cannot be
    opened or that is over the ``max_bytes`` budget gets ``health`` null
    (``health_error`` says why)."""
    found = scan(pattern)
    sound = [e for e in found["blocks"] if e["status"] == "ok"]  # type: ignore[union-attr]
    scans = Scans()                 # one kernel scan judges the holders of every block
    for entry in sound:
        preobserve(scans, str(entry["address"]), max_bytes)
    for entry in found["blocks"]:  # type: ignore[union-attr]
        entry.update(health=None, stuck_slots=None, suspect_slots=None, health_error=None)
        if entry["status"] != "ok":
            continue
        try:
            with _Attached(str(entry["address"]), False) as block:
                plan = _plan(block, True, scans)
                slots = _scanned(plan, "list", max_bytes)
                scene = Scene(plan)
                judged = assess(scene, findings_of(scene, slots), indexes=slots.interesting)
        except RecoveryError as exc:
            entry["health_error"] = exc.to_dict()
            continue
        entry.update(health=judged["health"], stuck_slots=judged["stuck_slots"],
                     suspect_slots=judged["suspect_slots"])
    return found


def each_block(operation: str, pattern: Optional[str] = None, **kwargs: object) -> dict:
    """Run ``operation`` (diagnose, cleanup, validate or heal) on every block discovered.

    One call per host for a fleet. Entries: ``address``, ``status`` (discovery's),
    ``result`` (the operation's dict or None), ``error`` (``code``/``message`` or None) and
    ``skipped`` (why not touched, or None). A block whose header is not sound is skipped
    by everything but validate (which reports exactly those problems), and so is a block
    over the ``max_bytes`` budget (named, with its geometry); an error on one block does
    not stop the others.

    One kernel scan serves every block: each block's holder words are read (by pread,
    ``_observe.preobserve``) before it is taken, so a holder is proven absent by it; only
    a word that changed since is judged by a newer scan.
    """
    from ._discovery import discover as _discover
    run = {"diagnose": diagnose, "cleanup": cleanup, "validate": validate, "heal": heal}
    if operation not in run:
        raise UsageError("%r cannot run on every block; choose one of %s"
                         % (operation, ", ".join(sorted(run))))
    mutating = operation != "diagnose" and not kwargs.get("dry_run") and (
        operation != "validate" or bool(kwargs.get("repair")))
    scans = Scans()
    entries: List[dict] = []
    with _registry.registration(active=mutating):
        found_all = _discover(pattern, verdicts=False)
        budget = kwargs.get("max_bytes")
        for found in found_all:
            if found["status"] == "ok":
                preobserve(scans, str(found["address"]), budget)  # type: ignore[arg-type]
        for found in found_all:
            entry = {"address": found["address"], "status": found["status"], "result": None,
                     "error": None, "skipped": None}
            entries.append(entry)
            if found["status"] != "ok" and operation != "validate":
                entry["skipped"] = "header not sound: %s" % "; ".join(found["problems"])
                continue
            try:
                entry["result"] = run[operation](found["address"], scan=scans, **kwargs)
            except OverBudget as exc:           # its message starts with the address
                prefix = "%s: " % found["address"]
                entry["skipped"] = (exc.message[len(prefix):] if exc.message.startswith(prefix)
                                    else exc.message)
            except RecoveryError as exc:
                entry["error"] = exc.to_dict()
    judges = operation != "cleanup"          # the others' results carry the one rule
    for entry in entries:
        result = entry["result"]
        entry["health"] = None if result is None else result.get("health")
        if result is None:                   # an error, or skipped: never called healthy
            entry["healthy"] = False
        else:
            entry["healthy"] = bool(result["healthy"]) if judges else None
    results = [e["result"] for e in entries if e["result"] is not None]
    return {"schema": SCHEMA, "operation": operation, "pattern": pattern,
            "dry_run": bool(kwargs.get("dry_run", False)),
            "changed": any(r.get("changed") for r in results),
            "ok": not any(e["error"] for e in entries) and all(
                r.get("ok", r.get("healthy", True)) for r in results),
            "healthy": all(e["healthy"] for e in entries) if judges else None,
            "blocks": entries}


def examine(address: str, diagnosis: bool = True, validation: bool = False,
            max_bytes: Optional[int] = None) -> Dict[str, object]:
    """One block's health summary, read-only (``datablock_info``'s ``health``): its
    ``diagnose`` (``stuck_slots``, ``suspect_slots``, ``findings``, ``dead_consumers``,
    ``slots``: the stuck and suspect slots explained) and, with ``validation``, its
    ``validate`` (``valid``, ``validation_findings``). ``status`` is the health word of the
    most thorough judgement that ran (validation's hashes too), ``healthy`` whether it is
    ``healthy``. An error is kept in ``error`` (the first met), not raised; then
    ``healthy`` is null unless what did run already says not healthy."""
    out: Dict[str, object] = {
        "healthy": None, "status": None, "stuck_slots": None, "suspect_slots": None,
        "findings": None, "dead_consumers": None, "slots": None, "valid": None,
        "validation_findings": None, "error": None}
    verdicts = []
    if diagnosis:
        try:
            d = diagnose(address, max_bytes=max_bytes)
        except RecoveryError as exc:
            out["error"] = exc.to_dict()
        else:
            out.update(stuck_slots=d["stuck_slots"], suspect_slots=d["suspect_slots"],
                       findings=d["findings"], status=d["health"],
                       dead_consumers=sum(1 for c in d["consumers"] if c["action"] == "cleanup"),
                       slots=[s for s in d["slots"] if s["is_stuck"] or s["suspect"]])
            verdicts.append(bool(d["healthy"]))
    if validation:
        try:
            v = validate(address, max_bytes=max_bytes)
        except RecoveryError as exc:
            out["error"] = out["error"] or exc.to_dict()
        else:
            out.update(valid=v["valid"], validation_findings=v["findings"], status=v["health"])
            verdicts.append(bool(v["healthy"]))
    if verdicts and (out["error"] is None or not all(verdicts)):
        out["healthy"] = all(verdicts)
    return out


# --------------------------------------------------------------------------- entry points
def drill(iterations: Optional[int] = None, seed: Optional[int] = None,
          capacity: Optional[int] = None, stride: Optional[int] = None,
          progress: Optional[Callable[[int, int], None]] = None,
          dry_run: bool = False) -> Optional[dict]:
    """The crash drill (:mod:`_drill`): ``iterations`` kill-heal-check rounds on scratch
    blocks of ``capacity`` slots of ``stride`` bytes (None: the defaults of
    :mod:`_contract`). Every argument is checked here, for every face, before anything
    is created: :class:`UsageError` names the first one that is wrong. ``dry_run``: check
    the arguments only (the drill starts and kills processes) and return None."""
    iterations = DRILL_ITERATIONS if iterations is None else iterations
    capacity = DRILL_CAPACITY if capacity is None else capacity
    stride = DRILL_STRIDE if stride is None else stride
    for name, value in (("iterations", iterations), ("capacity", capacity)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError("%s must be a whole number of at least 1, not %r" % (name, value))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UsageError("seed must be a whole number >= 0, not %r" % (seed,))
    problem = geometry_problem(capacity, stride)
    if problem:
        raise UsageError("stride: %s" % problem)
    if dry_run:
        return None
    from ._drill import drill as _drill
    return _drill(iterations, seed, capacity=capacity, stride=stride, progress=progress)


def practice(scenario: str, name: Optional[str] = None) -> dict:
    """Leave a real crashed block to practise on (:mod:`_practice`): a new block ``name``
    (default ``PRACTICE_NAME``; an existing block is refused) with ``scenario``, one of
    ``PRACTICE_SCENARIOS``, made by real processes really SIGKILLed. Returns what was
    left, each process with its fate, and ``live_pids`` (see :func:`practice_stop`).
    ``next_steps`` are this host's own diagnosis and validation of the block, not the
    procedure's seed steps (each fault's ``next``): where the kernel scan is partial, the
    readers' step is the forced one, since the unforced one would be refused."""
    from ._practice import practice as _practice
    result = _practice(scenario, name)
    steps = list(diagnose(result["block"])["next_steps"])
    data_steps = [finding_step(f) for f in validate(result["block"])["findings"]]
    data_steps = [s for s in data_steps if s and s not in steps]
    if data_steps:      # damaged data: validate shows it before --repair changes it
        steps += [_step("validate")] + data_steps
    result["next_steps"] = steps
    return result


def practice_stop(name: Optional[str] = None) -> dict:
    """Kill what a practice left running on block ``name`` and remove the block; a block
    that is not a practice block is refused (:class:`UsageError`), nothing changed."""
    from ._practice import stop as _stop
    return _stop(name)


def geometry_problem(capacity: int, stride: int, flex_size: int = 0) -> Optional[str]:
    """Why a block of this geometry cannot exist in the DataBlock 1.0 format, or None."""
    if isinstance(stride, bool) or not isinstance(stride, int):
        return "slot stride %r is not a whole number" % (stride,)
    return L.Geometry(capacity, stride, flex_size).problem()


def atomics() -> Dict[str, Any]:
    """Whether this host can change blocks atomically (``available``) and what provides
    it, or why nothing does (``provider``). Imported here, not at start-up: choosing the
    provider looks for libatomic (``ldconfig``), which read-only commands never need."""
    from . import _atomics
    return {"available": bool(_atomics.AVAILABLE), "provider": _atomics.PROVIDER}


def state_name(value: int) -> str:
    """A slot state's name (``WRITING``), ``UNKNOWN(<n>)`` for a value the format lacks."""
    return L.enum_name(L.SlotState, value)
