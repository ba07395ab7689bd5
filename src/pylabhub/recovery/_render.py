"""Human output of datablock-admin: tables, colour, progress bar.

Translation only: every word shown comes from an engine result (docs/schema.md); nothing
here judges a block. Colour is used only when the caller says so (stdout is a terminal,
NO_COLOR unset, no --no-color).

Results carry untrusted text (file names, names and uids read from a block, messages
built from them): every ``render_*`` function first makes each string of its input
printable with the core's one escaping rule (``_errors.printable``), so no field can
reach the terminal raw, whatever a renderer forgets. Only the colours added here are
escape sequences.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO

from ansible_collections.pylabhub.recovery.plugins.module_utils._engine import (
    FAILED, INVALID_SLOT, NOT_STUCK, SUCCESS, UNSAFE, printable, printable_tree)

from .cli import PROG

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Style:
    """ANSI styling, or none."""

    _CODES = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2",
              "cyan": "36"}

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, *names: str) -> str:
        if not self.color or not names or not text:
            return text
        codes = ";".join(self._CODES[n] for n in names)
        return "\x1b[%sm%s\x1b[0m" % (codes, text)

    def verdict(self, state: Optional[str]) -> str:
        colour = {"dead": "red", "alive": "green", "suspect-hung": "yellow",
                  "unknown": "yellow"}.get(state or "")
        return self(state or "?", colour) if colour else (state or "?")

    def result(self, result: str) -> str:
        colour = {SUCCESS: "green", NOT_STUCK: "dim", UNSAFE: "yellow",
                  FAILED: "red", INVALID_SLOT: "red"}.get(result)
        return self(result, colour) if colour else result

    def severity(self, severity: str) -> str:
        colour = {"error": "red", "warning": "yellow", "info": "dim"}.get(severity)
        return self(severity, colour) if colour else severity

    def yes_no(self, value: bool, bad_when: bool = True) -> str:
        text = "Yes" if value else "No"
        return self(text, "red" if value == bad_when else "green")


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], style: Style,
          indent: str = "  ") -> List[str]:
    """Left-aligned columns; the last column is not padded (it holds free text)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [visible_len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], visible_len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            pad = "" if i == len(cells) - 1 else " " * (widths[i] - visible_len(cell))
            out.append(cell + pad)
        return (indent + "  ".join(out)).rstrip()

    return [line([style(h, "bold") for h in headers])] + [line(r) for r in rows]


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if s >= 2 * size:
            return "%.1f %s" % (s / size, unit)
    return "%.1f s" % s


def ago(seconds: Optional[float]) -> str:
    return "unknown" if seconds is None else duration(seconds) + " ago"


def value(v: Any) -> str:
    if isinstance(v, str) and len(v) > 16:
        return v[:16] + "…"
    return str(v)


def quote(address: str) -> str:
    return shlex.quote(address)


def untrusted(render: Callable[..., List[str]]) -> Callable[..., List[str]]:
    """Render a copy of the result whose every string is printable (see module doc)."""
    @functools.wraps(render)
    def wrapper(result: Any, *args: Any, **kwargs: Any) -> List[str]:
        return render(printable_tree(result), *args, **kwargs)
    return wrapper


def command(step: Dict[str, Any], address: str) -> str:
    """A next step (the engine's ``{"operation", "slot", "action", "force", "repair"}``)
    as the exact command line that runs it, the block name shell-quoted."""
    words = [PROG, str(step.get("operation")), quote(address)]
    if step.get("slot") is not None:
        words += ["--slot", str(step["slot"])]
    if step.get("action"):
        words += ["--action", str(step["action"])]
    if step.get("force"):
        words.append("--force")
    if step.get("repair"):
        words.append("--repair")
    return " ".join(words)


def health_word(health: Optional[str], style: "Style") -> str:
    """The one-rule word: ``healthy`` in green, else ``NOT HEALTHY (<word>)`` in red
    (stuck, corrupt) or yellow (suspect, degraded)."""
    if health == "healthy":
        return style("healthy", "green")
    colour = "red" if health in ("stuck", "corrupt") else "yellow"
    return style("NOT HEALTHY (%s)" % (health or "?"), colour, "bold")


def status_lines(d: Dict[str, Any], style: "Style", address: str,
                 shown: Optional[Sequence[int]] = None, label: str = "health",
                 said: Sequence[Dict[str, Any]] = ()) -> List[str]:
    """The one-rule verdict (``health``), the slots that make it, and the next steps as
    commands. ``shown``: the slots the caller displayed (diagnose --slot): stuck or
    suspect slots outside it are named as such, never hidden. ``said``: steps already
    printed (heal's refusals), not repeated."""
    lines: List[str] = []
    steps = [st for st in d.get("next_steps") or [] if st not in said]
    if steps:
        lines.append("  next:")
        lines += ["    " + command(st, address) for st in steps]
    extra = []
    if d.get("stuck_slots"):
        extra.append("stuck slot(s): %s" % ", ".join(map(str, d["stuck_slots"])))
    if d.get("suspect_slots"):
        extra.append("suspect slot(s): %s" % ", ".join(map(str, d["suspect_slots"])))
    if shown is not None:
        hidden = sorted(set(d.get("stuck_slots") or []) | set(d.get("suspect_slots") or [])
                        - set(shown))
        if hidden:
            extra.append("not shown here: slot(s) %s (diagnose %s shows every slot)"
                         % (", ".join(map(str, hidden)), quote(address)))
    word = health_word(d.get("health"), style)
    return lines + ["  %s: %s%s" % (label, word, (" -- " + "; ".join(extra)) if extra else "")]


# --------------------------------------------------------------------------- pieces
def block_title(block: Dict[str, Any], style: Style) -> List[str]:
    title = "%s  (%s, %s, %s bytes)" % (style(str(block["address"]), "bold"), block["path"],
                                        block["kind"], block["size"])
    lines = [title]
    if block.get("capacity") is not None:
        lines.append("  %s slots x %s B%s, %s, %s, checksums %s, write_index %s, commit_index %s%s"
                     % (block["capacity"], block["stride"],
                        (", flex %s B" % block["flex_size"]) if block.get("flex_size") else "",
                        block.get("policy"), block.get("consumer_sync"),
                        block.get("checksum_policy"), block.get("write_index"),
                        "-" if block.get("commit_index") is None else block["commit_index"],
                        "" if block.get("has_evidence") else ", no recovery evidence (C++)"))
    return lines


def changes_lines(result: Dict[str, Any], style: Style) -> List[str]:
    changes = result.get("changes") or []
    dry = result.get("dry_run")
    if not changes:
        return ["  changes: none"]
    head = ("  changes (DRY RUN: would change, nothing written):" if dry else "  changes:")
    lines = [style(head, "yellow") if dry else head]
    for c in changes:
        lines.append("    %s: %s -> %s" % (c["target"], value(c["before"]), value(c["after"])))
    return lines


def outcome_lines(outcomes: List[Dict[str, Any]], style: Style,
                  title: str = "outcome") -> List[str]:
    if not outcomes:
        return []
    rows = []
    for o in outcomes:
        where = ("slot %s" % o["slot"]) if "slot" in o else (
            "consumer %s" % o.get("consumer", "?"))
        rows.append([where, style.result(str(o["result"])), o.get("message", "")])
    return ["  %s:" % title] + table(["TARGET", "RESULT", "MESSAGE"], rows, style, "    ")


def refused_lines(result: Dict[str, Any], style: Style) -> List[str]:
    """For each refusal, the forced command that would do it anyway (a human decides)."""
    address = str((result.get("block") or {}).get("address", ""))
    steps = [o["next"] for o in result.get("refused") or [] if o.get("next")]
    if not steps:
        return []
    return ([style("  refused; only if you are sure the holders are gone:", "yellow")]
            + ["    " + command(st, address) for st in steps])


def warning_lines(result: Dict[str, Any], style: Style) -> List[str]:
    return [style("  warning: %s" % w, "yellow") for w in result.get("warnings") or []]


def findings_lines(findings: List[Dict[str, Any]], style: Style,
                   title: str = "findings") -> List[str]:
    if not findings:
        return ["  %s: none" % title]
    rows = []
    for f in findings:
        where = ("slot %s" % f["slot"]) if f.get("slot") is not None else (
            "consumer %s" % f["consumer"] if f.get("consumer") is not None else (
                f.get("field") or "block"))
        note = " (repaired)" if f.get("repaired") else (
            " (repairable with --repair)" if f.get("repairable") else "")
        rows.append([style.severity(f["severity"]), f["code"], where, f["message"] + note])
    return ["  %s:" % title] + table(["SEVERITY", "CODE", "WHERE", "MESSAGE"], rows, style,
                                     "    ")


# --------------------------------------------------------------------------- commands
@untrusted
def render_list(entries: List[Dict[str, Any]], style: Style) -> List[str]:
    if not entries:
        return ["no DataBlock found"]
    rows = []
    for e in entries:
        verdict = e.get("producer_verdict")
        producer = "-" if not e.get("producer_pid") else "%s %s" % (
            e["producer_pid"], style.verdict(verdict["state"] if verdict else None))
        status = e.get("status") or "?"
        if status != "ok":                 # the header is not sound: its problem
            shown = style(status, "red")
        elif e.get("health") is None:      # could not be judged (health_error)
            shown = style("?", "yellow")
        else:
            slots = sorted(set(e.get("stuck_slots") or []) | set(e.get("suspect_slots") or []))
            word = str(e["health"])
            shown = style(word + (" (slot %s)" % ",".join(map(str, slots)) if slots else ""),
                          "green" if word == "healthy" else
                          "red" if word in ("stuck", "corrupt") else "yellow")
        rows.append([e["address"], e["kind"], str(e["size"]),
                     "-" if e.get("capacity") is None else str(e["capacity"]),
                     "-" if e.get("stride") is None else str(e["stride"]),
                     str(e.get("policy") or "-"), producer, shown])
    return table(["ADDRESS", "KIND", "SIZE", "SLOTS", "STRIDE", "POLICY", "PRODUCER", "STATUS"],
                 rows, style, "")


@untrusted
def unreadable_lines(unreadable: Dict[str, Any]) -> List[str]:
    """The listing's last line: what could not be read, how many and why (or nothing)."""
    count = int(unreadable.get("count") or 0)
    if not count:
        return []
    reasons = ", ".join("%d %s" % (n, printable(reason)) for reason, n in
                        sorted((unreadable.get("by_reason") or {}).items()))
    entries = unreadable.get("entries") or []
    files = sum(1 for e in entries if not str(e.get("path", "")).startswith("/proc/"))
    return ["%d entr%s could not be read (%s): %d in /dev/shm, %d process fd table%s; "
            "blocks there are not listed (run as root or as their owner to see them)"
            % (count, "y" if count == 1 else "ies", reasons, files, count - files,
               "" if count - files == 1 else "s")]


@untrusted
def render_diagnose(d: Dict[str, Any], style: Style) -> List[str]:
    block = d["block"]
    lines = block_title(block, style)
    producer = d.get("producer") or {}
    if producer.get("pid"):
        verdict = producer.get("verdict") or {}
        lines.append("  producer: pid %s%s %s, last seen %s" % (
            producer["pid"], (" (%s)" % producer["name"]) if producer.get("name") else "",
            style.verdict(verdict.get("state")), ago(producer.get("last_seen_s"))))
    else:
        lines.append("  producer: none")
    lines.append("")
    rows = []
    for s in d["slots"]:
        writer = s.get("writer") or {}
        lock = "-" if not s["write_lock"] else "%s (%s)" % (s["write_lock"],
                                                            style.verdict(writer.get("state")))
        rows.append([str(s["index"]), s["state"], lock, str(s["reader_count"]),
                     "Yes" if s["writer_waiting"] else "No", style.yes_no(bool(s["is_stuck"])),
                     duration(s.get("stuck_for_s")) if s["is_stuck"] else "-",
                     s.get("reason") or "-"])
    lines += table(["SLOT", "STATE", "WRITE_LOCK", "READER_COUNT", "WRITER_WAITING", "IS_STUCK",
                    "STUCK FOR", "REASON"], rows, style)
    lines.append("")
    consumers = d.get("consumers") or []
    if consumers:
        crow = [[str(c["index"]), str(c["pid"]), c.get("name") or "-", ago(c.get("last_seen_s")),
                 style.verdict((c.get("verdict") or {}).get("state"))] for c in consumers]
        lines += table(["CONSUMER", "PID", "NAME", "LAST SEEN", "VERDICT"], crow, style)
    else:
        lines.append("  consumers: none registered")
    lines.append("")
    lines += findings_lines(d.get("findings") or [], style)
    shown = [s["index"] for s in d["slots"]]
    partial = block.get("capacity") is not None and len(shown) < int(block["capacity"])
    lines += status_lines(d, style, str(block["address"]), shown if partial else None,
                          label="result")
    return lines


def _footer(result: Dict[str, Any], style: Style, word: str) -> str:
    changed = result.get("changed")
    how = ("would change" if result.get("dry_run") else "changed") if changed else "no change"
    return "  result: %s (%s)" % (word, how)


@untrusted
def render_recover(r: Dict[str, Any], style: Style) -> List[str]:
    lines = block_title(r["block"], style)
    lines.append("  recover --slot %s --action %s%s%s" % (
        r["slot"], r["action"], " --force" if r.get("force") else "",
        " --dry-run" if r.get("dry_run") else ""))
    lines += changes_lines(r, style)
    lines += outcome_lines(r.get("outcomes") or [], style)
    lines += refused_lines(r, style)
    lines += warning_lines(r, style)
    lines.append(_footer(r, style, style.result(str(r["result"]))))
    return lines


@untrusted
def render_cleanup(r: Dict[str, Any], style: Style) -> List[str]:
    lines = block_title(r["block"], style)
    lines.append("  cleanup%s: %s dead consumer entr%s cleared" % (
        " --dry-run" if r.get("dry_run") else "", r.get("cleaned", 0),
        "y" if r.get("cleaned") == 1 else "ies"))
    lines += changes_lines(r, style)
    lines += outcome_lines(r.get("outcomes") or [], style)
    for rec in r.get("reconciled") or []:
        if "before" in rec:
            lines.append("  reconciled %s: %s -> %s"
                         % (rec.get("field"), rec["before"], rec["after"]))
        else:
            lines.append("  reconcile %s: %s %s" % (rec.get("field"), rec.get("result"),
                                                    rec.get("message", "")))
    lines.append(_footer(r, style, style("ok", "green") if r.get("ok") else
                         style("FAILED", "red")))
    return lines


def _reblessed_what(rb: Dict[str, Any]) -> str:
    return ("slot %s checksum" % rb["slot"] if rb.get("slot") is not None
            else "flexible zone checksum")


@untrusted
def render_validate(r: Dict[str, Any], style: Style) -> List[str]:
    lines = block_title(r["block"], style)
    lines.append("  validate%s%s" % (" --repair" if r.get("repair") else "",
                                     " --dry-run" if r.get("dry_run") else ""))
    lines += findings_lines(r.get("findings") or [], style)
    for rb in r.get("reblessed") or []:
        lines.append("  re-blessed %s: %s… -> %s…" % (
            _reblessed_what(rb), str(rb["before"])[:16], str(rb["after"])[:16]))
    if r.get("changed") or r.get("repair"):
        lines += changes_lines(r, style)
    if r.get("holder_findings"):
        lines += findings_lines(r["holder_findings"], style, "holders")
    if r.get("health"):
        lines += status_lines(r, style, str(r["block"]["address"]))
    word = style("valid", "green") if r["valid"] else style("INVALID", "red", "bold")
    lines.append(_footer(r, style, word))
    return lines


@untrusted
def render_heal(r: Dict[str, Any], style: Style) -> List[str]:
    lines = block_title(r["block"], style)
    lines.append("  heal%s%s" % (" --repair" if r.get("validate", {}).get("repair") else "",
                                 " --dry-run" if r.get("dry_run") else ""))
    cleanup = r.get("cleanup") or {}
    lines.append("  cleanup: %s dead consumer entr%s cleared" % (
        cleanup.get("cleaned", 0), "y" if cleanup.get("cleaned") == 1 else "ies"))
    lines += outcome_lines(cleanup.get("outcomes") or [], style, "cleanup outcome")
    lines += outcome_lines(r.get("outcomes") or [], style, "slot outcome")
    for ix in r.get("indexes") or []:
        lines.append("  %s: %s %s" % (ix.get("field"), style.result(str(ix.get("result"))),
                                      ix.get("message", "")))
    validate = r.get("validate") or {}
    for rb in validate.get("reblessed") or []:
        lines.append("  re-blessed %s" % _reblessed_what(rb))
    lines += changes_lines(r, style)
    lines += warning_lines(r, style)
    after = r.get("after") or {}
    lines += findings_lines(after.get("findings") or [], style, "left after heal")
    left = after.get("findings") or []
    bad = [f for f in validate.get("findings") or []
           if f.get("severity") == "error" and not f.get("repaired") and f not in left]
    if bad:
        lines += findings_lines(bad, style, "integrity errors")
    lines += refused_lines(r, style)
    if after.get("health"):
        lines += status_lines(after, style, str(r["block"]["address"]),
                              said=[o["next"] for o in r.get("refused") or [] if o.get("next")])
    word = style("healthy", "green") if r["healthy"] else style("NOT HEALTHY", "red", "bold")
    lines.append(_footer(r, style, word))
    return lines


@untrusted
def render_drill(d: Dict[str, Any], style: Style, rerun: Optional[str] = None) -> List[str]:
    """The crash drill's summary, its kill points and every failed iteration."""
    failed = len(d.get("failures") or [])
    lines = ["crash drill: seed %s, %s iteration(s) in %s" % (d["seed"], d["iterations"],
                                                              duration(d["seconds"])),
             "  processes killed: %s" % d["kills"],
             "  survived: %s/%s" % (style(str(d["survived"]), "red" if failed else "green"),
                                    d["iterations"]),
             "  committed slots: %s checked, %s lost" % (
                 d["committed_checked"],
                 style(str(d["committed_lost"]), "red" if d["committed_lost"] else "green")),
             "  kill points:"]
    lines += table(["POINT", "ITERATIONS"],
                   [[p, str(n)] for p, n in (d.get("points") or {}).items()], style, "    ")
    if failed:
        lines.append("  failures:")
        for f in d["failures"]:
            lines.append("    iteration %s (%s): %s" % (
                f["iteration"], f["point"], "; ".join(f.get("problems") or []) or "failed"))
    word = style("ok", "green") if d["ok"] else style("FAILED", "red", "bold")
    lines.append("  result: %s%s" % (word, "" if d["ok"] else
                                     " (%d iteration(s) failed)" % failed))
    if rerun:
        lines.append("  rerun: %s" % rerun)
    return lines


RENDER = {"diagnose": render_diagnose, "recover": render_recover, "cleanup": render_cleanup,
          "validate": render_validate, "heal": render_heal}


# --------------------------------------------------------------------------- progress
class ProgressBar:
    """A one-line bar on a terminal stream, for the engine's ``progress(done, total)``.

    Shown only once the work has lasted ``delay`` seconds (short validations stay quiet),
    redrawn at most ten times a second, erased when done. ``done``/``total`` are shown
    shifted right by ``scale`` bits, in ``unit`` (bytes as MiB by default).
    """

    def __init__(self, label: str, stream: TextIO = sys.stderr, delay: float = 0.25,
                 width: int = 30, scale: int = 20, unit: str = "MiB") -> None:
        self.label = label
        self.stream = stream
        self.delay = delay
        self.width = width
        self.scale = scale
        self.unit = unit
        self.t0 = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.t0 < self.delay or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = (done / total) if total else 1.0
        fill = int(self.width * frac)
        self.stream.write("\r%s [%s%s] %3d%% %d/%d %s" % (
            self.label, "#" * fill, "." * (self.width - fill), int(frac * 100),
            done >> self.scale, total >> self.scale, self.unit))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
