# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The record of every real action: the before-image journal and one audit line.

:class:`Recorder` wraps one mutating engine call. It hands the :class:`~_plan.Plan` its
journal (a real run with snapshots on), and when the call ends -- with a result or an
error -- it closes the journal with the verdicts that justified the run and appends one
JSON line to the audit log (``O_APPEND``, 0600) and to syslog (journald picks it up).
The record also goes into the result (``audit``), so an Ansible controller collects the
same lines from every host. Dry runs write nothing and carry no record.

Why a failure of the audit log does not fail the action: the action already happened by
then; the failure is reported in the result (``audit_error``, a warning). The
before-image is different: without it nothing is changed (:mod:`_snapshot`).

JSON keeps exact values (a block name is whatever bytes the block holds, escaped per
JSON only); the text faces print through :func:`_errors.printable`.
"""

from __future__ import annotations

import os
import pwd
import time

from . import _snapshot
from ._contract import AUDIT_FORMAT
from ._errors import RecoveryError, SnapshotError, SnapshotMismatch, UndoRefused

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Dict, List, Optional

ROOT_LOG = "/var/log/pylabhub-recovery/audit.jsonl"
ENV_LOG = "PYLABHUB_RECOVERY_AUDIT_LOG"
ENV_SYSLOG = "PYLABHUB_RECOVERY_SYSLOG"          # "off": no syslog copy
SYSLOG_IDENT = "pylabhub-recovery"
SYSLOG_MAX = 7900        # rsyslog's default limit is 8 KiB: longer records are summarised
FORMAT = AUDIT_FORMAT
#: Errors recorded even when no store was made: a before-image that could not be written,
#: an undo refused because the block moved on or was re-created.
_RECORDED = (SnapshotError, UndoRefused, SnapshotMismatch)


def log_path(explicit: Optional[str] = None) -> str:
    """The audit log: ``explicit``, else $PYLABHUB_RECOVERY_AUDIT_LOG, else
    :data:`ROOT_LOG` for root and ``$XDG_STATE_HOME/pylabhub-recovery/audit.jsonl``."""
    chosen = explicit or os.environ.get(ENV_LOG)
    if chosen:
        return os.path.abspath(chosen)
    return ROOT_LOG if os.geteuid() == 0 else os.path.join(_snapshot.state_home(),
                                                           "audit.jsonl")


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def verdicts(result: Dict[str, object]) -> List[Dict[str, object]]:
    """Every outcome of a result (slots, consumers, index repairs) with the verdict on
    its holder and the evidence: what justified each action or refusal."""
    found = list(result.get("outcomes") or [])                      # type: ignore
    found += list((result.get("cleanup") or {}).get("outcomes") or [])  # type: ignore
    found += list(result.get("indexes") or [])                      # type: ignore
    keys = ("slot", "consumer", "pid", "result", "message", "holder", "verdict", "evidence")
    out = [{k: o[k] for k in keys if k in o} for o in found]
    # a repair's justification: the findings it re-blessed (checksum mismatches)
    checked = result.get("validate") if result.get("operation") == "heal" else result
    for f in (checked or {}).get("findings") or []:                 # type: ignore
        if f.get("repaired"):
            found = {k: v for k, v in f.items() if k != "repaired"}
            out.append(dict(found, result="REPAIRED"))
    return out


def acted(record: Dict[str, object]) -> bool:
    """Whether a run is an action to record: it changed bytes, refused a holder, or met
    a concurrent change. A run with nothing to do writes no line (decision: a second run
    changes nothing on the host, its audit log included)."""
    return bool(record["changed"] or record["refused"] or record["error"]
                or any(v.get("result") == "FAILED"
                       for v in record["verdicts"]))           # type: ignore[union-attr]


def append(record: Dict[str, object], path: str) -> None:
    """One line, appended with one write (O_APPEND: lines of concurrent runs never
    interleave), file 0600, directory 0700 when we create it."""
    dfd = _snapshot.secure_dir(os.path.dirname(path), error=RecoveryError)
    try:
        fd = os.open(os.path.basename(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    except OSError as exc:
        raise RecoveryError("cannot open the audit log %s: %s" % (path, exc.strerror))
    finally:
        os.close(dfd)
    try:
        import json     # only when recording: read-only commands never load it
        os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode("ascii"))
    except OSError as exc:
        raise RecoveryError("cannot write the audit log %s: %s" % (path, exc.strerror))
    finally:
        os.close(fd)


def to_syslog(record: Dict[str, object]) -> None:
    """The same record to syslog (LOG_USER; warning when forced or refused, else
    notice); a record too long for a syslog line goes without changes and verdicts."""
    if os.environ.get(ENV_SYSLOG, "").strip().lower() in ("0", "off", "no", "false"):
        return
    import syslog
    import json
    text = json.dumps(record, sort_keys=True)
    if len(text) > SYSLOG_MAX:
        short = {k: v for k, v in record.items() if k not in ("changes", "verdicts")}
        short.update(truncated=True, changes=len(record.get("changes") or []),  # type: ignore
                     verdicts=len(record.get("verdicts") or []))            # type: ignore
        text = json.dumps(short, sort_keys=True)[:SYSLOG_MAX]
    level = syslog.LOG_WARNING if record.get("forced") or record.get("refused") else \
        syslog.LOG_NOTICE
    syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_USER)
    syslog.syslog(level, "audit " + text)
    syslog.closelog()


class Recorder:
    """One mutating engine call's journal and audit record.

    ``snapshot`` (None: environment, default on), ``snapshot_dir``, ``audit_log`` (None:
    default path), ``audit`` (False: no audit line, for scratch blocks such as the
    drill's); ``forced``: the caller's force flag, recorded."""

    def __init__(self, operation: str, block, dry_run: bool, forced: bool = False,
                 snapshot: Optional[bool] = None, snapshot_dir: Optional[str] = None,
                 audit_log: Optional[str] = None, audit: Optional[bool] = None,
                 context: Optional[Dict[str, object]] = None) -> None:
        self.operation = operation
        self.block = block
        self.dry_run = dry_run
        self.forced = forced
        self.audit = audit is not False
        self.audit_log = audit_log
        self.context = dict(context or {})
        self.journal = None
        if not dry_run:
            self.journal = (_snapshot.Journal(operation, block,
                                              _snapshot.directory(snapshot_dir), self.context)
                            if _snapshot.enabled(snapshot) else _snapshot.NoJournal())

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None or self.dry_run:
            if self.journal is not None:
                self.journal.close()
            return
        if not self.journal.stores and not isinstance(exc, _RECORDED):
            # refused before any store (a bad block, over budget, ...): no action was
            # taken, and a bad input changes nothing on the host, the audit log included
            self.journal.close()
            return
        error = exc.to_dict() if isinstance(exc, RecoveryError) else {
            "code": "internal", "message": "%s: %s" % (type(exc).__name__, exc)}
        if self.journal is not None:
            try:
                self.journal.finish({"error": error})
            except RecoveryError:
                self.journal.close()
        self._write(self._record({}, error))

    def snapshot_id(self) -> Optional[str]:
        return self.journal.id if self.journal is not None else None

    def _record(self, result: Dict[str, object], error=None) -> Dict[str, object]:
        b = self.block
        return {
            "format": FORMAT,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ts": round(time.time(), 6),
            "host": os.uname().nodename, "user": _user(), "uid": os.geteuid(),
            "pid": os.getpid(),
            "block": {"address": b.address, "name": b.name, "path": b.path,
                      "device": b.inode[0], "inode": b.inode[1]},
            "operation": self.operation,
            "forced": self.forced,
            "changed": bool(result.get("changed")),
            "ok": bool(result.get("ok")) if error is None else False,
            "result": result.get("result", result.get("health")),
            "changes": list(result.get("changes") or []),
            "verdicts": verdicts(result),
            "refused": len(result.get("refused") or []),                # type: ignore
            "snapshot": self.snapshot_id(),
            "error": error,
            **self.context,
        }

    def _write(self, record: Dict[str, object]) -> Optional[str]:
        if not self.audit:
            return None
        problem = None
        try:
            append(record, log_path(self.audit_log))
        except RecoveryError as exc:
            problem = exc.message
        try:
            to_syslog(record)
        except OSError as exc:               # no syslog daemon is not an error
            problem = problem or "syslog: %s" % exc
        return problem

    def finish(self, result: Dict[str, object]) -> Dict[str, object]:
        """Close the journal with the verdicts, write the audit line, and add
        ``snapshot`` (id and path, or None) and ``audit`` (the record, or None) to the
        result, which is returned."""
        if self.dry_run:
            result.update(snapshot=None, audit=None)
            return result
        problem = None
        if self.journal is not None:
            try:
                self.journal.finish({"ok": result.get("ok"), "changed": result.get("changed"),
                                     "verdicts": verdicts(result)})
            except RecoveryError as exc:     # every store is journaled; only the end is not
                problem = exc.message
        snap = self.journal
        result["snapshot"] = ({"id": snap.id, "path": snap.path}
                              if snap is not None and snap.written else None)
        record = self._record(result)
        if not acted(record):           # nothing to do: the host stays as it was
            result["audit"] = None
            if problem:
                result["audit_error"] = problem
            return result
        problem = self._write(record) or problem
        result["audit"] = record if self.audit else None
        if problem:
            result["audit_error"] = problem
            result.setdefault("warnings", []).append(          # type: ignore[union-attr]
                "audit: %s" % problem)
        return result
