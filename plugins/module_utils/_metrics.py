# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Metrics in Prometheus' text format, for node_exporter's textfile collector.

What a fleet wants paged on, per host: how many blocks and in what health, stuck and
suspect slots, dead consumers still registered, integrity errors nobody repaired, when
blocks were last checked and last healed, and how many actions were taken and refused.

Where each number comes from (decision): the state of the blocks from one read-only
``validate`` of every block (the one rule: the same health, stuck and suspect slots as
diagnose; plus the checksums hashed, which diagnose does not), bounded by ``max_bytes``;
the history (last heal, actions) from the audit log, the one record of what was done, so
there is no second state file to keep in step. A rotated audit log restarts the
counters, which Prometheus' ``rate()`` treats as a counter reset.

The file is written as node_exporter expects: a temporary file in the same directory
(not ending in ``.prom``, so never read half-written), fsynced, then renamed over
``pylabhub_recovery.prom``. Names and labels: docs/audit-and-undo.md.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Tuple

from ._errors import RecoveryError, UsageError, printable

PREFIX = "pylabhub_recovery_"
FILENAME = "pylabhub_recovery.prom"
HEALTH = ("healthy", "degraded", "suspect", "stuck", "corrupt", "unknown")

#: name -> (type, help); the order of the file.
METRICS = (
    ("blocks", "gauge", "DataBlocks on this host by health (unknown: not checked, see "
                        "block_up)"),
    ("block_up", "gauge", "1 when the block could be checked, 0 when it could not (error, "
                          "header not sound, over max_bytes)"),
    ("block_health", "gauge", "1 for the block's current health word (the one rule of "
                              "diagnose, validate and heal)"),
    ("stuck_slots", "gauge", "slots held by a dead holder (stuck)"),
    ("suspect_slots", "gauge", "slots whose holder is suspect-hung or unknown"),
    ("dead_consumers", "gauge", "consumer entries whose process is dead (cleanup clears them)"),
    ("integrity_errors", "gauge", "error findings of validation nobody repaired "
                                  "(checksums, states, indexes)"),
    ("last_diagnose_timestamp_seconds", "gauge", "when the blocks were last checked (this "
                                                 "export)"),
    ("last_heal_timestamp_seconds", "gauge", "when heal last ran for real on the block "
                                             "(audit log)"),
    ("actions_total", "counter", "real runs by operation and outcome: taken (changed "
                                 "bytes), refused (holders refused), failed (an error or a "
                                 "concurrent change)"),
)


def _label(value: object) -> str:
    """A label value: untrusted text made printable, then escaped per the format."""
    text = printable(value)
    return text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def history(audit_log: str) -> Dict[str, object]:
    """Last real heal per block address and action counts, from the audit log (a missing
    log is an empty history; a line that is not a record is skipped)."""
    last_heal: Dict[str, float] = {}
    actions: Dict[Tuple[str, str], int] = {}
    try:
        stream = open(audit_log, "rb")
    except OSError:
        return {"last_heal": last_heal, "actions": []}
    with stream:
        for raw in stream:
            try:
                rec = json.loads(raw.decode("utf-8"))
                operation = str(rec["operation"])
                address = str(rec["block"]["address"])
            except (ValueError, KeyError, TypeError):
                continue
            outcome = None
            if rec.get("error") or any(v.get("result") == "FAILED"
                                       for v in rec.get("verdicts") or []):
                outcome = "failed"
            elif rec.get("changed"):
                outcome = "taken"
            if outcome:
                actions[(operation, outcome)] = actions.get((operation, outcome), 0) + 1
            refused = rec.get("refused") or 0
            if isinstance(refused, int) and refused > 0:
                actions[(operation, "refused")] = actions.get((operation, "refused"), 0) \
                    + refused
            if operation == "heal" and not rec.get("error"):
                last_heal[address] = max(last_heal.get(address, 0.0), float(rec.get("ts", 0)))
    return {"last_heal": last_heal,
            "actions": [{"operation": op, "outcome": out, "count": n}
                        for (op, out), n in sorted(actions.items())]}


def block_entry(entry: Dict[str, object]) -> Dict[str, object]:
    """One ``each_block("validate")`` entry as the numbers exported for it."""
    result = entry.get("result")
    out: Dict[str, object] = {"address": entry["address"], "up": result is not None,
                              "health": "unknown", "stuck_slots": 0, "suspect_slots": 0,
                              "dead_consumers": 0, "integrity_errors": 0,
                              "problem": None}
    if result is None:
        err = entry.get("error") or {}
        out["problem"] = entry.get("skipped") or err.get("message")  # type: ignore
        return out
    out.update(
        health=result.get("health") or "unknown",                   # type: ignore
        stuck_slots=len(result.get("stuck_slots") or []),           # type: ignore
        suspect_slots=len(result.get("suspect_slots") or []),       # type: ignore
        dead_consumers=sum(1 for f in result.get("holder_findings") or []  # type: ignore
                           if f.get("code") == "dead-consumer"),
        integrity_errors=sum(1 for f in result.get("findings") or []  # type: ignore
                             if f.get("severity") == "error" and not f.get("repaired")))
    return out


def render(doc: Dict[str, object]) -> str:
    """The textfile: HELP and TYPE for every metric, one sample per line."""
    blocks: List[Dict[str, object]] = doc["blocks"]                 # type: ignore
    samples: Dict[str, List[Tuple[Dict[str, str], float]]] = {m[0]: [] for m in METRICS}
    counts = {word: 0 for word in HEALTH}
    for b in blocks:
        counts[str(b["health"]) if b["health"] in counts else "unknown"] += 1
    samples["blocks"] = [({"health": w}, float(n)) for w, n in counts.items()]
    for b in blocks:
        lab = {"block": str(b["address"])}
        samples["block_up"].append((lab, 1.0 if b["up"] else 0.0))
        if not b["up"]:
            continue
        samples["block_health"].append((dict(lab, health=str(b["health"])), 1.0))
        for key in ("stuck_slots", "suspect_slots", "dead_consumers", "integrity_errors"):
            samples[key].append((lab, float(b[key])))                # type: ignore[arg-type]
    samples["last_diagnose_timestamp_seconds"] = [({}, float(doc["time"]))]  # type: ignore
    for address, ts in sorted(doc["last_heal"].items()):             # type: ignore
        samples["last_heal_timestamp_seconds"].append(({"block": address}, float(ts)))
    for a in doc["actions"]:                                          # type: ignore
        samples["actions_total"].append(({"operation": a["operation"],
                                          "outcome": a["outcome"]}, float(a["count"])))
    return exposition(METRICS, samples)


def exposition(metrics, samples: Dict[str, List[Tuple[Dict[str, str], float]]]) -> str:
    """The text format of ``samples`` ({name: [(labels, value)]}) for ``metrics`` ((name,
    type, help) in file order): HELP and TYPE for each, one sample per line, every label
    value escaped (:func:`_label`). The watch's textfile is written by it too."""
    lines: List[str] = []
    for name, kind, help_ in metrics:
        full = PREFIX + name
        lines.append("# HELP %s %s" % (full, help_))
        lines.append("# TYPE %s %s" % (full, kind))
        for labels, value in samples[name]:
            text = ",".join('%s="%s"' % (k, _label(v)) for k, v in sorted(labels.items()))
            lines.append("%s%s %s" % (full, "{%s}" % text if text else "", _number(value)))
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def write_textfile(directory: str, text: str, filename: str = FILENAME) -> str:
    """Write ``text`` as ``directory/filename`` atomically (temp file + rename, the
    textfile collector's convention); the directory must exist. Returns the path."""
    if not os.path.isdir(directory):
        raise UsageError("the textfile directory %s does not exist (node_exporter's "
                         "--collector.textfile.directory)" % directory)
    if not filename.endswith(".prom") or os.sep in filename:
        raise UsageError("the textfile name must end in .prom and name no directory")
    final = os.path.join(directory, filename)
    temp = os.path.join(directory, ".%s.%d.tmp" % (filename, os.getpid()))
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise RecoveryError("cannot write the metrics textfile %s: %s"
                            % (final, exc.strerror or exc))
    return final


def collect(checked: Dict[str, object], audit_log: str) -> Dict[str, object]:
    """The metrics document from one ``each_block("validate")`` summary and the audit log."""
    past = history(audit_log)
    return {"time": round(time.time(), 3),
            "blocks": [block_entry(e) for e in checked["blocks"]],  # type: ignore
            "last_heal": past["last_heal"], "actions": past["actions"],
            "audit_log": audit_log}
