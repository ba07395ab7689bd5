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
Everything but ``__version__`` loads on first use (the API's types live in ``_api``),
so ``import pylabhub.recovery`` costs next to nothing.

Before-images and undo
----------------------
Every real run that changes a block first writes its before-image (``result["snapshot"]``:
``id`` and ``path``) and appends an audit line (``result["audit"]``); the engine functions
take ``snapshot_dir=``, ``snapshot=False`` (none) and ``audit_log=``.
``undo(snapshot_id, dry_run=False, snapshot_dir=None)`` puts a run's stores back by CAS
on the values it wrote, or raises :class:`UndoRefused` (a field changed since: nothing
changed) or :class:`SnapshotMismatch` (the block was re-created); ``snapshots()`` lists
them. A before-image that cannot be written raises :class:`SnapshotError` and nothing is
changed (docs/audit-and-undo.md)::

    >>> r = recovery.heal("my_datablock")
    >>> recovery.undo(r["snapshot"]["id"])["changed"]
    True

Crash drill
-----------
``run_drill(iterations=20, seed=None)`` proves on this host that recovery works: real
producer and consumer processes SIGKILLed at seeded random protocol points on scratch
blocks of configurations drawn from the 54-cell matrix, each block healed and checked
(``datablock-admin drill`` is the same)::

    >>> d = recovery.run_drill(30, seed=1234)
    >>> d["ok"], d["survived"], d["committed_lost"]
    (True, 30, 0)

Practice
--------
``practice(scenario, name="my_datablock")`` leaves a real crashed block to learn on
(``stuck_writer``, ``stuck_readers``, ``dead_consumers``, ``corruption``, ``all``; an
existing block is refused); ``practice_stop(name)`` kills what it left running and
removes it (``datablock-admin practice`` is the same)::

    >>> p = recovery.practice("stuck_writer")
    >>> p["faults"][0]["next"][0]["action"]
    'release_writer'
"""

from __future__ import annotations

from ._version import __version__

#: The public names. Each but ``__version__`` is ``_api``'s, loaded on first access (PEP
#: 562): the result types and functions below, the engine's operations and the errors.
# pylint: disable=undefined-all-variable
__all__ = [
    "__version__", "SCHEMA",
    # pylabhub-style API
    "RecoveryResult", "SlotDiagnostic", "Change", "Outcome", "RecoveryReport",
    "CleanupReport", "Finding", "IntegrityReport",
    "is_process_alive", "diagnose_slot", "diagnose_all_slots", "release_zombie_writer",
    "release_zombie_readers", "force_reset_slot", "force_reset_all_slots",
    "cleanup_dead_consumers", "validate_integrity", "run_drill",
    # the engine
    "Block", "Plan", "Verdict", "cleanup", "diagnose", "discover", "heal", "judge",
    "list_blocks", "open_block", "recover", "scan", "validate",
    # before-images, undo and metrics (docs/audit-and-undo.md)
    "undo", "snapshots", "metrics", "SnapshotError", "UndoRefused", "SnapshotMismatch",
    # a real crashed block to practise on (datablock-admin practice)
    "practice", "practice_stop",
    # the watch (docs/watch.md)
    "watch", "PolicyError", "WatchRunning",
    # errors and exit codes
    "RecoveryError", "UsageError", "InvalidName", "SlotOutOfRange", "BlockNotFound",
    "UnsafePath", "NotADataBlock", "UnsupportedLayout", "TruncatedBlock", "BlockNotReady",
    "OverBudget", "printable", "PermissionDenied", "WrongOwner", "HolderAlive",
    "ConcurrentChange", "AtomicsUnavailable",
    "EXIT_OK", "EXIT_FINDINGS", "EXIT_USAGE", "EXIT_REFUSED", "EXIT_NO_BLOCK",
    "EXIT_PERMISSION", "EXIT_CONCURRENT", "EXIT_INTERNAL", "EXIT_SNAPSHOT",
]
# pylint: enable=undefined-all-variable


def __getattr__(name: str) -> object:
    if name in __all__:
        from . import _api
        value = getattr(_api, name)
        globals()[name] = value
        return value
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
