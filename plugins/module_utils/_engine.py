# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The recovery engine's front door: what the CLI, the API and the modules call.

Each function takes a block address, attaches (read-only unless it may write), runs one
operation in a :class:`Plan`, and returns one JSON-ready dict in schema
``pylabhub.recovery/v1`` (docs/schema.md). Errors are raised from the ``_errors``
hierarchy. Nothing here decides policy: that lives in the modules it calls.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

from . import _layout as L
from ._audit import Recorder
from ._block import Block, check_budget, open_block
from ._cleanup import cleanup as _cleanup
from ._diagnose import assess, findings_of, producer_dead, report, validate_health
from ._heal import heal as _heal
from ._observe import Scene
from ._plan import Plan
from ._recover import (FAILED, NOT_STUCK, SUCCESS, UNSAFE, check_action, plan_slot,
                       targets)
from ._status import health as _health
from ._validate import Progress, validate as _validate

SCHEMA = "pylabhub.recovery/v1"
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


def _warnings(outcomes: Iterable[Dict[str, object]]) -> List[str]:
    return [w for o in outcomes for w in o.get("warnings", [])]  # type: ignore[union-attr]


def diagnose(address: str, slot: Optional[int] = None,
             max_bytes: Optional[int] = None) -> dict:
    """Explain who holds what in each slot (or one ``slot``), the liveness verdict on
    every holder with its evidence, whether the slot is stuck or suspect, why, and the
    next step that clears it; plus consumers, producer, block-wide findings and the
    block's ``health`` by the one rule (always the whole block's, also with ``slot``).
    Read-only (the file is opened O_RDONLY and never mapped). ``max_bytes``: see
    :func:`_block.check_budget`."""
    with open_block(address) as block:
        if slot is None:
            check_budget(block, "diagnose", max_bytes, listed=block.geo.capacity,
                         hint="; or diagnose a single slot")
        else:
            check_budget(block, "diagnose", max_bytes, walk=False, listed=1)
        plan = Plan(block, dry_run=True)
        return _envelope("diagnose", block, None, **report(Scene(plan), slot))


def recover(address: str, slot, action: str, force: bool = False,
            dry_run: bool = False, max_bytes: Optional[int] = None, **record) -> dict:
    """Apply ``action`` (release_writer, release_readers or force_reset) to ``slot`` (an
    index or "all"). Holders not proven dead are refused (UNSAFE) unless ``force``;
    committed data is never made unreadable and half-written data never readable.
    ``dry_run`` returns the identical plan without writing. ``record``: the before-image
    and audit options of :class:`_audit.Recorder` (``snapshot``, ``snapshot_dir``,
    ``audit_log``, ``audit``)."""
    check_action(action)
    with open_block(address, writable=not dry_run) as block, \
            Recorder("recover", block, dry_run, forced=force, **record) as rec:
        every = slot == "all"
        check_budget(block, "recover", max_bytes, walk=every,
                     listed=block.geo.capacity if every else 1)
        plan = Plan(block, dry_run, rec.journal)
        scene = Scene(plan)
        outcomes = [plan_slot(scene, i, action, force) for i in targets(scene, slot)]
        result = aggregate(outcomes)
        return rec.finish(_envelope(
            "recover", block, plan, action=action, force=force,
            slot=slot, result=result, ok=result in (SUCCESS, NOT_STUCK),
            outcomes=outcomes, warnings=_warnings(outcomes),
            refused=[o for o in outcomes if o["result"] == UNSAFE]))


def cleanup(address: str, dry_run: bool = False, max_bytes: Optional[int] = None,
            **record) -> dict:
    """Clear every dead consumer's heartbeat entry (pid, identity, heartbeat, read
    position, evidence) after releasing the readers attributed to it, then recompute
    active_consumer_count and read_index from the survivors."""
    with open_block(address, writable=not dry_run) as block, \
            Recorder("cleanup", block, dry_run, **record) as rec:
        check_budget(block, "cleanup", max_bytes, walk=False)
        plan = Plan(block, dry_run, rec.journal)
        body = _cleanup(Scene(plan))
        outcomes = body["outcomes"]
        result = aggregate(outcomes)  # type: ignore[arg-type]
        if result == NOT_STUCK and plan.changed:
            result = SUCCESS             # only counts were reconciled
        return rec.finish(_envelope(
            "cleanup", block, plan, result=result, ok=result in (SUCCESS, NOT_STUCK),
            refused=[o for o in outcomes if o.get("result") == UNSAFE],
            warnings=_warnings(outcomes), **body))


def validate(address: str, repair: bool = False, dry_run: bool = False,
             progress: Progress = None, max_bytes: Optional[int] = None,
             **record) -> dict:
    """Check header, state sanity (indexes included) and every checksum (recomputed,
    never the cached "verified" flag), and FREE slots pylabhub's own check would fail.
    Writes nothing unless ``repair``, which re-blesses only COMMITTED slots and lists
    each. ``valid``: no error finding left; ``health``: the one rule over these findings,
    the holders' and every slot (as diagnose and heal judge). ``progress(done_bytes,
    total_bytes)`` follows the hashing."""
    writes = repair and not dry_run
    with open_block(address, writable=writes, strict=False) as block, \
            Recorder("validate", block, not writes, **record) as rec:
        check_budget(block, "validate", max_bytes, hashing=True)
        plan = Plan(block, not writes, rec.journal)
        scene = Scene(plan) if block.geometry is not None else None
        body = _validate(plan, repair=repair, progress=progress,
                         producer_dead=scene is not None and producer_dead(scene))
        if scene is not None:
            body.update(validate_health(Scene(plan, now=scene.now), body["findings"]))
        else:                      # no geometry to trust: the header findings say it all
            word = _health([], [], body["findings"])
            body.update(health=word, healthy=word == "healthy", stuck_slots=[],
                        suspect_slots=[], next_steps=[], holder_findings=[])
        out = _envelope("validate", block, plan, repair=repair, ok=body["valid"],
                        dry_run=dry_run, **body)
        return rec.finish(out) if writes else out


def heal(address: str, repair: bool = False, dry_run: bool = False,
         progress: Progress = None, max_bytes: Optional[int] = None, **record) -> dict:
    """The safe composite: cleanup, release what dead holders own, scrub FREE slots
    pylabhub's own check fails, give back slot ids a dead producer claimed, validate
    (repair only when asked), and judge the result by the one rule (``health``). Never
    forced: what only force could clear (a suspect or unknown holder, a writer waiting on
    readers nothing proves gone) is reported as refused, with the forced command."""
    with open_block(address, writable=not dry_run) as block, \
            Recorder("heal", block, dry_run, **record) as rec:
        check_budget(block, "heal", max_bytes, hashing=True)
        plan = Plan(block, dry_run, rec.journal)
        body = _heal(plan, repair=repair, progress=progress)
        outcomes = body["outcomes"] + body["cleanup"]["outcomes"]  # type: ignore
        body["refused"] = [o for o in outcomes if o.get("result") == UNSAFE]
        failed = any(o.get("result") == FAILED
                     for o in outcomes + body["indexes"])  # type: ignore[operator]
        return rec.finish(_envelope("heal", block, plan, repair=repair,
                                    ok=not body["refused"] and not failed,
                                    warnings=_warnings(outcomes), **body))


def undo(snapshot_id: str, dry_run: bool = False, snapshot_dir: Optional[str] = None,
         **record) -> dict:
    """Put back what the run of ``snapshot_id`` (an id in the snapshot directory, or the
    path of a snapshot) stored, newest first, by CAS on the value that run wrote. A dry pass over every
    store comes first: if anything changed since (or the block was re-created), the
    whole undo is refused naming the field (:class:`_snapshot.UndoRefused`, exit 6;
    :class:`_snapshot.SnapshotMismatch`, exit 4) and nothing changes. The undo is itself
    journaled (its own snapshot), so an undo can be undone. See :mod:`_snapshot`."""
    from ._errors import ConcurrentChange
    from ._snapshot import UndoRefused, apply_undo, check_identity, load, locate
    snap = load(locate(snapshot_id, snapshot_dir))
    head = snap["head"]
    address = str(head["block"]["address"])                        # type: ignore[index]

    def refuse(problems: List[str], block_address: str) -> UndoRefused:
        more = " (and %d more)" % (len(problems) - 1) if len(problems) > 1 else ""
        return UndoRefused("%s: undo of %s refused: %s%s; nothing was changed"
                           % (block_address, head["id"], problems[0], more),
                           snapshot=head["id"], fields=problems)

    with open_block(address, writable=not dry_run) as block, \
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


def discover(pattern: Optional[str] = None) -> List[dict]:
    """Every DataBlock on this host (see :mod:`_discovery`)."""
    from ._discovery import discover as _discover
    return _discover(pattern)


def list_blocks(pattern: Optional[str] = None,
                max_bytes: Optional[int] = None) -> Dict[str, object]:
    """Every DataBlock on this host (:func:`_discovery.scan`: ``{"blocks", "unreadable"}``),
    each sound block with its ``health`` by the one rule (the word diagnose gives:
    healthy, degraded, suspect, stuck or corrupt) and its ``stuck_slots`` and
    ``suspect_slots``. Read-only and cheap: the slots in use, the consumer table and the
    header, hashing no committed slot. A block whose header is not sound, that cannot be
    opened or that is over the ``max_bytes`` budget gets ``health`` null
    (``health_error`` says why)."""
    from ._discovery import scan
    from ._errors import RecoveryError
    found = scan(pattern)
    for entry in found["blocks"]:  # type: ignore[union-attr]
        entry.update(health=None, stuck_slots=None, suspect_slots=None, health_error=None)
        if entry["status"] != "ok":
            continue
        try:
            with open_block(str(entry["address"])) as block:
                check_budget(block, "list", max_bytes)     # the slots in use, walked
                scene = Scene(Plan(block, dry_run=True))
                judged = assess(scene, findings_of(scene))
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
    """
    from ._errors import OverBudget, RecoveryError, UsageError
    run = {"diagnose": diagnose, "cleanup": cleanup, "validate": validate, "heal": heal}
    if operation not in run:
        raise UsageError("%r cannot run on every block; choose one of %s"
                         % (operation, ", ".join(sorted(run))))
    entries: List[dict] = []
    for found in discover(pattern):
        entry = {"address": found["address"], "status": found["status"], "result": None,
                 "error": None, "skipped": None}
        entries.append(entry)
        if found["status"] != "ok" and operation != "validate":
            entry["skipped"] = "header not sound: %s" % "; ".join(found["problems"])
            continue
        try:
            entry["result"] = run[operation](found["address"], **kwargs)
        except OverBudget as exc:           # its message starts with the address
            prefix = "%s: " % found["address"]
            entry["skipped"] = (exc.message[len(prefix):] if exc.message.startswith(prefix)
                                else exc.message)
        except RecoveryError as exc:
            entry["error"] = exc.to_dict()
    results = [e["result"] for e in entries if e["result"] is not None]
    return {"schema": SCHEMA, "operation": operation, "pattern": pattern,
            "dry_run": bool(kwargs.get("dry_run", False)),
            "changed": any(r.get("changed") for r in results),
            "ok": not any(e["error"] for e in entries) and all(
                r.get("ok", r.get("healthy", True)) for r in results),
            "blocks": entries}
