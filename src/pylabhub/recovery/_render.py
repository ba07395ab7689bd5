"""Human output of datablock-admin: tables, colour, progress bar.

Translation only: every word shown comes from an engine result (docs/schema.md); nothing
here judges a block. Colour is used only when the caller says so (stdout is a terminal,
NO_COLOR unset, no --no-color).

Results carry untrusted text (file names, names and uids read from a block, messages
built from them): every ``render_*`` function first makes each string of its input
printable with the core's one escaping rule (``engine.printable``), so no field can
reach the terminal raw, whatever a renderer forgets. Only the colours added here are
escape sequences.
"""

from __future__ import annotations

import sys
import time

from ansible_collections.pylabhub.recovery.plugins.module_utils._engine import (
    FAILED, INVALID_SLOT, NOT_STUCK, SUCCESS, UNSAFE, change_lines, did, done, plural,
    printable, printable_tree, reblessed as reblessed_text, reconciled as reconciled_text)

from .cli import PROG, shell_quote

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO


class Style:
    """ANSI styling, or none; and how much to show (``verbose``: every store of the change
    list as recorded, and the evidence behind each verdict)."""

    _CODES = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2",
              "cyan": "36"}

    def __init__(self, color: bool, verbose: bool = False) -> None:
        self.color = color
        self.verbose = verbose

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
    r"""Length of ``text`` as shown: without the colour codes (``ESC [ digits;... m``, as
    ``Style`` writes them; what ``re.sub(r"\x1b\[[0-9;]*m", "", text)`` leaves)."""
    if "\x1b" not in text:
        return len(text)
    parts = text.split("\x1b[")
    shown = len(parts[0])
    for part in parts[1:]:
        rest = part.lstrip("0123456789;")
        shown += len(rest) - 1 if rest.startswith("m") else 2 + len(part)
    return shown


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


def quote(address: str) -> str:
    return shell_quote(address)


def untrusted(render: Callable[..., List[str]]) -> Callable[..., List[str]]:
    """Render a copy of the result whose every string is printable (see module doc)."""
    def wrapper(result: Any, *args: Any, **kwargs: Any) -> List[str]:
        return render(printable_tree(result), *args, **kwargs)
    # what functools.wraps copies (functools and what it imports: a millisecond at start)
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(wrapper, name, getattr(render, name))
    wrapper.__wrapped__ = render  # type: ignore[attr-defined]
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
        hidden = sorted((set(d.get("stuck_slots") or []) | set(d.get("suspect_slots") or []))
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
    """The change list in the block's own terms, each word once (``_wording``): a dry run
    shows the very lines of the real run. ``--verbose``: every store as recorded (the
    tool's own claims on a slot included), exact values as in the JSON."""
    changes = result.get("changes") or []
    dry = result.get("dry_run")
    if not changes:
        return ["  changes: none"]
    head = ("  changes (DRY RUN: would change, nothing written):" if dry else "  changes:")
    lines = [style(head, "yellow") if dry else head]
    lines += ["    %s: %s → %s" % line for line in change_lines(result)]
    if style.verbose:
        lines.append("  every store, in order (the tool's own claims included):")
        lines += ["    %s: %s -> %s" % (c["target"], c["before"], c["after"]) for c in changes]
    return lines


def outcome_lines(outcomes: List[Dict[str, Any]], style: Style,
                  title: str = "outcome") -> List[str]:
    """The outcome of each slot or consumer entry; a refusal is not repeated here (it is
    printed once, as one line with its command: :func:`refusal_line`). ``--verbose``
    adds the evidence behind each holder's verdict."""
    rows = []
    for o in outcomes:
        if o.get("result") == UNSAFE:
            continue
        where = ("slot %s" % o["slot"]) if "slot" in o else (
            "consumer %s" % o.get("consumer", "?"))
        rows.append([where, style.result(str(o["result"])), o.get("message", "")])
    if not rows:
        return []
    lines = ["  %s:" % title] + table(["TARGET", "RESULT", "MESSAGE"], rows, style, "    ")
    if style.verbose:
        lines += ["  " + line if line else line for line in evidence_lines(
            [o.get("holder") or o.get("verdict") for o in outcomes
             if o.get("result") != UNSAFE])][:-1]
    return lines


def evidence_lines(verdicts: Sequence[Optional[Dict[str, Any]]]) -> List[str]:
    """``--verbose``: the evidence behind each verdict shown (each pid once)."""
    lines, seen = [], set()
    for v in verdicts:
        if not v or not v.get("evidence") or v.get("pid") in seen:
            continue
        seen.add(v.get("pid"))
        lines.append("  evidence for pid %s (%s): %s" % (
            v.get("pid"), v.get("state"), "; ".join(v["evidence"])))
    return lines + ([""] if lines else [])


def refusal_line(outcome: Dict[str, Any], address: str) -> str:
    """A refusal in one line: who holds the slot and the verdict (the engine's short
    message), and the exact command that forces it, for a human who is sure."""
    line = str(outcome.get("message", ""))
    if outcome.get("next"):
        line += ". If you are sure: %s" % command(outcome["next"], address)
    return line


def warning_lines(result: Dict[str, Any], style: Style) -> List[str]:
    return [style("  warning: %s" % w, "yellow") for w in result.get("warnings") or []]


def findings_lines(findings: List[Dict[str, Any]], style: Style,
                   title: str = "findings", dry_run: bool = False) -> List[str]:
    if not findings:
        return ["  %s: none" % title]
    rows = []
    for f in findings:
        where = ("slot %s" % f["slot"]) if f.get("slot") is not None else (
            "consumer %s" % f["consumer"] if f.get("consumer") is not None else (
                f.get("field") or "block"))
        note = " (%s)" % done(dry_run, "repair") if f.get("repaired") else (
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
    if rows:
        lines += table(["SLOT", "STATE", "WRITE_LOCK", "READER_COUNT", "WRITER_WAITING",
                        "IS_STUCK", "STUCK FOR", "REASON"], rows, style)
    if d.get("slots_listed") == "not_plain":
        lines += plain_lines(d.get("slot_counts"))
    lines.append("")
    consumers = d.get("consumers") or []
    if consumers:
        crow = [[str(c["index"]), str(c["pid"]), c.get("name") or "-", ago(c.get("last_seen_s")),
                 style.verdict((c.get("verdict") or {}).get("state"))] for c in consumers]
        lines += table(["CONSUMER", "PID", "NAME", "LAST SEEN", "VERDICT"], crow, style)
    else:
        lines.append("  consumers: none registered")
    lines.append("")
    if style.verbose:
        lines += evidence_lines([producer.get("verdict")]
                                + [(s.get("writer") or None) for s in d["slots"]]
                                + [c.get("verdict") for c in consumers])
    lines += findings_lines(d.get("findings") or [], style)
    shown = [s["index"] for s in d["slots"]]
    partial = block.get("capacity") is not None and len(shown) < int(block["capacity"])
    lines += status_lines(d, style, str(block["address"]), shown if partial else None,
                          label="result")
    return lines


def plain_lines(counts: Optional[Dict[str, Any]]) -> List[str]:
    """The slots diagnose counted but did not list (plain: FREE or COMMITTED, no lock, no
    reader, no writer waiting), by state, and how to list them."""
    if not counts or int(counts.get("listed", 0)) >= int(counts.get("total", 0)):
        return []
    unlisted = int(counts["total"]) - int(counts["listed"])
    states = ", ".join("%s %s" % (counts[name], name) for name in
                       ("FREE", "WRITING", "COMMITTED", "DRAINING", "UNKNOWN")
                       if counts.get(name))
    return ["  %s%d slot%s not listed: plain (no lock, no reader, no writer waiting); "
            "all %d: %s; --all-slots lists every slot"
            % ("" if counts["listed"] else "no slot needs a look; ", unlisted,
               "" if unlisted == 1 else "s", int(counts["total"]), states)]


def _footer(result: Dict[str, Any], style: Style, word: str) -> str:
    changed = result.get("changed")
    how = did(bool(result.get("dry_run")), "change") if changed else "no change"
    return "  result: %s (%s)" % (word, how) + "".join("\n" + line
                                                       for line in record_lines(result))


def record_lines(result: Dict[str, Any]) -> List[str]:
    """The before-image a real run wrote, with the command that puts it back."""
    ids = result.get("snapshots") or [(result.get("snapshot") or {}).get("id")]
    return ["  before-image: %s (undo: %s undo %s)" % (i, PROG, i)
            for i in reversed([i for i in ids if i])]      # newest first: undo in that order


@untrusted
def render_undo(r: Dict[str, Any], style: Style) -> List[str]:
    lines = block_title(r["block"], style)
    lines.append("  undo %s (a %s run%s)%s" % (
        r["undo_of"], r["undone_operation"], "" if r.get("complete") else
        ", killed before its end", " --dry-run" if r.get("dry_run") else ""))
    lines += changes_lines(r, style)
    lines.append(_footer(r, style, style.result(str(r["result"]))))
    return lines


@untrusted
def render_snapshots(listing: Dict[str, Any], style: Style) -> List[str]:
    rows = [(s["id"], s["operation"], str(s["block"].get("address")), str(s["stores"]),
             "yes" if s["complete"] else "no (killed)", s.get("undo_of") or "")
            for s in listing["snapshots"]]
    if not rows:
        return ["no before-image in %s" % listing["directory"]]
    return (table(("SNAPSHOT", "OPERATION", "BLOCK", "STORES", "COMPLETE", "UNDO OF"), rows,
                  style) + ["%d before-image(s) in %s" % (len(rows), listing["directory"])])


@untrusted
def render_watch_pass(doc: Dict[str, Any], style: Style) -> List[str]:
    """One pass of the watch: one line, then one line per block it healed, waits on or
    leaves alone (suspect), and per block it could not diagnose."""
    lines = ["pass %d: %d block(s), %d healed, %d waiting, %d suspect slot(s), %d error(s)"
             % (doc["pass"], len(doc["blocks"]), doc["healed"], doc["waiting"],
                doc["suspect"], doc["errors"])]
    for b in doc["blocks"]:
        address = quote(str(b["address"]))
        healed = b.get("healed")
        if healed is not None:
            lines.append("  %s: healed (%s)" % (address, "error: %s" % healed["error"]["message"]
                                                if healed.get("error") else
                                                "%s, %d released, %d refused%s" % (
                                                    style.result(str(healed["result"])),
                                                    healed["released"], healed["refused"],
                                                    "; before-image %s" % ", ".join(
                                                        healed["snapshots"])
                                                    if healed["snapshots"] else "")))
        for item in b["waiting"]:
            what = ("slot %d" % item["slot"] if "slot" in item
                    else "consumer %d" % item["consumer"])
            lines.append("  %s: %s stuck, seen for %s; waiting for the policy's delay"
                         % (address, what, duration(item["seen_for_s"])))
        if b["suspect_slots"]:
            lines.append("  %s: suspect slot(s) %s left alone (never forced)"
                         % (address, ", ".join(str(s) for s in b["suspect_slots"])))
        if b.get("error"):
            lines.append("  %s: error: %s" % (address, b["error"].get("message", "")))
        elif b.get("skipped"):
            lines.append("  %s: skipped: %s" % (address, b["skipped"]))
    if doc.get("note"):
        lines.append("  note: %s" % doc["note"])
    return lines


@untrusted
def render_recover(r: Dict[str, Any], style: Style) -> List[str]:
    lines = block_title(r["block"], style)
    lines.append("  recover --slot %s --action %s%s%s" % (
        r["slot"], r["action"], " --force" if r.get("force") else "",
        " --dry-run" if r.get("dry_run") else ""))
    lines += changes_lines(r, style)
    lines += outcome_lines(r.get("outcomes") or [], style)
    lines += warning_lines(r, style)
    lines.append(_footer(r, style, style.result(str(r["result"]))))
    return lines


@untrusted
def render_cleanup(r: Dict[str, Any], style: Style) -> List[str]:
    lines = block_title(r["block"], style)
    lines.append("  cleanup%s: %s" % (" --dry-run" if r.get("dry_run") else "",
                                      _cleared(r, bool(r.get("dry_run")))))
    lines += changes_lines(r, style)
    lines += outcome_lines(r.get("outcomes") or [], style)
    lines += reconciled_lines(r.get("reconciled") or [], bool(r.get("dry_run")))
    lines.append(_footer(r, style, style("ok", "green") if r.get("ok") else
                         style("FAILED", "red")))
    return lines


def _cleared(cleanup: Dict[str, Any], dry: bool) -> str:
    count = int(cleanup.get("cleaned") or 0)
    if not count:
        return "no dead consumer entry"
    return did(dry, "clear", plural(count, "dead consumer entry", "dead consumer entries"))


def reconciled_lines(reconciled: List[Dict[str, Any]], dry: bool) -> List[str]:
    lines = []
    for rec in reconciled:
        if "before" in rec:
            lines.append("  " + reconciled_text(dry, rec))
        else:
            lines.append("  reconcile %s: %s %s" % (rec.get("field"), rec.get("result"),
                                                    rec.get("message", "")))
    return lines


def reblessed_lines(reblessed: List[Dict[str, Any]], dry: bool) -> List[str]:
    return ["  " + reblessed_text(dry, rb) for rb in reblessed]


@untrusted
def render_validate(r: Dict[str, Any], style: Style) -> List[str]:
    lines = block_title(r["block"], style)
    lines.append("  validate%s%s" % (" --repair" if r.get("repair") else "",
                                     " --dry-run" if r.get("dry_run") else ""))
    lines += findings_lines(r.get("findings") or [], style, dry_run=bool(r.get("dry_run")))
    lines += reblessed_lines(r.get("reblessed") or [], bool(r.get("dry_run")))
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
    dry = bool(r.get("dry_run"))
    lines.append("  cleanup: %s" % _cleared(cleanup, dry))
    lines += outcome_lines(cleanup.get("outcomes") or [], style, "cleanup outcome")
    lines += reconciled_lines(cleanup.get("reconciled") or [], dry)
    lines += outcome_lines(r.get("outcomes") or [], style, "slot outcome")
    for ix in r.get("indexes") or []:
        lines.append("  %s: %s %s" % (ix.get("field"), style.result(str(ix.get("result"))),
                                      ix.get("message", "")))
    validate = r.get("validate") or {}
    lines += reblessed_lines(validate.get("reblessed") or [], dry)
    lines += changes_lines(r, style)
    lines += warning_lines(r, style)
    after = r.get("after") or {}
    lines += findings_lines(after.get("findings") or [], style, "left after heal", dry)
    left = after.get("findings") or []
    bad = [f for f in validate.get("findings") or []
           if f.get("severity") == "error" and not f.get("repaired") and f not in left]
    if bad:
        lines += findings_lines(bad, style, "integrity errors", dry)
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
    counts = d.get("configurations") or {}
    dims = [(k, counts[k]) for k in ("policy", "consumer_sync", "flex_size", "checksum_policy")
            if k in counts]
    if dims:
        lines.append("  configurations (%d of the matrix's cells used):"
                     % len(counts.get("cells") or {}))
        lines += table(["DIMENSION", "ITERATIONS PER VALUE"],
                       [[k, ", ".join("%s %s" % kv for kv in v.items())] for k, v in dims],
                       style, "    ")
    if failed:
        lines.append("  failures:")
        for f in d["failures"]:
            lines.append("    iteration %s (%s%s): %s" % (
                f["iteration"], f["point"],
                ", %s" % f["configuration"] if f.get("configuration") else "",
                "; ".join(f.get("problems") or []) or "failed"))
    word = style("ok", "green") if d["ok"] else style("FAILED", "red", "bold")
    lines.append("  result: %s%s" % (word, "" if d["ok"] else
                                     " (%d iteration(s) failed)" % failed))
    if rerun:
        lines.append("  rerun: %s" % rerun)
    return lines


@untrusted
def render_practice(d: Dict[str, Any], style: Style, stop: str) -> List[str]:
    """What a practice left: each fault and the commands that recover it, every process
    and its fate, the ones still running and ``stop``, the command that cleans up."""
    name = quote(d["block"])
    lines = ["practice block %s (%s): %s" % (name, d["path"], d["scenario"]), "  left:"]
    for fault in d["faults"]:
        lines.append("    %s" % fault["what"])
    lines.append("  processes: %s" % ", ".join(
        "%s %s %s" % (p["role"], p["pid"], p["fate"]) for p in d["processes"]))
    live = d.get("live_pids") or []
    lines.append("  still running: %s" % (", ".join("pid %s" % p for p in live) or "none"))
    lines.append("  try:")
    lines.append("    %s diagnose %s" % (PROG, name))
    for step in d.get("next_steps") or []:      # this host's diagnosis, in its order
        lines.append("    " + command(step, d["block"]))
    lines.append("  clean up (kills what is still running, removes the block): %s" % stop)
    return lines


@untrusted
def render_practice_stop(d: Dict[str, Any], style: Style) -> List[str]:
    """What ``practice --stop`` killed and removed."""
    killed = ", ".join(str(p) for p in d["killed"]) or "none"
    removed = "removed %s" % d["path"] if d["removed"] else "no block to remove"
    return ["practice block %s: killed %s; %s" % (quote(d["block"]), killed, removed),
            "  result: %s" % ("ok (changed)" if d["changed"] else "ok (nothing to do)")]


RENDER = {"diagnose": render_diagnose, "recover": render_recover, "cleanup": render_cleanup,
          "validate": render_validate, "heal": render_heal, "undo": render_undo}


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
