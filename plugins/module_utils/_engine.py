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
from ._block import Block, check_budget, open_block
from ._cleanup import cleanup as _cleanup
from ._diagnose import assess, findings_of, producer_dead, report, validate_health
from ._heal import heal as _heal
from ._observe import Scene
from ._plan import Plan
from ._recover import (FAILED, NOT_STUCK, SUCCESS, UNSAFE, check_action, plan_slot,
                       targets)
from ._scan import SlotScan, scan_slots
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
                     hashing=hashing, hint=hint)
    return scan


def diagnose(address: str, slot: Optional[int] = None,
             max_bytes: Optional[int] = None, all_slots: bool = False) -> dict:
    """Explain who holds what in the slots that are not plain (or one ``slot``, or
    every slot with ``all_slots``), the liveness verdict on every holder with its
    evidence, whether the slot is stuck or suspect, why, and the next step that clears
    it; ``slot_counts`` counts every slot (a plain slot -- FREE or COMMITTED, no lock, no
    reader, no writer waiting -- is counted, not listed); plus consumers, producer,
    block-wide findings and the block's ``health`` by the one rule (always the whole
    block's, also with ``slot``; with ``slot`` no other slot's data is read). Read-only
    (the file is opened O_RDONLY and never mapped). ``max_bytes``: see
    :func:`_block.check_budget`."""
    with open_block(address) as block:
        plan = Plan(block, dry_run=True)
        if slot is not None:
            block.check_slot(slot)
            scan = _scanned(plan, "diagnose", max_bytes, listed=1)
        elif all_slots:
            scan = _scanned(plan, "diagnose", max_bytes, listed=block.geo.capacity,
                            hint="; diagnose without all_slots lists only the slots that "
                                 "are not plain, or diagnose a single slot")
        else:
            scan = _scanned(plan, "diagnose", max_bytes, hint="; or diagnose a single slot")
        return _envelope("diagnose", block, None,
                         **report(Scene(plan), slot, all_slots=all_slots, scan=scan))


def recover(address: str, slot, action: str, force: bool = False,
            dry_run: bool = False, max_bytes: Optional[int] = None) -> dict:
    """Apply ``action`` (release_writer, release_readers or force_reset) to ``slot`` (an
    index or "all"). Holders not proven dead are refused (UNSAFE) unless ``force``;
    committed data is never made unreadable and half-written data never readable.
    ``dry_run`` returns the identical plan without writing."""
    check_action(action)
    with open_block(address, writable=not dry_run) as block:
        every = slot == "all"
        check_budget(block, "recover", max_bytes, walk=every,
                     listed=block.geo.capacity if every else 1)
        plan = Plan(block, dry_run)
        scene = Scene(plan)
        outcomes = [plan_slot(scene, i, action, force) for i in targets(scene, slot)]
        result = aggregate(outcomes)
        return _envelope("recover", block, plan, action=action, force=force,
                         slot=slot, result=result, ok=result in (SUCCESS, NOT_STUCK),
                         outcomes=outcomes, warnings=_warnings(outcomes),
                         refused=[o for o in outcomes if o["result"] == UNSAFE])


def cleanup(address: str, dry_run: bool = False, max_bytes: Optional[int] = None) -> dict:
    """Clear every dead consumer's heartbeat entry (pid, identity, heartbeat, read
    position, evidence) after releasing the readers attributed to it, then recompute
    active_consumer_count and read_index from the survivors."""
    with open_block(address, writable=not dry_run) as block:
        check_budget(block, "cleanup", max_bytes, walk=False)
        plan = Plan(block, dry_run)
        body = _cleanup(Scene(plan))
        outcomes = body["outcomes"]
        result = aggregate(outcomes)  # type: ignore[arg-type]
        if result == NOT_STUCK and plan.changed:
            result = SUCCESS             # only counts were reconciled
        return _envelope("cleanup", block, plan, result=result,
                         ok=result in (SUCCESS, NOT_STUCK),
                         refused=[o for o in outcomes if o.get("result") == UNSAFE],
                         warnings=_warnings(outcomes), **body)


def validate(address: str, repair: bool = False, dry_run: bool = False,
             progress: Progress = None, max_bytes: Optional[int] = None) -> dict:
    """Check header, state sanity (indexes included) and every checksum (recomputed,
    never the cached "verified" flag), and FREE slots pylabhub's own check would fail.
    Writes nothing unless ``repair``, which re-blesses only COMMITTED slots and lists
    each. ``valid``: no error finding left; ``health``: the one rule over these findings,
    the holders' and every slot (as diagnose and heal judge). ``progress(done_bytes,
    total_bytes)`` follows the hashing."""
    writes = repair and not dry_run
    with open_block(address, writable=writes, strict=False) as block:
        plan = Plan(block, dry_run=not writes)
        scan = None
        if block.geometry is not None:
            scan = _scanned(plan, "validate", max_bytes, hashing=True)
        scene = Scene(plan) if block.geometry is not None else None
        body = _validate(plan, repair=repair, progress=progress,
                         producer_dead=scene is not None and producer_dead(scene), scan=scan)
        if scene is not None:
            # a re-bless changes checksums only, never a slot's words: the scan still holds
            body.update(validate_health(Scene(plan, now=scene.now), body["findings"], scan))
        else:                      # no geometry to trust: the header findings say it all
            word = _health([], [], body["findings"])
            body.update(health=word, healthy=word == "healthy", stuck_slots=[],
                        suspect_slots=[], next_steps=[], holder_findings=[])
        return _envelope("validate", block, plan, repair=repair, ok=body["valid"],
                         dry_run=dry_run, **body)


def heal(address: str, repair: bool = False, dry_run: bool = False,
         progress: Progress = None, max_bytes: Optional[int] = None) -> dict:
    """The safe composite: cleanup, release what dead holders own, scrub FREE slots
    pylabhub's own check fails, give back slot ids a dead producer claimed, validate
    (repair only when asked), and judge the result by the one rule (``health``). Never
    forced: what only force could clear (a suspect or unknown holder, a writer waiting on
    readers nothing proves gone) is reported as refused, with the forced command."""
    with open_block(address, writable=not dry_run) as block:
        plan = Plan(block, dry_run)
        _scanned(plan, "heal", max_bytes, hashing=True)   # heal scans again after cleanup
        body = _heal(plan, repair=repair, progress=progress)
        outcomes = body["outcomes"] + body["cleanup"]["outcomes"]  # type: ignore
        body["refused"] = [o for o in outcomes if o.get("result") == UNSAFE]
        failed = any(o.get("result") == FAILED
                     for o in outcomes + body["indexes"])  # type: ignore[operator]
        return _envelope("heal", block, plan, repair=repair,
                         ok=not body["refused"] and not failed,
                         warnings=_warnings(outcomes), **body)


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
                plan = Plan(block, dry_run=True)
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
