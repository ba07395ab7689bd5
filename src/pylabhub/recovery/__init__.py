"""Diagnose and recover pylabhub DataBlock 1.0 shared memory after crashes.

A pylabhub *DataBlock* is a shared-memory ring of slots (``/dev/shm/<name>`` or a memfd).
When a producer or a consumer dies (SIGKILL, crash, OOM) inside the protocol it can leave
a slot locked by a dead writer, a reader count nobody will ever decrement, a consumer
entry of a dead process, or data whose checksum no longer matches. This module finds out
who holds what, whether that holder is provably dead, and releases only what is provably
abandoned (compare-and-swap on the exact value observed; live holders are refused unless
``force=True``).

Every function takes the block's *name*: a POSIX shm name (``"my_datablock"``), an
absolute path (``"/dev/shm/my_datablock"``, a copied segment) or a memfd address
(``"memfd:<pid>:<fd>"`` as ``datablock-admin list`` prints it).

The four scenarios of the emergency procedure
---------------------------------------------

1. **A writer died holding a slot** (slot WRITING, ``write_lock`` = a dead PID)::

       >>> from pylabhub import recovery
       >>> d = recovery.diagnose_slot("my_datablock", 0)
       >>> d.is_stuck, d.writer_state, d.reason
       (True, 'dead', 'write lock held by dead pid 4242 (WRITING)')
       >>> recovery.release_zombie_writer("my_datablock", 0).result
       <RecoveryResult.SUCCESS: 0>

2. **Readers died inside a slot** (``reader_count`` > 0, the readers are gone)::

       >>> r = recovery.release_zombie_readers("my_datablock", 0)
       >>> r.result, r.changes[0]
       (<RecoveryResult.SUCCESS: 0>, Change(target='slot[0].reader_count', before=3, after=0))

   A reader that may still be alive is refused (``RecoveryResult.UNSAFE``);
   ``force=True`` clears it anyway and says so in ``report.warnings``.

3. **Consumers died while registered** (heartbeat entries of dead PIDs)::

       >>> recovery.cleanup_dead_consumers("my_datablock").cleaned
       2

4. **Data corruption** (a committed slot's checksum does not match its data)::

       >>> v = recovery.validate_integrity("my_datablock")
       >>> v.valid, [f.code for f in v.findings]
       (False, ['checksum-mismatch'])
       >>> recovery.validate_integrity("my_datablock", repair=True).reblessed
       [1]

   ``repair=True`` re-blesses the checksum of COMMITTED slots (and of the flexible zone,
   once its producer is dead) only under the Enforced checksum policy, the one whose
   producer stamps every commit: readers will then accept that data as valid, so repair
   only what you have decided to keep. It cannot restore the bytes.

When in doubt use the composite ``heal(name)``: cleanup, release what dead holders own,
validate -- never forced. ``dry_run=True`` on any mutating call predicts exactly what the
real call would change without writing a byte.

Results
-------
The functions named after pylabhub's own C API return typed results:
:class:`RecoveryResult` (an ``IntEnum`` with pylabhub's numbers: SUCCESS 0, FAILED 1,
UNSAFE 2, NOT_STUCK 3, INVALID_SLOT 4), :class:`SlotDiagnostic`, :class:`RecoveryReport`
(which also compares equal to its ``RecoveryResult``, so pylabhub-style
``release_zombie_writer(name, 0) == RecoveryResult.SUCCESS`` works),
:class:`CleanupReport` and :class:`IntegrityReport`. Each keeps the engine's full result
as ``.raw`` (a JSON-ready dict, schema ``pylabhub.recovery/v1``, docs/schema.md).

As in pylabhub, a slot index out of range makes a *recovery* function return
``RecoveryResult.INVALID_SLOT`` instead of raising; ``diagnose_slot`` raises
:class:`SlotOutOfRange`. A missing, foreign, truncated or unsafe block always raises a
:class:`RecoveryError` subclass (``.code``, ``.exit_code``, ``.to_dict()``).

The richer engine
-----------------
``diagnose``, ``recover``, ``cleanup``, ``validate``, ``heal`` (one block, JSON-ready
dicts), ``discover`` (every DataBlock on this host) and ``list_blocks`` (the same, with
each block's ``health`` as ``datablock-admin list`` shows it) are the engine the CLI
``datablock-admin`` and the Ansible collection ``pylabhub.recovery`` also call;
``open_block``/``Block`` (attach a segment), ``Plan``/``Change`` (CAS-on-observed
mutation, dry run), ``judge``/``Verdict`` (liveness with evidence) are exported too.
They load on first use, so ``import pylabhub.recovery`` stays cheap.

Crash drill
-----------
``run_drill(iterations=20, seed=None)`` proves on this host that recovery works: real
producer and consumer processes SIGKILLed at seeded random protocol points on scratch
blocks, each block healed and checked (``datablock-admin drill`` is the same)::

    >>> d = recovery.run_drill(30, seed=1234)
    >>> d["ok"], d["survived"], d["committed_lost"]
    (True, 30, 0)
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Union

from ansible_collections.pylabhub.recovery.plugins.module_utils._errors import (
    EXIT_CONCURRENT, EXIT_FINDINGS, EXIT_INTERNAL, EXIT_NO_BLOCK, EXIT_OK, EXIT_PERMISSION,
    EXIT_REFUSED, EXIT_USAGE, AtomicsUnavailable, BlockNotFound, BlockNotReady,
    ConcurrentChange, HolderAlive, InvalidName, NotADataBlock, OverBudget, PermissionDenied,
    RecoveryError, SlotOutOfRange, TruncatedBlock, UnsafePath, UnsupportedLayout, UsageError,
    WrongOwner, printable)

from ._version import __version__

_CORE = "ansible_collections.pylabhub.recovery.plugins.module_utils."
SCHEMA = "pylabhub.recovery/v1"

# name -> (core module, attribute): loaded on first access (PEP 562)
_LAZY = {
    "diagnose": ("_engine", "diagnose"),
    "recover": ("_engine", "recover"),
    "cleanup": ("_engine", "cleanup"),
    "validate": ("_engine", "validate"),
    "heal": ("_engine", "heal"),
    "discover": ("_discovery", "discover"),
    "scan": ("_discovery", "scan"),
    "list_blocks": ("_engine", "list_blocks"),
    "open_block": ("_block", "open_block"),
    "Block": ("_block", "Block"),
    "Plan": ("_plan", "Plan"),
    "judge": ("_liveness", "judge"),
    "Verdict": ("_liveness", "Verdict"),
}

__all__ = [
    "__version__", "SCHEMA",
    # pylabhub-style API
    "RecoveryResult", "SlotDiagnostic", "Change", "Outcome", "RecoveryReport",
    "CleanupReport", "Finding", "IntegrityReport",
    "is_process_alive", "diagnose_slot", "diagnose_all_slots", "release_zombie_writer",
    "release_zombie_readers", "force_reset_slot", "force_reset_all_slots",
    "cleanup_dead_consumers", "validate_integrity", "run_drill",
    # the engine
    *sorted(_LAZY),
    # errors and exit codes
    "RecoveryError", "UsageError", "InvalidName", "SlotOutOfRange", "BlockNotFound",
    "UnsafePath", "NotADataBlock", "UnsupportedLayout", "TruncatedBlock", "BlockNotReady",
    "OverBudget", "printable", "PermissionDenied", "WrongOwner", "HolderAlive", "ConcurrentChange", "AtomicsUnavailable",
    "EXIT_OK", "EXIT_FINDINGS", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_NO_BLOCK",
    "EXIT_PERMISSION", "EXIT_CONCURRENT", "EXIT_INTERNAL",
]


def _core(module: str):
    return importlib.import_module(_CORE + module)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(_core(module), attr)
        globals()[name] = value
        return value
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


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

    @property
    def ok(self) -> bool:
        """True for SUCCESS and NOT_STUCK (done, or nothing to do)."""
        return self.result in (RecoveryResult.SUCCESS, RecoveryResult.NOT_STUCK)

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

    @property
    def ok(self) -> bool:
        return self.result in (RecoveryResult.SUCCESS, RecoveryResult.NOT_STUCK)

    @classmethod
    def from_engine(cls, raw: Dict[str, Any]) -> "CleanupReport":
        outcomes = [Outcome.from_engine(o) for o in raw.get("outcomes", [])]
        result = RecoveryResult.from_name(raw["result"])
        message = _summary(outcomes) if outcomes else (
            _core("_wording").did(bool(raw.get("dry_run")), "reconcile", ", ".join(
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
    """True unless ``pid`` is positively dead.

    A process of another user (EPERM) exists; an exited-but-unreaped zombie, a PID now
    used by a younger process and a PID recorded on another boot are dead; suspect-hung
    and unknown processes count as alive (recovery never releases them without force).
    Unlike pylabhub's test there is no 5-second heartbeat grace for dead writers.
    """
    return bool(_core("_liveness").is_process_alive(pid))


def diagnose_slot(name: str, index: int, *, max_bytes: Optional[int] = None) -> SlotDiagnostic:
    """Diagnose one slot of block ``name`` (read-only).

    Raises :class:`SlotOutOfRange` for a bad ``index`` and a :class:`RecoveryError`
    subclass for a missing, foreign or unsafe block.
    """
    raw = _core("_engine").diagnose(name, slot=index, max_bytes=max_bytes)
    return SlotDiagnostic.from_engine(raw["slots"][0], raw.get("health"))


def diagnose_all_slots(name: str, *, max_bytes: Optional[int] = None) -> List[SlotDiagnostic]:
    """Diagnose every slot of block ``name`` (read-only), in slot order.

    ``max_bytes`` (every function here takes it): the most one call may examine in the
    block (default 256 MiB; see the CLI's ``--max-bytes``); past it :class:`OverBudget`."""
    raw = _core("_engine").diagnose(name, max_bytes=max_bytes, all_slots=True)
    return [SlotDiagnostic.from_engine(s, raw.get("health")) for s in raw["slots"]]


def _recover(name: str, slot: Union[int, str], action: str, force: bool,
             dry_run: bool, max_bytes: Optional[int]) -> RecoveryReport:
    try:
        raw = _core("_engine").recover(name, slot, action, force=force, dry_run=dry_run,
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
    raw = _core("_engine").cleanup(name, dry_run=dry_run, max_bytes=max_bytes)
    return CleanupReport.from_engine(raw)


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
    raw = _core("_engine").validate(name, repair=repair, dry_run=dry_run, progress=progress,
                                    max_bytes=max_bytes)
    return IntegrityReport.from_engine(raw)


def run_drill(iterations: int = 20, seed: Optional[int] = None) -> Dict[str, Any]:
    """Run the crash drill: ``iterations`` kill-heal-check rounds, each on a fresh scratch
    block (``/dev/shm/plh_drill_<pid>_<i>``, removed afterwards; no other block is touched).

    Each round commits known data, starts real producer and consumer processes (``fork``),
    SIGKILLs them at a protocol point chosen by a random generator seeded with ``seed``
    (a writer holding the lock, mid-write or before commit, a reader inside a slot, a
    registered consumer, a writer draining behind a reader, writer and reader deadlocked,
    or a random moment of a busy block), heals the block and checks that it validates and
    diagnoses healthy, that every slot committed when the kill landed is unchanged, that
    new data can be committed and read back, and that a writer waiting behind a dead
    reader finishes.

    Returns the drill document (schema ``pylabhub.recovery/v1``, ``"operation":
    "drill"``): ``seed`` (random when None; the same seed reruns the same kill points),
    ``iterations``, ``kills``, ``survived``, ``committed_checked``, ``committed_lost``,
    ``seconds``, ``ok``, ``points`` (iterations per kill point) and ``failures`` (each
    failed iteration with its ``point`` and ``problems``). Raises :class:`UsageError` when
    ``iterations`` is less than 1.
    """
    if iterations < 1:
        raise UsageError("iterations must be at least 1, not %r" % (iterations,))
    return _core("_drill").drill(iterations, seed)
