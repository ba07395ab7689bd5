"""The Python API's types and functions (``pylabhub.recovery`` exports them, loading
this module on first use): pylabhub-style results over the engine's documents, and the
engine's operations and errors, imported from the engine's front door
(``plugins/module_utils/_engine.py``) and nothing below it. See the package's doc.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as engine
# re-exported: pylabhub.recovery's names (its __all__) are this module's
from ansible_collections.pylabhub.recovery.plugins.module_utils._engine import (  # noqa: F401 pylint: disable=unused-import
    DRILL_ITERATIONS, EXIT_CONCURRENT, EXIT_FINDINGS, EXIT_INTERNAL, EXIT_NO_BLOCK, EXIT_OK,
    EXIT_PERMISSION, EXIT_REFUSED, EXIT_SNAPSHOT, EXIT_USAGE, SCHEMA, AtomicsUnavailable,
    Block, BlockNotFound, BlockNotReady, ConcurrentChange, HolderAlive, InvalidName,
    NotADataBlock, OverBudget, PermissionDenied, Plan, PolicyError, RecoveryError,
    SlotOutOfRange, SnapshotError, SnapshotMismatch, TruncatedBlock, UndoRefused, UnsafePath,
    UnsupportedLayout, UsageError, Verdict, WatchRunning, WrongOwner, cleanup, diagnose,
    discover, heal, judge, list_blocks, metrics, open_block, printable, recover, scan,
    snapshots, undo, validate, watch)
# a real crashed block to practise on, and its clean-up (README, "Your first recovery")
from ansible_collections.pylabhub.recovery.plugins.module_utils._engine import (  # noqa: F401 pylint: disable=unused-import
    practice, practice_stop)


# --------------------------------------------------------------------------- result types
class RecoveryResult(enum.IntEnum):
    """Result of a recovery call, numbered as in pylabhub's C API.

    ``NOT_STUCK`` means "nothing needed doing" and is *not* a failure (upstream reports
    it as one: a known defect not copied here).
    """

    SUCCESS = 0
    FAILED = 1
    UNSAFE = 2
    NOT_STUCK = 3
    INVALID_SLOT = 4

    @classmethod
    def from_name(cls, name: str) -> "RecoveryResult":
        """The member named by an engine result string (``"SUCCESS"``, ...)."""
        return cls[str(name)]


@dataclass(frozen=True)
class SlotDiagnostic:
    """What one slot holds and whether it is stuck (``diagnose_slot``).

    ``state``: FREE, WRITING, COMMITTED or DRAINING. ``write_lock``: PID holding the
    write lock (0 = none). ``writer_state``: the liveness verdict on that PID (``alive``,
    ``dead``, ``suspect-hung``, ``unknown``; None when unlocked). ``is_stuck``: a dead
    holder blocks the slot. ``stuck_duration_s``: seconds since it became stuck, when
    known. ``reason``: one line for a human. ``action``: the recovery that applies
    (``release_writer``, ``release_readers``, ``force_reset``) or None. ``suspect``: only
    a forced action could free it (a suspect-hung or unknown writer, or a writer waiting
    for readers that do not move and are not provably gone). ``next_step``: what clears
    it, as data (``{"operation": "recover", "slot": 2, "action": "release_readers",
    "force": True}``), or None. ``block_health``: the whole block's health word by the one
    rule (``healthy``, ``degraded``, ``suspect``, ``stuck``, ``corrupt``): a jam in another
    slot is never hidden by asking about this one.
    """

    slot_index: int
    state: str
    write_lock: int
    writer_state: Optional[str]
    reader_count: int
    writer_waiting: bool
    write_generation: int
    is_stuck: bool
    stuck_duration_s: Optional[float]
    reason: str
    action: Optional[str]
    suspect: bool = False
    next_step: Optional[Dict[str, Any]] = field(default=None, compare=False)
    block_health: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_engine(cls, slot: Dict[str, Any],
                    block_health: Optional[str] = None) -> "SlotDiagnostic":
        writer = slot.get("writer")
        return cls(slot_index=slot["index"], state=slot["state"], write_lock=slot["write_lock"],
                   writer_state=writer["state"] if writer else None,
                   reader_count=slot["reader_count"], writer_waiting=bool(slot["writer_waiting"]),
                   write_generation=slot["write_generation"], is_stuck=bool(slot["is_stuck"]),
                   stuck_duration_s=slot.get("stuck_for_s"), reason=slot.get("reason") or "",
                   action=slot.get("action"), suspect=bool(slot.get("suspect")),
                   next_step=slot.get("next"), block_health=block_health, raw=slot)


@dataclass(frozen=True)
class Change:
    """One word changed (or, in a dry run, that would change): ``target`` such as
    ``"slot[0].write_lock"``; ``before``/``after`` are ints (bytes ranges: hex strings)."""

    target: str
    before: Union[int, str]
    after: Union[int, str]

    @classmethod
    def from_engine(cls, change: Dict[str, Any]) -> "Change":
        return cls(change["target"], change["before"], change["after"])


@dataclass(frozen=True)
class Outcome:
    """What happened to one slot (``slot``) or one consumer entry (``consumer``).
    ``next_step``: for a refusal (UNSAFE), the forced call that would do it anyway, as
    data (``{"operation": "recover", "slot": 1, "action": "release_readers", "force":
    True}``); None otherwise."""

    result: RecoveryResult
    message: str
    slot: Optional[int] = None
    consumer: Optional[int] = None
    pid: Optional[int] = None
    holder_state: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    next_step: Optional[Dict[str, Any]] = None

    @classmethod
    def from_engine(cls, o: Dict[str, Any]) -> "Outcome":
        holder = o.get("holder") or o.get("verdict")
        return cls(RecoveryResult.from_name(o["result"]), o.get("message", ""), o.get("slot"),
                   o.get("consumer"), o.get("pid") or (holder or {}).get("pid"),
                   (holder or {}).get("state"), list(o.get("warnings", [])), o.get("next"))


def _changes(raw: Dict[str, Any]) -> List[Change]:
    return [Change.from_engine(c) for c in raw.get("changes", [])]


def _summary(outcomes: List[Outcome]) -> str:
    done = [o.message for o in outcomes if o.result != RecoveryResult.NOT_STUCK]
    if done:
        return "; ".join(done)
    if len(outcomes) == 1:
        return outcomes[0].message
    return "nothing to do: no slot needed recovery"


class _ComparesAsResult:
    """Reports compare equal to their :class:`RecoveryResult` (and its int), as
    pylabhub's C API returns plain result codes; two reports compare by the engine data."""

    result: RecoveryResult
    raw: Dict[str, Any]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, type(self)):
            return self.raw == other.raw
        if isinstance(other, int) and not isinstance(other, bool):
            return int(self.result) == int(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def ok(self) -> bool:
        """Done, or nothing to do: nothing refused or failed (the engine's ``ok``)."""
        return bool(self.raw.get("ok"))


@dataclass(eq=False)
class RecoveryReport(_ComparesAsResult):
    """Result of ``release_zombie_writer``/``release_zombie_readers``/``force_reset_*``.

    ``result``: the overall :class:`RecoveryResult` (worst of the slots). ``changed``:
    bytes changed (or would, in a dry run). ``changes``: every word, before -> after.
    ``outcomes``: one per slot. ``warnings``: forced actions on possibly-live holders.
    ``raw``: the engine's dict. Compares equal to its ``RecoveryResult`` (and int).
    """

    result: RecoveryResult
    changed: bool
    changes: List[Change]
    message: str
    outcomes: List[Outcome] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    dry_run: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_engine(cls, raw: Dict[str, Any]) -> "RecoveryReport":
        outcomes = [Outcome.from_engine(o) for o in raw.get("outcomes", [])]
        return cls(RecoveryResult.from_name(raw["result"]), bool(raw["changed"]), _changes(raw),
                   _summary(outcomes), outcomes, list(raw.get("warnings", [])),
                   bool(raw.get("dry_run")), raw)

    @classmethod
    def invalid_slot(cls, err: RecoveryError) -> "RecoveryReport":
        return cls(RecoveryResult.INVALID_SLOT, False, [], err.message,
                   raw={"schema": SCHEMA, "error": err.to_dict()})


@dataclass(eq=False)
class CleanupReport(_ComparesAsResult):
    """Result of ``cleanup_dead_consumers``.

    ``cleaned``: consumer entries of dead processes cleared. ``reconciled``: header
    counters set from the surviving entries (``{"field", "before", "after"}``).
    ``outcomes``: per consumer entry, and per slot whose readers the dead consumers held.
    """

    result: RecoveryResult
    cleaned: int
    changed: bool
    changes: List[Change]
    message: str
    outcomes: List[Outcome] = field(default_factory=list)
    reconciled: List[Dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_engine(cls, raw: Dict[str, Any]) -> "CleanupReport":
        outcomes = [Outcome.from_engine(o) for o in raw.get("outcomes", [])]
        result = RecoveryResult.from_name(raw["result"])
        message = _summary(outcomes) if outcomes else (
            engine.did(bool(raw.get("dry_run")), "reconcile", ", ".join(
                str(r["field"]) for r in raw.get("reconciled", [])))
            if raw.get("reconciled") else "nothing to do: no dead consumer")
        return cls(result, int(raw.get("cleaned", 0)), bool(raw["changed"]), _changes(raw),
                   message, outcomes, list(raw.get("reconciled", [])),
                   bool(raw.get("dry_run")), raw)


@dataclass(frozen=True)
class Finding:
    """One problem found by validation (or diagnosis).

    ``severity``: ``error`` (makes the block invalid), ``warning`` or ``info``.
    ``repairable``: ``repair=True`` can fix it; ``repaired``: it was (or would be) fixed.
    """

    code: str
    severity: str
    message: str
    repairable: bool = False
    repaired: bool = False
    slot: Optional[int] = None
    field: Optional[str] = None

    @classmethod
    def from_engine(cls, f: Dict[str, Any]) -> "Finding":
        return cls(f["code"], f["severity"], f["message"], bool(f.get("repairable")),
                   bool(f.get("repaired")), f.get("slot"), f.get("field"))


@dataclass(eq=False)
class IntegrityReport(_ComparesAsResult):
    """Result of ``validate_integrity``: ``valid`` (no error left), the ``findings``,
    ``reblessed``: the slots whose checksum ``repair=True`` recomputed, and
    ``flexzone_reblessed``: whether it recomputed the flexible zone's checksum.
    ``health``: the block's health word by the one rule diagnose and heal use too
    (``healthy``, ``degraded``, ``suspect``, ``stuck``, ``corrupt``): a block can be valid
    and still not healthy (a stuck slot, a dead consumer's entry); ``next_steps``: what
    clears it."""

    valid: bool
    findings: List[Finding]
    reblessed: List[int]
    changed: bool = False
    changes: List[Change] = field(default_factory=list)
    dry_run: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    flexzone_reblessed: bool = False

    @property
    def health(self) -> Optional[str]:
        return self.raw.get("health")

    @property
    def next_steps(self) -> List[Dict[str, Any]]:
        return list(self.raw.get("next_steps") or [])

    @property
    def result(self) -> RecoveryResult:
        """pylabhub's view: SUCCESS when valid, else FAILED."""
        return RecoveryResult.SUCCESS if self.valid else RecoveryResult.FAILED

    @classmethod
    def from_engine(cls, raw: Dict[str, Any]) -> "IntegrityReport":
        return cls(bool(raw["valid"]), [Finding.from_engine(f) for f in raw.get("findings", [])],
                   [int(r["slot"]) for r in raw.get("reblessed", []) if r.get("slot") is not None],
                   bool(raw.get("changed")), _changes(raw), bool(raw.get("dry_run")), raw,
                   any(r.get("slot") is None for r in raw.get("reblessed", [])))


# --------------------------------------------------------------------------- functions
def is_process_alive(pid: int) -> bool:
    """True unless ``pid`` is positively dead (no such process, or a zombie with no
    running thread). A process of another user (EPERM) exists; suspect-hung and unknown
    processes count as alive. This asks about a process, not about a block: whether a
    pid still *holds* a block is decided with the kernel's view of who has the block
    mapped (the verdicts of ``diagnose_slot`` and the recover functions). Unlike
    pylabhub's test there is no 5-second heartbeat grace for dead writers.
    """
    return bool(engine.is_process_alive(pid))


def diagnose_slot(name: str, index: int, *, max_bytes: Optional[int] = None) -> SlotDiagnostic:
    """Diagnose one slot of block ``name`` (read-only).

    Raises :class:`SlotOutOfRange` for a bad ``index`` and a :class:`RecoveryError`
    subclass for a missing, foreign or unsafe block.
    """
    raw = engine.diagnose(name, slot=index, max_bytes=max_bytes)
    return SlotDiagnostic.from_engine(raw["slots"][0], raw.get("health"))


def diagnose_all_slots(name: str, *, max_bytes: Optional[int] = None) -> List[SlotDiagnostic]:
    """Diagnose every slot of block ``name`` (read-only), in slot order.

    ``max_bytes`` (every function here takes it): the most one call may examine in the
    block (default 256 MiB; see the CLI's ``--max-bytes``); past it :class:`OverBudget`."""
    raw = engine.diagnose(name, max_bytes=max_bytes, all_slots=True)
    return [SlotDiagnostic.from_engine(s, raw.get("health")) for s in raw["slots"]]


def _recover(name: str, slot: Union[int, str], action: str, force: bool,
             dry_run: bool, max_bytes: Optional[int]) -> RecoveryReport:
    try:
        raw = engine.recover(name, slot, action, force=force, dry_run=dry_run,
                             max_bytes=max_bytes)
    except SlotOutOfRange as err:
        return RecoveryReport.invalid_slot(err)
    return RecoveryReport.from_engine(raw)


def release_zombie_writer(name: str, index: int, *, dry_run: bool = False,
                          max_bytes: Optional[int] = None) -> RecoveryReport:
    """Release slot ``index``'s write lock if its holder is dead.

    WRITING becomes FREE (half-written data is never made readable), DRAINING returns to
    COMMITTED, ``writer_waiting`` is cleared. NOT_STUCK when no lock is held; UNSAFE when
    the holder is alive, suspect-hung or unknown (there is no force here: use
    :func:`force_reset_slot` with ``force=True``); INVALID_SLOT for a bad index.
    """
    return _recover(name, index, "release_writer", False, dry_run, max_bytes)


def release_zombie_readers(name: str, index: int, force: bool = False, *,
                           dry_run: bool = False,
                           max_bytes: Optional[int] = None) -> RecoveryReport:
    """Release the readers of slot ``index`` that are provably dead.

    Readers of a live (or possibly live) consumer are kept, and the call is UNSAFE when
    none can be released; ``force=True`` clears the whole ``reader_count`` anyway (listed in
    ``warnings``). The slot state is left as it is (a writer waiting in DRAINING proceeds
    by itself once the count is 0). NOT_STUCK when the count is 0.
    """
    return _recover(name, index, "release_readers", force, dry_run, max_bytes)


def force_reset_slot(name: str, index: int, force: bool = False, *,
                     dry_run: bool = False, max_bytes: Optional[int] = None) -> RecoveryReport:
    """Reset slot ``index``: release the write lock as :func:`release_zombie_writer` does
    (WRITING -> FREE, DRAINING -> COMMITTED, writer_waiting 0) and clear ``reader_count``;
    committed data stays readable.

    Without ``force`` this is refused (UNSAFE) when the writer or any reader may be alive.
    """
    return _recover(name, index, "force_reset", force, dry_run, max_bytes)


def force_reset_all_slots(name: str, force: bool = False, *,
                          dry_run: bool = False,
                          max_bytes: Optional[int] = None) -> RecoveryReport:
    """:func:`force_reset_slot` on every slot; ``result`` is the worst slot's result and
    ``outcomes`` has one entry per slot."""
    return _recover(name, "all", "force_reset", force, dry_run, max_bytes)


def cleanup_dead_consumers(name: str, *, dry_run: bool = False,
                           max_bytes: Optional[int] = None) -> CleanupReport:
    """Clear the heartbeat entry of every consumer whose process is dead (pid, heartbeat,
    uid, name, read position), release the readers it provably held, and reconcile
    ``active_consumer_count`` (and ``read_index`` under Sequential_sync) from the survivors.
    """
    return CleanupReport.from_engine(engine.cleanup(name, dry_run=dry_run,
                                                    max_bytes=max_bytes))


def validate_integrity(name: str, repair: bool = False, *, dry_run: bool = False,
                       progress: Optional[Callable[[int, int], None]] = None,
                       max_bytes: Optional[int] = None) -> IntegrityReport:
    """Check header (magic, version, layout hash and checksum, geometry), slot states and
    every slot and flex-zone checksum recomputed from the data (the cached "verified" flag
    is never trusted), judged as pylabhub's readers of the block's checksum policy judge
    them (Enforced: errors; Manual: information; None: not checked).
    ``repair=True`` (Enforced only) recomputes the checksum of COMMITTED slots that
    mismatch, in place, under the slot's write lock, and the flexible zone's once no live
    producer can be writing it; a bad header is never "repaired".
    ``progress(done_bytes, total_bytes)`` is called while hashing.
    """
    raw = engine.validate(name, repair=repair, dry_run=dry_run, progress=progress,
                          max_bytes=max_bytes)
    return IntegrityReport.from_engine(raw)


def run_drill(iterations: int = DRILL_ITERATIONS, seed: Optional[int] = None) -> Dict[str, Any]:
    """Run the crash drill: ``iterations`` kill-heal-check rounds, each on a fresh scratch
    block (``/dev/shm/plh_drill_<pid>_<i>``, removed afterwards; no other block is touched).

    Each round commits known data, starts real producer and consumer processes (``fork``),
    SIGKILLs them at a protocol point chosen by a random generator seeded with ``seed``
    (a writer holding the lock, mid-write or before commit, a reader inside a slot, a
    registered consumer, a writer draining behind a reader, writer and reader deadlocked,
    or a random moment of a busy block), heals the block and checks that it validates and
    diagnoses healthy, that every slot committed when the kill landed is unchanged, that
    new data can be committed and read back, and that a writer waiting behind a dead
    reader finishes. Each round's block configuration (buffer policy, consumer sync,
    flexible zone, checksum policy) is drawn from the 54-cell matrix with the same seed,
    and its own rules are checked; ``configurations`` counts the rounds per value and
    ``schedule`` names each round's point and cell.

    Returns the drill document (schema ``pylabhub.recovery/v1``, ``"operation":
    "drill"``): ``seed`` (random when None; the same seed reruns the same kill points),
    ``iterations``, ``kills``, ``survived``, ``committed_checked``, ``committed_lost``,
    ``seconds``, ``ok``, ``points`` (iterations per kill point) and ``failures`` (each
    failed iteration with its ``point`` and ``problems``). Raises :class:`UsageError` when
    ``iterations`` is less than 1 (or ``seed`` negative): the engine checks them.
    """
    return engine.drill(iterations, seed)
