# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one bridge between the recovery engine and Ansible (the only file here importing
``ansible``).

Every ``datablock_*`` module is argument translation over :class:`DataBlockModule`:

* argument specs are built from the shared option definitions below;
* engine calls run through :meth:`DataBlockModule.call`, which turns a
  ``RecoveryError`` into ``fail_json`` carrying the error's stable ``code``;
* check mode is the engine's ``dry_run`` (the engine predicts exactly and writes nothing);
* diff mode renders the engine's ``changes`` list (one entry per word or byte range
  changed) as before/after text, one section per slot, consumer entry or header.

Nothing is decided here that the engine (and therefore the CLI) would decide differently.
"""

from __future__ import annotations

import traceback
from collections import OrderedDict

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pylabhub.recovery.plugins.module_utils import _zipload

try:
    # Before the engine's ~27 modules: from an AnsiballZ zip each is then compiled once.
    _zipload.compile_once(__name__.rpartition(".")[0])
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as engine
except Exception:  # pylint: disable=broad-except
    ENGINE_IMPORT_ERROR = traceback.format_exc()
    engine = None  # pylint: disable=invalid-name

    class RecoveryError(Exception):  # type: ignore[no-redef]
        """Placeholder: the engine could not be imported (never raised)."""

    def printable(text):  # type: ignore[no-redef]
        """Placeholder: the engine could not be imported (our own text only then)."""
        return str(text)
else:
    ENGINE_IMPORT_ERROR = None
    RecoveryError = engine.RecoveryError
    printable = engine.printable

#: The recover actions the engine knows, plus the ``heal`` composite.
SLOT_ACTIONS = tuple(getattr(engine, "SLOT_ACTIONS", ()))
ACTIONS = SLOT_ACTIONS + ("heal",)
#: The crash drill's defaults, the engine's (empty when it cannot be imported: the
#: module then fails with the import error before anything runs).
DRILL_DEFAULTS = {"iterations": getattr(engine, "DRILL_ITERATIONS", None),
                  "capacity": getattr(engine, "DRILL_CAPACITY", None),
                  "stride": getattr(engine, "DRILL_STRIDE", None)}

# --------------------------------------------------------------------------- options


#: Options shared by several modules (documented once, in the doc fragments).
SHARED_OPTIONS = {
    "name": dict(type="str"),                        # block address
    "all": dict(type="bool", default=False),         # every block on the host
    "slot": dict(type="raw"),                        # index, or "all" where allowed
    "force": dict(type="bool", default=False),
    "repair": dict(type="bool", default=False),
    "pattern": dict(type="str"),
    "max_bytes": dict(type="bytes"),                 # budget per block (engine default)
    "snapshot": dict(type="bool", default=True),     # write the before-image
    "snapshot_dir": dict(type="path"),               # where (engine default)
    "audit_log": dict(type="path"),                  # the audit log (engine default)
}

#: The record options (before-image and audit log): passed to the engine as given.
_RECORD = ("snapshot", "snapshot_dir", "audit_log")
#: Engine operations that take them.
_RECORDED = ("recover", "cleanup", "validate", "heal", "each_block", "undo")

#: Engine operations that take ``max_bytes`` (the module's option is passed to them).
_BUDGETED = ("diagnose", "recover", "cleanup", "validate", "heal", "each_block",
             "examine")


def argument_spec(*shared, **specific):
    """Build a module's argument spec: ``shared`` names options from
    :data:`SHARED_OPTIONS`; ``specific`` adds options or overrides keys of a shared one
    (``name=dict(required=True)``)."""
    spec = {}
    for key in shared:
        spec[key] = dict(SHARED_OPTIONS[key])
    for key, value in specific.items():
        merged = dict(spec.get(key, {}))
        merged.update(value)
        spec[key] = merged
    return spec


def parse_slot(value, allow_all=True):
    """A slot option value: a non-negative index (int, or digits as from ``-a slot=0``)
    or ``all``. Range is checked by the engine (it knows the capacity). ``ValueError``
    for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("slot must be a slot index%s, got %r"
                         % (" or 'all'" if allow_all else "", value))
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if allow_all and text.lower() == "all":
            return "all"
        try:
            return int(text, 10)
        except ValueError:
            pass
    raise ValueError("slot must be a slot index%s, got %r"
                     % (" or 'all'" if allow_all else "", value))


# --------------------------------------------------------------------------- diff


def _entity(target):
    """``slot[3].write_lock`` -> (``slot[3]``, ``write_lock``)."""
    head, _sep, tail = target.partition(".")
    return (head, tail) if tail else ("block", head)


def diff_from_changes(changes, header, result=None):
    """Before/after text of every slot, consumer entry and header field in ``changes``,
    in the block's own terms, as the CLI shows them (``engine.change_lines``: state
    names, pids with their verdict from ``result``, each word once from its first
    ``before`` to its last ``after``, so check mode shows the real run's diff).
    """
    doc = dict(result or {})
    doc["changes"] = changes or []
    entities = OrderedDict()
    for target, old, new in engine.change_lines(doc):
        entity, field = _entity(target)
        entities.setdefault(entity, OrderedDict())[field] = (old, new)
    before, after = [], []
    for entity, fields in entities.items():
        before.append("%s:" % entity)
        after.append("%s:" % entity)
        for field, (old, new) in fields.items():
            before.append("  %s: %s" % (field, printable(old)))
            after.append("  %s: %s" % (field, printable(new)))
    text_before = "\n".join(before) + "\n" if before else ""
    text_after = "\n".join(after) + "\n" if after else ""
    return {"before": text_before, "after": text_after,
            "before_header": "%s (before)" % printable(header),
            "after_header": "%s (after)" % printable(header)}


# --------------------------------------------------------------------------- module


def error_dict(exc):
    """A RecoveryError (or any exception) as ``{"code": ..., "message": ...}``."""
    if isinstance(exc, RecoveryError) and hasattr(exc, "to_dict"):
        return exc.to_dict()
    return {"code": "error", "message": "%s: %s" % (type(exc).__name__, exc)}


class DataBlockModule(object):
    """One module run: argument spec in; engine calls; result, diff or failure out."""

    def __init__(self, spec, **kwargs):
        self.module = AnsibleModule(argument_spec=spec, supports_check_mode=True, **kwargs)
        if ENGINE_IMPORT_ERROR is not None:
            self.module.fail_json(msg="the pylabhub.recovery engine cannot be imported on "
                                      "this host (broken installation?)",
                                  code="internal", exception=ENGINE_IMPORT_ERROR)
        self.params = self.module.params
        self.check_mode = self.module.check_mode
        self.engine = engine
        self._diffs = []
        self._audit = []

    def targets(self):
        """For modules taking ``name`` or ``all``: the one address, or None for all."""
        name, every = self.params.get("name"), self.params.get("all")
        if name and every:
            self.fail("give either name or all=true, not both", code="usage")
        if not name and not every:
            self.fail("one of name or all=true is required", code="usage")
        if self.params.get("pattern") is not None and not every:
            self.fail("pattern is only accepted with all=true", code="usage")
        return None if every else name

    # -- engine calls ----------------------------------------------------------------
    def _budget(self, func, kwargs):
        """Pass the module's ``max_bytes`` to the engine operations that take it."""
        if (self.params.get("max_bytes") is not None and engine is not None
                and any(func is getattr(engine, name) for name in _BUDGETED)):
            kwargs.setdefault("max_bytes", self.params["max_bytes"])
        return kwargs

    def _record(self, func, kwargs):
        """Pass the module's record options (``snapshot``, ``snapshot_dir``,
        ``audit_log``) to the engine operations that write."""
        if engine is not None and any(func is getattr(engine, name, None)
                                      for name in _RECORDED):
            for key in _RECORD:
                if key in self.params:
                    value = self.params[key]
                    kwargs.setdefault(key, None if key == "snapshot" and value else value)
        return kwargs

    def call(self, func, *args, **kwargs):
        """Run one engine call; a ``RecoveryError`` fails the task with its code."""
        kwargs = self._record(func, self._budget(func, kwargs))
        try:
            return func(*args, **kwargs)
        except RecoveryError as exc:
            self.fail_error(exc)
        return None  # not reached: fail_json exits

    def attempt(self, func, *args, **kwargs):
        """Run one engine call for one of many blocks: ``(result, None)`` or
        ``(None, error dict)``; the caller decides whether the task fails."""
        kwargs = self._record(func, self._budget(func, kwargs))
        try:
            return func(*args, **kwargs), None
        except RecoveryError as exc:
            return None, error_dict(exc)

    def each(self, operation, key, **kwargs):
        """Run an engine operation on every block (``engine.each_block``: one call per
        host); each entry's ``result`` is returned under ``key`` (the module's RETURN)."""
        summary = self.call(self.engine.each_block, operation, self.params.get("pattern"),
                            dry_run=self.check_mode, **kwargs)
        for entry in summary["blocks"]:
            entry[key] = entry.pop("result")
            if entry["skipped"]:
                self.module.warn(printable("%s skipped: %s" % (entry["address"],
                                                               entry["skipped"])))
            self.record(entry[key])
        return summary

    # -- results -----------------------------------------------------------------------
    def record(self, result, header=None):
        """Forward an engine result's warnings and, in diff mode, its changes."""
        if not isinstance(result, dict):
            return
        runs = result.get("audits") or ([result["audit"]] if result.get("audit") else [])
        self._audit.extend(runs)        # a heal with forced actions: each run's line
        for warning in result.get("warnings") or []:
            self.module.warn(printable(warning))
        if self.module._diff and "changes" in result:
            if header is None:
                block = result.get("block") or {}
                header = str(block.get("address") or block.get("path") or "datablock")
            self._diffs.append(diff_from_changes(result["changes"], header, result))

    def _finish(self, result):
        if self._audit:                 # the audit lines of this task, for the controller
            result["audit"] = list(self._audit)
        if self.module._diff and self._diffs:
            result["diff"] = self._diffs[0] if len(self._diffs) == 1 else list(self._diffs)
        return result

    def exit(self, changed=False, **result):
        result["changed"] = bool(changed)
        self.module.exit_json(**self._finish(result))

    def fail(self, msg, changed=False, **result):
        """Fail the task; ``msg`` (built from block names and messages, untrusted) is made
        one printable line, the structured result keeps exact values."""
        result["changed"] = bool(changed)
        self.module.fail_json(msg=printable(msg), **self._finish(result))

    def fail_error(self, exc, **result):
        err = error_dict(exc)
        self.fail(err.get("message", str(exc)), code=err.get("code"), error=err, **result)


# --------------------------------------------------------------------------- messages


def _listed(template, items):
    """``template`` % (count, plural "s", the items' messages joined)."""
    return template % (len(items), "" if len(items) == 1 else "s",
                       "; ".join(str(i.get("message")) for i in items))


def problem_messages(result):
    """The engine's ``refused`` and ``failed`` outcomes of a mutating result, as text."""
    parts = []
    if result.get("refused"):
        parts.append(_listed("refused %d unsafe action%s: %s", result["refused"]))
    if result.get("failed"):
        parts.append(_listed("%d action%s failed: %s", result["failed"]))
    return parts


def unrepaired_message(address, validation):
    """A validate result's ``unrepaired`` error findings, as one text."""
    return "%s: %s" % (address, _listed("%d unrepaired error finding%s: %s",
                                        validation["unrepaired"]))


def summary_msg(result):
    """What a mutating engine result did, or in check mode would do, in one line (the
    engine's ``summary``, in the run's tense), after the block's address, printable."""
    block = result.get("block") or {}
    return printable("%s: %s" % (block.get("address", "?"), engine.summary(result)))
