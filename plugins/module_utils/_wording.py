# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where the words for what the tool does are chosen.

Tense: a real run reports what it did, in the past tense ("released the write lock"); a
dry run (``--dry-run``, Ansible check mode) what the real run would do, in the
conditional ("would release the write lock"). Every message the engine composes about a
change, and every face that adds its own words (the CLI's lines, the API's summaries, the
modules' ``msg``), takes its verb from :func:`did` / :func:`did_all` / :func:`done`, so
the two runs can never be phrased differently by accident. Words that are no change of
the block (a refusal, a finding) are tense-neutral and the same in both runs.

Changes: :func:`change_lines` shows a result's ``changes`` in the block's own terms -
state names instead of codes, ``Yes``/``No`` for flags, a pid with the verdict on it, a
consumer's ``reading`` evidence as the slot it names - and folds every word changed more
than once into one line from its first ``before`` to its last ``after``. So the tool's
own claim (our pid stored in a slot's ``write_lock`` or a consumer entry's pid while a
multi-word step runs, then released) never shows, and a dry run lists exactly the lines
of the real run (its pid and its clock differ; the timestamp pylabhub's recovery
bookkeeping stamps reads ``now``). The JSON ``changes`` keep every store with its exact
values.

Standard library only (runs on managed hosts).
"""

from __future__ import annotations


from . import _layout as L

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, Iterable, List, Optional, Sequence, Tuple

#: Past tense of every verb the tool uses for a change of the block.
PAST = {
    "release": "released", "clear": "cleared", "scrub": "scrubbed", "re-bless": "re-blessed",
    "reconcile": "reconciled", "give back": "gave back", "set": "set", "repair": "repaired",
    "roll back": "rolled back", "change": "changed", "heal": "healed",
    "restore": "restored",
}
#: Participles used after "was"/"would be" (:func:`done`).
PARTICIPLE = dict(PAST, **{"give back": "given back"})
#: What a dry run must never say and a real run must never say in the conditional: the
#: past-tense forms whose conditional differs (``set`` reads the same in both).
PAST_FORMS = tuple(sorted({w for w in list(PAST.values()) + list(PARTICIPLE.values())
                           if w != "set"}))
CONDITIONAL_FORMS = tuple("would " + v for v in sorted(PAST) if v != "set") + ("would be ",)


def did(dry_run: bool, verb: str, rest: str = "") -> str:
    """``released <rest>`` in a real run, ``would release <rest>`` in a dry run."""
    word = ("would " + verb) if dry_run else PAST[verb]
    return (word + " " + rest) if rest else word


def did_all(dry_run: bool, parts: Sequence[Tuple[str, str]]) -> str:
    """Several changes in one sentence: ``released A, set B and scrubbed C`` or
    ``would release A, set B and scrub C`` (the conditional said once, a verb repeated
    by the next part said once: ``released A and B``)."""
    words, last = [], None
    for verb, rest in parts:              # "released A and B", not "released A and released B"
        said = "" if verb == last else (PAST[verb] if not dry_run else verb)
        words.append(("%s %s" % (said, rest)).strip())
        last = verb
    if not words:
        return ""
    text = words[0] if len(words) == 1 else "%s and %s" % (", ".join(words[:-1]), words[-1])
    return ("would " + text) if dry_run else text


def done(dry_run: bool, verb: str) -> str:
    """A passive participle: ``repaired`` / ``would be repaired``."""
    return ("would be " if dry_run else "") + PARTICIPLE[verb]


def plural(count: int, singular: str, plural_form: Optional[str] = None) -> str:
    """``1 reader``, ``3 readers`` (``plural_form`` when not singular + s)."""
    return "%d %s" % (count, singular if count == 1 else (plural_form or singular + "s"))


def reblessed(dry_run: bool, entry: Dict[str, object]) -> str:
    """One ``reblessed`` entry of a validate result, as said by every face."""
    return did(dry_run, "re-bless", "the checksum of slot %s" % entry["slot"]
               if entry.get("slot") is not None else "the flexible zone's checksum")


def reconciled(dry_run: bool, entry: Dict[str, object]) -> str:
    """One ``reconciled`` entry of a cleanup result (``field``, ``before``, ``after``)."""
    return did(dry_run, "reconcile", "%s: %s → %s" % (
        entry.get("field"), entry.get("before"), entry.get("after")))


def summary(result: Dict[str, object]) -> str:
    """What a mutating result did (or, in a dry run, would do), in one line without the
    block's name: the messages of what the engine ``released`` (its published SUCCESS
    outcomes: heal's cleanup, slot and index steps merged), the checksums re-blessed and
    the counts reconciled, or that nothing needed doing. Refusals and failures are not
    here (each face reports those apart). Unescaped: the face escapes what it prints."""
    dry = bool(result.get("dry_run"))
    cleanup = result.get("cleanup") if isinstance(result.get("cleanup"), dict) else {}
    checked = result.get("validate") if isinstance(result.get("validate"), dict) else result
    parts = [str(o.get("message")) for o in result.get("released") or []  # type: ignore
             if isinstance(o, dict)]
    parts += [reblessed(dry, rb) for rb in checked.get("reblessed") or []]  # type: ignore
    parts += [reconciled(dry, rec) for rec in                               # type: ignore
              list(cleanup.get("reconciled") or []) + list(result.get("reconciled") or [])
              if "before" in rec]
    if not parts:
        parts = ["nothing to do" if not result.get("changed") else
                 did(dry, "change", "the block")]
    return "; ".join(parts)


# --------------------------------------------------------------------------- changes
_PIDS = ("write_lock", "consumer_pid", "evidence_pid")
_SLOT_REFS = ("reading", "evidence_reading")
_FLAGS = ("writer_waiting",)
_TEXT = ("consumer_name", "consumer_uid")
_NOW = ("last_error_timestamp_ns",)


def net_changes(changes: Iterable[Dict[str, object]]) -> List[Dict[str, object]]:
    """One entry per word: its first ``before`` and last ``after``, in the order the
    words were first changed; a word that ends as it began (a claim taken and given back
    around a step) is left out."""
    order: List[str] = []
    net: Dict[str, Dict[str, object]] = {}
    for ch in changes:
        target = str(ch.get("target"))
        if target in net:
            net[target]["after"] = ch.get("after")
        else:
            order.append(target)
            net[target] = {"target": target, "before": ch.get("before"),
                           "after": ch.get("after")}
    return [net[t] for t in order if net[t]["before"] != net[t]["after"]]


def verdicts(result: object) -> Dict[int, str]:
    """pid -> verdict state of every holder judged in an engine result (the ``holder``
    of slot outcomes, the ``verdict`` of consumer outcomes, nested results included)."""
    found: Dict[int, str] = {}
    pending = [result]
    while pending:
        obj = pending.pop()
        if isinstance(obj, dict):
            pid, state = obj.get("pid"), obj.get("state")
            if isinstance(pid, int) and isinstance(state, str) and "evidence" in obj:
                found.setdefault(pid, state)
            pending.extend(v for k, v in obj.items() if k != "changes")
        elif isinstance(obj, list):
            pending.extend(obj)
    return found


def _short(value: object) -> str:
    text = str(value)
    return text[:16] + "…" if len(text) > 16 else text


def show(field: str, value: object, who: Dict[int, str], zeros: Optional[str] = None,
         after: bool = False) -> str:
    """One value of ``field`` in the block's own terms."""
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if field == "slot_state" and isinstance(value, int):
        return L.enum_name(L.SlotState, value)
    if field in _FLAGS and isinstance(value, int):
        return "Yes" if value else "No"
    if field in _PIDS and isinstance(value, int) and value:
        return "%d (%s)" % (value, who[value]) if value in who else str(value)
    if field in _SLOT_REFS and isinstance(value, int):
        return "slot %d" % (value - 1) if value else "none"
    if field in _TEXT:
        return '"%s"' % value
    if field in _NOW and after:
        return "now"
    if field == "data" and after and value == zeros:
        return "zeros"
    return _short(value)


def change_lines(result: Dict[str, object]) -> List[Tuple[str, str, str]]:
    """``(target, before, after)`` of every word a result changed (or would change), in
    the block's own terms, each word once (see the module doc)."""
    who = verdicts(result)
    block = result.get("block") if isinstance(result.get("block"), dict) else {}
    stride = block.get("stride") if isinstance(block, dict) else None
    zeros = L.blake2b256(bytes(stride)).hex() if isinstance(stride, int) and stride > 0 else None
    out = []
    new = result.get("operation") != "undo"       # undo writes old values back, not "now"
    for ch in net_changes(result.get("changes") or []):  # type: ignore[arg-type]
        target = str(ch["target"])
        field = target.rpartition(".")[2]
        out.append((target, show(field, ch["before"], who, zeros),
                    show(field, ch["after"], who, zeros, after=new)))
    return out
