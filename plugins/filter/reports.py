# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reports of the roles and playbooks, built from what the engine published.

Every fact here is read from a module result (the engine's ``released``, ``refused``,
``failed``, ``unrepaired``, ``healthy``, ``health``, ``slots`` ...); nothing is judged
again and no message text is parsed. The functions only arrange and word: one call per
report, so a host's report costs one small template, not a loop of Jinja.

Filters (documented in the ``.yml`` file of each name):

* ``health_report(info, host, explain=True)`` - role ``datablock_health``'s report from
  ``datablock_info``'s result;
* ``recovery_report(heal, host, check_mode=False, allow_repair=False)`` - role
  ``datablock_recovery``'s report from ``datablock_recover``'s (``all=true action=heal``),
  also what the ``datablock_heal`` action returns;
* ``force_for_host(entries, host)`` - the ``datablock_recovery_force`` entries for one
  host, as ``datablock_recover``'s ``force_refused``;
* ``heal_verdict(reports)`` - the ``heal`` playbook's fleet verdict over every host's
  recovery report;
* ``done_lines(results)`` - what the ``recover`` playbook's step did, one text per
  outcome or finding.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

# The words of a change in the run's tense come from the core's one place for them
# (a check-mode report says "would re-bless", a real one "re-blessed"). The controller
# is no managed host: only this import-light module of the core is loaded here, as the
# fleet_summary callback loads only _contract and _errors.
from ansible_collections.pylabhub.recovery.plugins.module_utils._wording import (
    done, reblessed)

Doc = Dict[str, Any]


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def _dict(value: Any) -> Doc:
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- health
def health_report(info: Doc, host: str, explain: bool = True) -> Doc:
    """Role ``datablock_health``'s ``datablock_health_report`` (see its argument specs)."""
    blocks: List[Doc] = []
    findings: List[Doc] = []
    lines: List[str] = []
    for b in _list(_dict(info).get("blocks")):
        h = _dict(b.get("health"))
        address = b.get("address")
        entry = {"address": address, "healthy": h.get("healthy"), "status": h.get("status"),
                 "stuck_slots": _list(h.get("stuck_slots")),
                 "suspect_slots": _list(h.get("suspect_slots")),
                 "dead_consumers": h.get("dead_consumers") or 0, "valid": h.get("valid"),
                 "producer_alive": b.get("producer_alive"), "error": h.get("error")}
        if b.get("status", "ok") != "ok" and entry["error"] is None:
            entry["error"] = {"code": b["status"],
                              "message": "; ".join(_list(b.get("problems"))) or b["status"]}
        lines += _slot_lines(entry, h, explain)
        blocks.append(entry)
        for source, key in (("diagnose", "findings"), ("validate", "validation_findings")):
            for f in _list(h.get(key)):
                findings.append(dict(f, block=address, source=source))
                if source == "validate":
                    lines.append("%s: %s%s" % (address, f.get("message"),
                                               " (repairable: re-bless with repair)"
                                               if f.get("repairable") else ""))
                elif f.get("severity", "info") != "info":
                    lines.append("%s: %s" % (address, f.get("message")))
        if entry["error"] is not None:
            lines.append("%s: cannot be examined: %s" % (address, _message(entry["error"])))
    unhealthy = [e["address"] for e in blocks if e["healthy"] is not True]
    corrupt = [e["address"] for e in blocks if e["valid"] is False]
    errors = [e["address"] for e in blocks if e["error"] is not None]
    return {
        "host": host, "healthy": not unhealthy, "blocks": blocks, "findings": findings,
        "unhealthy": unhealthy, "corrupt": corrupt, "errors": errors, "lines": lines,
        "counts": {"blocks": len(blocks), "healthy": len(blocks) - len(unhealthy),
                   "unhealthy": len(unhealthy),
                   "stuck_slots": sum(len(e["stuck_slots"]) for e in blocks),
                   "suspect_slots": sum(len(e["suspect_slots"]) for e in blocks),
                   "dead_consumers": sum(int(e["dead_consumers"]) for e in blocks),
                   "corrupt": len(corrupt), "errors": len(errors)},
    }


def _slot_lines(entry: Doc, h: Doc, explain: bool) -> List[str]:
    """The stuck and suspect slots: explained (the diagnosis's reason and action), or
    named. With ``explain`` the entry gets ``slots``, the explanations."""
    if not (entry["stuck_slots"] or entry["suspect_slots"]):
        return []
    address = entry["address"]
    if not explain or entry["error"] is not None or h.get("slots") is None:
        return ["%s: stuck slots %s, suspect slots %s"
                % (address, entry["stuck_slots"], entry["suspect_slots"])]
    entry["slots"] = _list(h.get("slots"))
    return ["%s: slot %d %s, write lock %s, %d reader(s): %s -> %s"
            % (address, s["index"], s["state"], s["write_lock"], s["reader_count"],
               s.get("reason"), s.get("action") or "only a forced action releases it")
            for s in entry["slots"]]


def _message(error: Any) -> Any:
    return error.get("message", error) if isinstance(error, dict) else error


# --------------------------------------------------------------------------- recovery
def recovery_report(heal: Doc, host: str, check_mode: bool = False,
                    allow_repair: bool = False) -> Doc:
    """Role ``datablock_recovery``'s ``datablock_recovery_report`` (see its argument
    specs) from ``datablock_recover``'s ``all=true action=heal`` result: every block's
    entry, or, when the module gave no ``blocks`` (it could not run), one entry for
    ``(every block)`` with the failure as its ``error``."""
    heal = _dict(heal)
    if isinstance(heal.get("blocks"), list):
        blocks = [_recovery_entry(e) for e in heal["blocks"]]
    else:
        blocks = [{"address": "(every block)", "changed": False, "healthy": False,
                   "released": [], "cleaned": 0, "reblessed": [], "refused": [],
                   "unrepaired": [], "failed": [], "forced": [], "skipped": None,
                   "after": None, "recovery": None,
                   "error": {"code": heal.get("code") or "error",
                             "message": heal.get("msg") or "heal did not run"}}]
    unhealthy = [b["address"] for b in blocks if not b["healthy"]]
    return {"host": host, "check_mode": bool(check_mode), "allow_repair": bool(allow_repair),
            "changed": any(b["changed"] for b in blocks), "healthy": not unhealthy,
            "unhealthy": unhealthy, "blocks": blocks,
            "changed_blocks": [b["address"] for b in blocks if b["changed"]],
            "errors": [b["address"] for b in blocks if b["error"]]}


def _recovery_entry(e: Doc) -> Doc:
    r = _dict(e.get("recovery"))
    return {
        "address": e.get("address"), "changed": bool(r.get("changed")),
        "healthy": bool(e.get("healthy")),
        "released": [o.get("message") for o in _list(r.get("released"))],
        "cleaned": _dict(r.get("cleanup")).get("cleaned", 0),
        "reblessed": [x.get("slot") for x in _list(_dict(r.get("validate")).get("reblessed"))],
        "refused": _list(r.get("refused")),
        "unrepaired": [f.get("message") for f in _list(r.get("unrepaired"))],
        "failed": [o.get("message") for o in _list(r.get("failed"))],
        "forced": _list(r.get("forced")), "error": e.get("error"), "skipped": e.get("skipped"),
        "after": r.get("after"), "recovery": e.get("recovery"),
    }


def force_for_host(entries: Any, host: str) -> List[Doc]:
    """The entries of ``datablock_recovery_force`` for ``host`` (those naming it in
    ``host``, and those naming no host), as ``force_refused`` entries."""
    return [{"name": f.get("name"), "slot": f.get("slot"), "action": f.get("action"),
             "reason": f.get("reason") or ""}
            for f in _list(entries) if (f.get("host") or host) == host]


# --------------------------------------------------------------------------- fleet
def heal_verdict(reports: Any) -> Doc:
    """The heal playbook's verdict over the hosts' recovery reports: ``lines`` (per
    host, one per thing done or left), ``left`` (the hosts not healthy), ``problems``
    (per such host, the lines of what is left), ``hosts`` (how many reported) and
    ``message``: one line, what the run ends with."""
    lines: Dict[str, List[str]] = {}
    problems: Dict[str, List[str]] = {}
    left: List[str] = []
    reports = [r for r in _list(reports) if isinstance(r, dict)]
    dry = False
    for rep in reports:
        host = rep.get("host")
        dry = dry or bool(rep.get("check_mode"))
        said, todo = [], []
        for b in _list(rep.get("blocks")):
            did_here, left_here = _block_lines(b, bool(rep.get("check_mode")))
            said += did_here + left_here
            todo += left_here
        lines[host] = said or ["%d block(s), nothing to do" % len(_list(rep.get("blocks")))]
        if not rep.get("healthy"):
            left.append(host)
            problems[host] = todo
    if left:
        message = "%d host(s) left unhealthy: %s" % (
            len(left), "; ".join("%s (%s)" % (h, "; ".join(problems[h])) for h in left))
    else:
        message = "%d host(s) %s: every block healthy" % (len(reports), done(dry, "heal"))
    return {"lines": lines, "left": left, "problems": problems, "hosts": len(reports),
            "message": message}


def _block_lines(b: Doc, dry_run: bool = False) -> tuple:
    """One block of a recovery report: (lines of what was done, lines of what is left).
    ``dry_run`` (a check-mode report): what would be done, in the conditional (the
    engine's own messages already are)."""
    a = b.get("address")
    done_ = ["%s: %s" % (a, m) for m in _list(b.get("released"))]
    done_ += ["%s: %s (allow_repair)" % (a, reblessed(dry_run, {"slot": s}))
              for s in _list(b.get("reblessed"))]
    done_ += ["%s: FORCED %s: %s" % (a, f.get("action"), f.get("message"))
              for f in _list(b.get("forced"))]
    left = ["%s: REFUSED %s" % (a, r.get("message")) for r in _list(b.get("refused"))]
    left += ["%s: NOT REPAIRED %s (datablock_recovery_allow_repair=true re-blesses it)"
             % (a, m) for m in _list(b.get("unrepaired"))]
    left += ["%s: FAILED %s" % (a, m) for m in _list(b.get("failed"))]
    if b.get("error"):
        left.append("%s: ERROR %s" % (a, _message(b["error"])))
    if b.get("skipped"):
        left.append("%s: skipped: %s" % (a, b["skipped"]))
    return done_, left


def done_lines(results: Any) -> List[str]:
    """What one step of the recover playbook did: the message of every outcome of the
    engine's result (``recovery``, ``cleanup`` or ``validation`` of the first result that
    ran), and of every validation finding (with ``-> checksum re-blessed`` when
    repaired, ``would be re-blessed`` in a dry run)."""
    doc: Optional[Doc] = None
    for result in _list(results):
        result = _dict(result)
        if result.get("skipped"):
            continue
        for key in ("recovery", "cleanup", "validation"):
            if isinstance(result.get(key), dict):
                doc = result[key]
                break
        if doc is not None:
            break
    if doc is None:
        return []
    out = [str(o.get("message")) for o in _list(doc.get("outcomes"))]
    dry = bool(doc.get("dry_run"))
    out += ["%s%s" % (f.get("message"), " -> checksum %s" % done(dry, "re-bless")
                      if f.get("repaired") else "")
            for f in _list(doc.get("findings"))]
    return out


class FilterModule(object):
    """pylabhub.recovery's report filters."""

    def filters(self):
        return {"health_report": health_report, "recovery_report": recovery_report,
                "force_for_host": force_for_host, "heal_verdict": heal_verdict,
                "done_lines": done_lines}
