# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: fleet_summary
type: aggregate
short_description: Per-host table of DataBlock health and recovery at the end of a run
version_added: 0.1.0
description:
  - At the end of a playbook (or of an ad-hoc C(ansible) run) prints one row per host -
    blocks seen, healthy, recovered, refused, corrupt, unreachable - computed from the
    results of the C(pylabhub.recovery.datablock_*) modules (successful and failed tasks
    alike, loop items included).
  - Every column except C(unreachable) counts distinct blocks (by address) on that host.
  - C(blocks) - blocks named in any result - RV(pylabhub.recovery.datablock_info#module:blocks[].address),
    and C(block.address) of the engine results listed below.
  - C(healthy) - blocks whose most recent health observation was healthy and that are not
    corrupt. Health is what the engine publishes as C(healthy) (the one rule) -
    RV(pylabhub.recovery.datablock_info#module:blocks[].health.healthy),
    C(diagnosis.healthy) (datablock_diagnose), C(validation.healthy) (datablock_validate)
    and C(recovery.healthy) (datablock_recover with C(action=heal)), also under
    C(blocks[]). A later real (not check mode) change by datablock_recover (other
    than heal) or datablock_cleanup makes a block's health unknown until it is observed again - end a play with
    M(pylabhub.recovery.datablock_info) for an up-to-date column. Corrupt blocks are never
    counted healthy (a diagnosis after a validation does not hash the data again).
  - C(recovered) - blocks where a datablock_recover, datablock_cleanup or datablock_validate
    result has C(changed=true) (C(recovery.changed), C(cleanup.changed),
    C(validation.changed), or the same under C(blocks[])). Changes predicted in check mode
    (C(dry_run=true)) are counted with a C(*) and a footnote - nothing was written.
  - C(refused) - blocks with a non-empty C(recovery.refused) (an unsafe action refused;
    the holder is not provably dead), or a slot first refused, then forced by
    C(force_refused) (C(recovery.forced)).
  - C(corrupt) - blocks whose most recent validation was not valid - the engine's
    C(valid) - C(validation.valid), C(blocks[].validation.valid) (datablock_validate),
    C(recovery.valid) (heal), C(blocks[].health.valid) (datablock_info).
  - C(unreachable) - how many task results for the host were unreachable (any module).
  - The engine results are recognised by C(schema=pylabhub.recovery/v1) and their
    C(operation) (V(diagnose), V(recover), V(heal), V(cleanup), V(validate)); results of
    other modules are ignored (except for C(unreachable)).
  - 'To enable it for a playbook, add it to C(callbacks_enabled) in C(ansible.cfg)
    (C([defaults] callbacks_enabled = pylabhub.recovery.fleet_summary)) or set
    C(ANSIBLE_CALLBACKS_ENABLED=pylabhub.recovery.fleet_summary).'
  - 'For ad-hoc C(ansible) runs, additional callbacks are only loaded on request - set
    both C(ANSIBLE_LOAD_CALLBACK_PLUGINS=1) and
    C(ANSIBLE_CALLBACKS_ENABLED=pylabhub.recovery.fleet_summary).'
requirements:
  - Enable in configuration (see the description).
options:
  all_hosts:
    description:
      - Also list hosts on which no C(pylabhub.recovery) module ran (all zeros).
    type: bool
    default: false
    env:
      - name: PYLABHUB_FLEET_SUMMARY_ALL_HOSTS
    ini:
      - section: callback_fleet_summary
        key: all_hosts
  report_dir:
    description:
      - When set, also write a fleet report file in Markdown to this directory at the end
        of each run - C(fleet-report-<UTC time>-<pid>.md), mode 0600 - with the table
        above and every audit record the modules returned (RV(ignore:audit) - host, time,
        block, operation, forced, changed, refused, the before-image id to undo it).
      - The directory is created if missing. Untrusted text (host and block names) is
        made printable and escaped for Markdown.
    type: path
    version_added: 0.2.0
    env:
      - name: PYLABHUB_FLEET_SUMMARY_REPORT_DIR
    ini:
      - section: callback_fleet_summary
        key: report_dir
'''

import os
import time

from ansible.plugins.callback import CallbackBase

# The controller is no managed host: only the engine's import-free modules are loaded here
# (its names, and the one escaping rule), never the machinery that reads blocks.
from ansible_collections.pylabhub.recovery.plugins.module_utils._contract import (
    AUDIT_FORMAT as AUDIT, SCHEMA)
from ansible_collections.pylabhub.recovery.plugins.module_utils._errors import printable

_MARKDOWN = "\\`*_[]<>|~"
_ENGINE_KEYS = ("diagnosis", "recovery", "cleanup", "validation")
_COLUMNS = ("blocks", "healthy", "recovered", "refused", "corrupt", "unreachable")


def _field(obj, *names):
    """The first of ``names`` present on a callback task result (2.19 and earlier)."""
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


class _Block(object):
    __slots__ = ("healthy", "corrupt", "recovered", "predicted", "refused")

    def __init__(self):
        self.healthy = None     # last observation: True / False / None (unknown)
        self.corrupt = False
        self.recovered = False  # bytes changed in a real run
        self.predicted = False  # bytes would change (check mode)
        self.refused = False


class CallbackModule(CallbackBase):
    """Collects the datablock modules' results per host; prints one table at the end."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pylabhub.recovery.fleet_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self._hosts = {}        # host -> {address: _Block}
        self._unreachable = {}  # host -> count
        self._audit = {}        # host -> [audit record] (the modules' ``audit``)
        self._playbooks = []

    # -- collecting ---------------------------------------------------------------------
    def _host_blocks(self, host):
        return self._hosts.setdefault(host, {})

    def _block(self, host, address):
        return self._host_blocks(host).setdefault(str(address), _Block())

    def _collect(self, result):
        host = _field(result, "host", "_host")
        data = _field(result, "result", "_result")
        if host is None or not isinstance(data, dict):
            return
        name = host.get_name() if hasattr(host, "get_name") else str(host)
        items = data.get("results") if isinstance(data.get("results"), list) else [data]
        for item in items:
            if isinstance(item, dict):
                self._read(name, item)

    def _read(self, host, data):
        for rec in data.get("audit") or []:
            if isinstance(rec, dict) and rec.get("format") == AUDIT:
                self._audit.setdefault(host, []).append(rec)
        for entry in data.get("blocks") or []:
            if not isinstance(entry, dict):
                continue
            health = entry.get("health")
            if isinstance(health, dict) and entry.get("address") is not None:
                self._info(host, entry["address"], health)
            for key in _ENGINE_KEYS:
                self._engine(host, entry.get(key))
        for key in _ENGINE_KEYS:
            self._engine(host, data.get(key))

    def _info(self, host, address, health):
        self._observe(self._block(host, address), health)

    @staticmethod
    def _observe(block, facts):
        """The engine's published verdicts: ``healthy`` (the one rule) and ``valid``."""
        if facts.get("healthy") is not None:
            block.healthy = bool(facts["healthy"])
        if facts.get("valid") is not None:
            block.corrupt = not facts["valid"]

    def _engine(self, host, doc):
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            return
        address = (doc.get("block") or {}).get("address")
        if address is None:
            return
        block = self._block(host, address)
        if doc.get("changed"):
            if doc.get("dry_run"):
                block.predicted = True
            else:
                block.recovered = True
                if "healthy" not in doc:   # recover / cleanup changed bytes: health unknown
                    block.healthy = None
        if doc.get("refused") or doc.get("forced"):
            block.refused = True
        self._observe(block, doc)

    def v2_playbook_on_start(self, playbook):
        name = getattr(playbook, "_file_name", None)
        if name:
            self._playbooks.append(os.path.basename(str(name)))

    def v2_runner_on_ok(self, result):
        self._collect(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._collect(result)

    def v2_runner_on_unreachable(self, result):
        host = _field(result, "host", "_host")
        if host is not None:
            name = host.get_name() if hasattr(host, "get_name") else str(host)
            self._unreachable[name] = self._unreachable.get(name, 0) + 1

    # -- reporting ----------------------------------------------------------------------
    def rows(self, all_hosts=()):
        """``[(host, {column: value})]``, sorted by host; values are ints, except
        ``recovered`` which is a str with ``*`` when check-mode predictions are counted."""
        hosts = set(self._hosts) | set(self._unreachable) | set(all_hosts)
        out = []
        for host in sorted(hosts):
            blocks = self._hosts.get(host, {}).values()
            real = sum(1 for b in blocks if b.recovered)
            predicted = sum(1 for b in blocks if b.predicted and not b.recovered)
            out.append((host, {
                "blocks": len(blocks),
                "healthy": sum(1 for b in blocks if b.healthy and not b.corrupt),
                "recovered": "%d%s" % (real + predicted, "*" if predicted else ""),
                "refused": sum(1 for b in blocks if b.refused),
                "corrupt": sum(1 for b in blocks if b.corrupt),
                "unreachable": self._unreachable.get(host, 0),
            }))
        return out

    def table(self, all_hosts=()):
        """The summary as text; host names (from an inventory, perhaps a dynamic one)
        are made printable like every untrusted string a face shows."""
        rows = [(printable(host), row) for host, row in self.rows(all_hosts)]
        if not rows:
            return None
        width = max([len("host")] + [len(host) for host, dummy in rows])
        lines = ["%-*s  %s" % (width, "host", "  ".join("%11s" % c for c in _COLUMNS))]
        for host, row in rows:
            lines.append("%-*s  %s" % (width, host,
                                       "  ".join("%11s" % row[c] for c in _COLUMNS)))
        if any("*" in str(row["recovered"]) for dummy, row in rows):
            lines.append("* includes blocks that check mode predicts would be recovered "
                         "(nothing was written)")
        return "\n".join(lines)

    def v2_playbook_on_stats(self, stats):
        all_hosts = ()
        try:
            wanted = self.get_option("all_hosts")
        except KeyError:
            wanted = False
        if wanted:
            all_hosts = sorted(getattr(stats, "processed", {}) or {})
        text = self.table(all_hosts)
        try:
            report_dir = self.get_option("report_dir")
        except KeyError:
            report_dir = None
        if report_dir and (text is not None or self._audit):
            try:
                path = self.write_report(report_dir, all_hosts)
            except OSError as exc:
                self._display.warning("fleet_summary: cannot write the report in %s: %s"
                                      % (printable(report_dir), exc))
            else:
                self._display.display("fleet report: %s" % printable(path))
        if text is None:
            return
        self._display.banner("PYLABHUB FLEET SUMMARY")
        self._display.display(text)
        self._display.display("")

    # -- the report file --------------------------------------------------------------
    def report(self, all_hosts=()):
        """The fleet report in Markdown: the table and every audit record."""
        lines = ["# pylabhub fleet report", "",
                 "- generated: %s" % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())]
        if self._playbooks:
            lines.append("- playbook: %s" % ", ".join(_md(p) for p in self._playbooks))
        rows = self.rows(all_hosts)
        lines += ["- hosts: %d" % len(rows), "", "## Hosts", "",
                  "| host | %s |" % " | ".join(_COLUMNS),
                  "|---|%s" % "---:|" * len(_COLUMNS)]
        for host, row in rows:
            lines.append("| %s | %s |" % (_md(host), " | ".join(str(row[c]) for c in _COLUMNS)))
        if any("*" in str(row["recovered"]) for dummy, row in rows):
            lines += ["", "\\* includes blocks that check mode predicts would be recovered "
                          "(nothing was written)"]
        lines += ["", "## Actions", ""]
        records = [(host, rec) for host in sorted(self._audit) for rec in self._audit[host]]
        if not records:
            lines.append("No real action reached a block (check mode, or nothing ran).")
        else:
            lines += ["| host | time | block | operation | forced | changed | refused | "
                      "before-image |", "|---|---|---|---|---|---|---:|---|"]
            for host, rec in records:
                block = (rec.get("block") or {}).get("address", "?")
                error = rec.get("error") or {}
                lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    _md(host), _md(rec.get("time", "")), _md(block),
                    _md(rec.get("operation", "")) + (" (error: %s)" % _md(error["code"])
                                                     if error.get("code") else ""),
                    "yes" if rec.get("forced") else "no",
                    "yes" if rec.get("changed") else "no", int(rec.get("refused") or 0),
                    _md(rec.get("snapshot") or "-")))
            lines += ["", "Undo a run on its host: `datablock-admin undo BEFORE-IMAGE`, or "
                          "the module pylabhub.recovery.datablock_undo."]
        return "\n".join(lines) + "\n"

    def write_report(self, directory, all_hosts=()):
        """Write :meth:`report` as a new file in ``directory``; returns its path."""
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700)
        now = time.time()
        name = "fleet-report-%s.%06dZ-%d.md" % (
            time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)), int(now * 1e6) % 1000000,
            os.getpid())
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(self.report(all_hosts))
        return path


def _md(text):
    """Untrusted text for a Markdown table cell: printable, its punctuation escaped."""
    return "".join("\\" + ch if ch in _MARKDOWN else ch for ch in printable(text))
