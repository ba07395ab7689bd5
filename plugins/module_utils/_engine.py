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
from ._block import Block, open_block
from ._cleanup import cleanup as _cleanup
from ._diagnose import report
from ._heal import heal as _heal
from ._observe import Scene
from ._plan import Plan
from ._recover import (FAILED, NOT_STUCK, SUCCESS, UNSAFE, check_action, plan_slot,
                       targets)
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


def diagnose(address: str, slot: Optional[int] = None) -> dict:
    with open_block(address) as block:
        plan = Plan(block, dry_run=True)
        return _envelope("diagnose", block, None, **report(Scene(plan), slot))


def recover(address: str, slot, action: str, force: bool = False,
            dry_run: bool = False) -> dict:
    check_action(action)
    with open_block(address, writable=not dry_run) as block:
        plan = Plan(block, dry_run)
        scene = Scene(plan)
        outcomes = [plan_slot(scene, i, action, force) for i in targets(scene, slot)]
        result = aggregate(outcomes)
        return _envelope("recover", block, plan, action=action, force=force,
                         slot=slot, result=result, ok=result in (SUCCESS, NOT_STUCK),
                         outcomes=outcomes, warnings=_warnings(outcomes),
                         refused=[o for o in outcomes if o["result"] == UNSAFE])


def cleanup(address: str, dry_run: bool = False) -> dict:
    with open_block(address, writable=not dry_run) as block:
        plan = Plan(block, dry_run)
        body = _cleanup(Scene(plan))
        outcomes = body["outcomes"]
        refused = [o for o in outcomes if o.get("result") == UNSAFE]  # type: ignore
        failed = any(o.get("result") == FAILED for o in outcomes)  # type: ignore
        return _envelope("cleanup", block, plan, ok=not failed and not refused,
                         refused=refused, warnings=_warnings(outcomes), **body)


def validate(address: str, repair: bool = False, dry_run: bool = False,
             progress: Progress = None) -> dict:
    writes = repair and not dry_run
    with open_block(address, writable=writes, strict=False) as block:
        plan = Plan(block, dry_run=not writes)
        body = _validate(plan, repair=repair, progress=progress)
        return _envelope("validate", block, plan, repair=repair, ok=body["valid"],
                         dry_run=dry_run, **body)


def heal(address: str, repair: bool = False, dry_run: bool = False,
         progress: Progress = None) -> dict:
    with open_block(address, writable=not dry_run) as block:
        plan = Plan(block, dry_run)
        body = _heal(plan, repair=repair, progress=progress)
        outcomes = body["outcomes"] + body["cleanup"]["outcomes"]  # type: ignore
        body["refused"] = [o for o in outcomes if o.get("result") == UNSAFE]
        return _envelope("heal", block, plan, ok=not body["refused"] and not any(
            o.get("result") == FAILED for o in outcomes), warnings=_warnings(outcomes), **body)


def discover(pattern: Optional[str] = None) -> List[dict]:
    """Every DataBlock on this host (see :mod:`_discovery`)."""
    from ._discovery import discover as _discover
    return _discover(pattern)


def each_block(operation: str, pattern: Optional[str] = None, **kwargs: object) -> dict:
    """Run ``operation`` (diagnose, cleanup, validate or heal) on every block discovered.

    One call per host for a fleet: a block that cannot be attached (foreign layout,
    mid-creation, permission) is reported under ``errors`` and does not stop the others.
    """
    from ._errors import RecoveryError, UsageError
    run = {"diagnose": diagnose, "cleanup": cleanup, "validate": validate, "heal": heal}
    if operation not in run:
        raise UsageError("%r cannot run on every block; choose one of %s"
                         % (operation, ", ".join(sorted(run))))
    results: List[dict] = []
    errors: List[dict] = []
    for entry in discover(pattern):
        address = str(entry["address"])
        try:
            results.append(run[operation](address, **kwargs))
        except RecoveryError as exc:
            errors.append({"address": address, "error": exc.to_dict()})
    ok = not errors and all(r.get("ok", r.get("healthy", True)) for r in results)
    return {"schema": SCHEMA, "operation": operation, "pattern": pattern,
            "dry_run": bool(kwargs.get("dry_run", False)),
            "changed": any(r.get("changed") for r in results), "ok": ok,
            "blocks": results, "errors": errors}
