# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleet_summary: which result keys count where (the real table is checked end to end
in tests/integration/test_playbooks.py)."""

from __future__ import annotations

from ansible_collections.pylabhub.recovery.plugins.callback.fleet_summary import (
    CallbackModule)

SCHEMA = "pylabhub.recovery/v1"


class Host(object):
    def __init__(self, name):
        self.name = name

    def get_name(self):
        return self.name


class Result(object):
    """The 2.19 callback task result shape (``host``, ``result``)."""

    def __init__(self, host, result):
        self.host = Host(host)
        self.result = result


class OldResult(object):
    """The pre-2.19 shape (``_host``, ``_result``)."""

    def __init__(self, host, result):
        self._host = Host(host)
        self._result = result


def doc(operation, address, **kw):
    out = {"schema": SCHEMA, "operation": operation, "block": {"address": address}}
    out.update(kw)
    return out


def rows(cb):
    return dict(cb.rows())


def test_counts_per_host():
    cb = CallbackModule()
    cb.v2_runner_on_ok(Result("h1", {"blocks": [
        {"address": "a", "health": {"healthy": False, "valid": None}},
        {"address": "b", "health": {"healthy": True, "valid": True}},
        {"address": "c", "health": {"healthy": True, "valid": False}},
    ]}))
    cb.v2_runner_on_ok(Result("h1", {"recovery": doc("heal", "a", changed=True, dry_run=False,
                                                     healthy=True, refused=[],
                                                     validate={"valid": True})}))
    cb.v2_runner_on_failed(Result("h1", {"recovery": doc("recover", "d", changed=False,
                                                         dry_run=False,
                                                         refused=[{"slot": 0}])}))
    cb.v2_runner_on_unreachable(OldResult("h2", {"unreachable": True}))
    assert rows(cb) == {
        "h1": {"blocks": 4, "healthy": 2, "recovered": "1", "refused": 1, "corrupt": 1,
               "unreachable": 0},
        "h2": {"blocks": 0, "healthy": 0, "recovered": "0", "refused": 0, "corrupt": 0,
               "unreachable": 1},
    }


def test_check_mode_predictions_are_marked():
    cb = CallbackModule()
    cb.v2_runner_on_ok(Result("h", {"cleanup": doc("cleanup", "a", changed=True,
                                                   dry_run=True)}))
    assert rows(cb)["h"]["recovered"] == "1*"
    assert "nothing was written" in cb.table()


def test_a_real_change_makes_health_unknown_and_loops_are_read():
    cb = CallbackModule()
    cb.v2_runner_on_ok(Result("h", {"diagnosis": doc("diagnose", "a", healthy=True)}))
    cb.v2_runner_on_ok(Result("h", {"results": [
        {"recovery": doc("recover", "a", changed=True, dry_run=False, refused=[])},
        {"blocks": [{"address": "b",
                     "validation": doc("validate", "b", changed=False, dry_run=False,
                                       valid=False)}]},
    ]}))
    assert rows(cb)["h"] == {"blocks": 2, "healthy": 0, "recovered": "1", "refused": 0,
                             "corrupt": 1, "unreachable": 0}


def test_other_modules_are_ignored():
    cb = CallbackModule()
    cb.v2_runner_on_ok(Result("h", {"changed": True, "blocks": "not ours",
                                    "recovery": {"changed": True}}))
    assert cb.table() is None


def test_the_engines_published_verdicts_are_read_as_they_are():
    """healthy and valid as the engine published them, whatever the operation: a heal's
    top-level valid, a validation's healthy; a slot refused then forced counts as refused."""
    cb = CallbackModule()
    cb.v2_runner_on_ok(Result("h", {"recovery": doc(
        "heal", "a", changed=True, dry_run=False, healthy=False, valid=False, refused=[],
        forced=[])}))
    cb.v2_runner_on_ok(Result("h", {"validation": doc("validate", "b", changed=False,
                                                      dry_run=False, valid=True,
                                                      healthy=False)}))
    cb.v2_runner_on_ok(Result("h", {"blocks": [{"address": "c", "recovery": doc(
        "heal", "c", changed=True, dry_run=False, healthy=True, valid=True, refused=[],
        forced=[{"slot": 0, "action": "release_writer"}])}]}))
    assert rows(cb)["h"] == {"blocks": 3, "healthy": 1, "recovered": "2", "refused": 1,
                             "corrupt": 1, "unreachable": 0}


def test_fleet_report_file(tmp_path):
    """report_dir: a Markdown file per run with the table and every audit record the
    modules returned; hostile names cannot break a table row."""
    import os
    import re
    import stat
    cb = CallbackModule()
    hostile = "evil|name<b>*\x1b[31m"
    audit = {"format": "pylabhub.recovery/audit-v1", "time": "2026-12-01T03:12:00Z",
             "block": {"address": hostile}, "operation": "heal", "forced": False,
             "changed": True, "refused": 1, "snapshot": "20261201T031200.000000Z-heal-1-ab",
             "error": None}
    cb.v2_runner_on_ok(Result("host17", {"recovery": doc("heal", hostile, changed=True,
                                                         dry_run=False, healthy=True,
                                                         refused=[], validate={"valid": True}),
                                         "audit": [audit]}))
    cb.v2_runner_on_ok(Result("host18", {"results": [{"audit": [dict(audit, forced=True)]}]}))
    path = cb.write_report(str(tmp_path / "reports"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert re.match(r"fleet-report-\d{8}T\d{6}\.\d{6}Z-\d+\.md$", os.path.basename(path))
    text = open(path).read()
    assert text.startswith("# pylabhub fleet report")
    assert "\x1b" not in text and "<b>" not in text
    rows = [line for line in text.splitlines() if line.startswith("| host1")]
    assert len(rows) == 3                       # host17 in the table, two actions
    for row in rows:
        cells = re.split(r"(?<!\\)\|", row)[1:-1]
        assert len(cells) in (7, 8), row
    actions = [line for line in rows if "heal" in line]
    assert "20261201T031200" in actions[0] and "| yes | yes | 1 |" in actions[1]
    assert "datablock-admin undo" in text
