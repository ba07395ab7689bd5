# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report filters (plugins/filter/reports.py): every case the roles' and playbooks'
Jinja covered, on module results of the engine's shape, and end to end on the results of
the real modules over real crashed blocks."""

from __future__ import annotations

import re

import pytest

from ansible_collections.pylabhub.recovery.plugins.filter import reports
from ansible_collections.pylabhub.recovery.plugins.filter.reports import (
    done_lines, force_for_host, heal_verdict, health_report, recovery_report)
from ansible_collections.pylabhub.recovery.plugins.module_utils import _wording as W
from ansible_collections.pylabhub.recovery.plugins.modules import (
    datablock_info, datablock_recover)

#: A past-tense verb of the core's vocabulary (not after "would be"), and a conditional.
PAST = re.compile(r"(?<!would be )\b(%s)\b" % "|".join(re.escape(w) for w in W.PAST_FORMS))
CONDITIONAL = re.compile("|".join(re.escape(w) for w in W.CONDITIONAL_FORMS))


def test_the_filters_are_exported_under_their_names():
    assert set(reports.FilterModule().filters()) == {
        "health_report", "recovery_report", "force_for_host", "heal_verdict", "done_lines"}


# --------------------------------------------------------------------------- health
def info_block(address, found="ok", problems=(), producer_alive=False, **health):
    """A datablock_info entry: discovery's ``status`` (``found``) and the health summary."""
    h = {"healthy": True, "status": "healthy", "stuck_slots": [], "suspect_slots": [],
         "findings": [], "dead_consumers": 0, "slots": [], "valid": None,
         "validation_findings": None, "error": None}
    h.update(health)
    return {"address": address, "status": found, "problems": list(problems),
            "producer_alive": producer_alive, "health": h}


STUCK_SLOT = {"index": 3, "state": "WRITING", "write_lock": 4242, "reader_count": 0,
              "reason": "write lock held by dead pid 4242 (WRITING)",
              "action": "release_writer"}
SUSPECT_SLOT = {"index": 1, "state": "WRITING", "write_lock": 77, "reader_count": 0,
                "reason": "write lock held by pid 77 whose verdict is suspect-hung",
                "action": None}


def test_health_report_of_a_healthy_host():
    rep = health_report({"blocks": [info_block("a"), info_block("b", producer_alive=True)]},
                        "h1")
    assert rep["host"] == "h1" and rep["healthy"] is True and rep["lines"] == []
    assert rep["unhealthy"] == rep["corrupt"] == rep["errors"] == [] == rep["findings"]
    assert [b["address"] for b in rep["blocks"]] == ["a", "b"]
    assert rep["blocks"][1]["producer_alive"] is True and "slots" not in rep["blocks"][0]
    assert rep["counts"] == {"blocks": 2, "healthy": 2, "unhealthy": 0, "stuck_slots": 0,
                             "suspect_slots": 0, "dead_consumers": 0, "corrupt": 0,
                             "errors": 0}


def test_health_report_explains_stuck_and_suspect_slots():
    info = {"blocks": [info_block("w", healthy=False, status="suspect", stuck_slots=[3],
                                  suspect_slots=[1], slots=[SUSPECT_SLOT, STUCK_SLOT])]}
    rep = health_report(info, "h1")
    (blk,) = rep["blocks"]
    assert blk["slots"] == [SUSPECT_SLOT, STUCK_SLOT] and blk["status"] == "suspect"
    assert rep["lines"] == [
        "w: slot 1 WRITING, write lock 77, 0 reader(s): write lock held by pid 77 whose "
        "verdict is suspect-hung -> only a forced action releases it",
        "w: slot 3 WRITING, write lock 4242, 0 reader(s): write lock held by dead pid 4242 "
        "(WRITING) -> release_writer"]
    assert rep["unhealthy"] == ["w"] and rep["healthy"] is False
    assert (rep["counts"]["stuck_slots"], rep["counts"]["suspect_slots"]) == (1, 1)


def test_health_report_without_explanations_names_the_slots():
    info = {"blocks": [info_block("w", healthy=False, stuck_slots=[3], suspect_slots=[],
                                  slots=[STUCK_SLOT])]}
    rep = health_report(info, "h1", explain=False)
    assert "slots" not in rep["blocks"][0]
    assert rep["lines"] == ["w: stuck slots [3], suspect slots []"]


def test_health_report_findings_flattened_and_worded():
    info = {"blocks": [info_block(
        "c", healthy=False, status="corrupt", dead_consumers=2, valid=False,
        findings=[{"code": "dead-producer", "severity": "info", "message": "producer dead"},
                  {"code": "dead-consumer", "severity": "warning", "consumer": 0,
                   "message": "consumer 0 (pid 5) is dead: cleanup"}],
        validation_findings=[{"code": "checksum-mismatch", "severity": "error", "slot": 1,
                              "repairable": True, "message": "slot 1: stored checksum"}])]}
    rep = health_report(info, "h1")
    assert [(f["code"], f["source"], f["block"]) for f in rep["findings"]] == [
        ("dead-producer", "diagnose", "c"), ("dead-consumer", "diagnose", "c"),
        ("checksum-mismatch", "validate", "c")]
    assert rep["findings"][2]["slot"] == 1
    assert rep["lines"] == ["c: consumer 0 (pid 5) is dead: cleanup",     # info: no line
                            "c: slot 1: stored checksum (repairable: re-bless with repair)"]
    assert rep["corrupt"] == ["c"] and rep["counts"]["dead_consumers"] == 2
    assert rep["counts"]["corrupt"] == 1


def test_health_report_errors_and_unsound_headers():
    info = {"blocks": [
        info_block("gone", healthy=None, status=None,
                   error={"code": "not-found", "message": "gone: no such block"}),
        info_block("bad", found="unsupported-layout", problems=["layout hash 0x1", "version"],
                   healthy=None, status=None),
        info_block("odd", found="truncated", healthy=None, status=None)]}
    info["blocks"][2]["problems"] = []
    rep = health_report(info, "h1")
    errors = {b["address"]: b["error"] for b in rep["blocks"]}
    assert errors["gone"] == {"code": "not-found", "message": "gone: no such block"}
    assert errors["bad"] == {"code": "unsupported-layout", "message": "layout hash 0x1; version"}
    assert errors["odd"] == {"code": "truncated", "message": "truncated"}
    assert rep["errors"] == rep["unhealthy"] == ["gone", "bad", "odd"]
    assert rep["lines"] == ["gone: cannot be examined: gone: no such block",
                            "bad: cannot be examined: layout hash 0x1; version",
                            "odd: cannot be examined: truncated"]
    assert rep["healthy"] is False and rep["counts"]["errors"] == 3


def test_health_report_of_a_failed_module_or_no_block():
    for info in ({}, {"failed": True, "msg": "no python"}, {"blocks": []}):
        rep = health_report(info, "h1")
        assert rep["blocks"] == [] and rep["healthy"] is True and rep["counts"]["blocks"] == 0


# --------------------------------------------------------------------------- recovery
def outcome(result, message, slot=None, consumer=None):
    out = {"result": result, "message": message}
    if slot is not None:
        out.update(slot=slot, holder=None)
    if consumer is not None:
        out.update(consumer=consumer, pid=100 + consumer)
    return out


def healed(address, healthy=True, error=None, skipped=None, **recovery):
    r = {"changed": False, "healthy": healthy, "released": [], "refused": [], "failed": [],
         "unrepaired": [], "forced": [], "cleanup": {"cleaned": 0},
         "validate": {"reblessed": []}, "after": {"health": "healthy"}}
    r.update(recovery)
    entry = {"address": address, "status": "ok", "error": error, "skipped": skipped,
             "recovery": None if (error or skipped) else r,
             "healthy": bool(healthy) and not (error or skipped)}
    return entry


def test_recovery_report_of_a_healed_host():
    heal = {"changed": True, "blocks": [
        healed("w", changed=True, cleanup={"cleaned": 1},
               released=[outcome("SUCCESS", "consumer 0 (pid 100, c0): entry cleared",
                                 consumer=0),
                         outcome("SUCCESS", "slot 3: released write lock", slot=3)],
               validate={"reblessed": [{"slot": 1}, {"slot": None}]}),
        healed("quiet")]}
    rep = recovery_report(heal, "h1", check_mode=True, allow_repair=True)
    assert (rep["host"], rep["check_mode"], rep["allow_repair"]) == ("h1", True, True)
    assert rep["changed"] is True and rep["healthy"] is True and rep["unhealthy"] == []
    assert rep["changed_blocks"] == ["w"] and rep["errors"] == []
    w, quiet = rep["blocks"]
    assert w["released"] == ["consumer 0 (pid 100, c0): entry cleared",
                             "slot 3: released write lock"]
    assert (w["cleaned"], w["reblessed"], w["after"]) == (1, [1, None], {"health": "healthy"})
    assert quiet["changed"] is False and quiet["released"] == []


def test_recovery_report_of_what_is_left():
    refused = outcome("UNSAFE", "slot 2: write lock held by pid 7, verdict suspect-hung",
                      slot=2)
    heal = {"blocks": [
        healed("r", healthy=False, refused=[refused]),
        healed("c", healthy=False, unrepaired=[{"code": "checksum-mismatch",
                                                "message": "slot 1: checksum"}]),
        healed("f", healthy=False, failed=[outcome("FAILED", "slot 0: changed", slot=0)]),
        healed("x", error={"code": "permission", "message": "x: permission denied"}),
        healed("s", skipped="header not sound: truncated")]}
    rep = recovery_report(heal, "h1")
    by = {b["address"]: b for b in rep["blocks"]}
    assert by["r"]["refused"] == [refused]
    assert by["c"]["unrepaired"] == ["slot 1: checksum"]
    assert by["f"]["failed"] == ["slot 0: changed"]
    assert by["x"]["error"]["code"] == "permission" and by["x"]["after"] is None
    assert by["s"]["skipped"] == "header not sound: truncated"
    assert rep["unhealthy"] == ["r", "c", "f", "x", "s"] and rep["healthy"] is False
    assert rep["errors"] == ["x"] and rep["changed"] is False


def test_recovery_report_keeps_the_forced_actions():
    forced = {"slot": 2, "action": "release_writer", "reason": "INC-1", "result": "SUCCESS",
              "changed": True, "message": "slot 2: FORCED release", "warnings": ["FORCED"]}
    rep = recovery_report({"blocks": [healed("r", changed=True, forced=[forced])]}, "h1")
    assert rep["blocks"][0]["forced"] == [forced] and rep["healthy"] is True


def test_recovery_report_when_heal_could_not_run():
    for failed, code, message in (({"failed": True, "msg": "boom", "code": "internal"},
                                   "internal", "boom"),
                                  ({}, "error", "heal did not run")):
        rep = recovery_report(failed, "h1")
        (blk,) = rep["blocks"]
        assert blk["address"] == "(every block)"
        assert blk["error"] == {"code": code, "message": message}
        assert rep["healthy"] is False and rep["errors"] == ["(every block)"]


def test_force_for_host():
    entries = [{"name": "a", "slot": 1, "action": "release_writer", "host": "h1",
                "reason": "why"},
               {"name": "b", "slot": "all", "action": "force_reset"},
               {"name": "c", "slot": 0, "action": "release_readers", "host": "h2"},
               {"name": "d", "slot": 0, "action": "release_readers", "host": ""}]
    assert force_for_host(entries, "h1") == [
        {"name": "a", "slot": 1, "action": "release_writer", "reason": "why"},
        {"name": "b", "slot": "all", "action": "force_reset", "reason": ""},
        {"name": "d", "slot": 0, "action": "release_readers", "reason": ""}]
    assert [e["name"] for e in force_for_host(entries, "h2")] == ["b", "c", "d"]
    assert force_for_host([], "h1") == []


# --------------------------------------------------------------------------- fleet
def report(host, blocks, healthy=True):
    return {"host": host, "healthy": healthy, "blocks": blocks}


def block(address, **kw):
    out = {"address": address, "released": [], "reblessed": [], "forced": [], "refused": [],
           "unrepaired": [], "failed": [], "error": None, "skipped": None}
    out.update(kw)
    return out


def test_heal_verdict_lines_per_host_and_what_is_left():
    reports = [
        report("h1", [block("w", released=["slot 3: released"], reblessed=[1, None],
                            forced=[{"action": "release_writer", "message": "slot 2: FORCED"}])]),
        report("h2", [block("r", refused=[{"message": "slot 2: suspect-hung"}],
                            unrepaired=["slot 1: checksum"], failed=["slot 0: changed"]),
                      block("x", error={"code": "permission", "message": "x: denied"}),
                      block("s", skipped="over budget")], healthy=False),
        report("h3", [block("a"), block("b")]),
        report("h4", [])]
    v = heal_verdict(reports)
    assert v["lines"] == {
        "h1": ["w: slot 3: released", "w: re-blessed the checksum of slot 1 (allow_repair)",
               "w: re-blessed the flexible zone's checksum (allow_repair)",
               "w: FORCED release_writer: slot 2: FORCED"],
        "h2": ["r: REFUSED slot 2: suspect-hung",
               "r: NOT REPAIRED slot 1: checksum (datablock_recovery_allow_repair=true "
               "re-blesses it)",
               "r: FAILED slot 0: changed", "x: ERROR x: denied", "s: skipped: over budget"],
        "h3": ["2 block(s), nothing to do"], "h4": ["0 block(s), nothing to do"]}
    assert v["left"] == ["h2"] and v["problems"] == {"h2": v["lines"]["h2"]}
    assert v["hosts"] == 4
    assert v["message"] == "1 host(s) left unhealthy: h2 (%s)" % "; ".join(v["lines"]["h2"])


def test_heal_verdict_all_healed():
    v = heal_verdict([report("h1", [block("a")]), report("h2", [])])
    assert v["left"] == [] and v["message"] == "2 host(s) healed: every block healthy"
    assert heal_verdict([])["message"] == "0 host(s) healed: every block healthy"


def test_heal_verdict_check_mode_speaks_in_the_conditional():
    """A check-mode report (the heal playbook with --check) says what the run would do:
    the words in the run's tense come from the core (_wording), never a past tense."""
    rep = dict(report("h1", [block("w", released=["slot 3: would release the write lock"],
                                   reblessed=[1, None])]), check_mode=True)
    v = heal_verdict([rep])
    assert v["lines"]["h1"] == [
        "w: slot 3: would release the write lock",
        "w: would re-bless the checksum of slot 1 (allow_repair)",
        "w: would re-bless the flexible zone's checksum (allow_repair)"]
    assert v["message"] == "1 host(s) would be healed: every block healthy"
    text = " ".join(v["lines"]["h1"] + [v["message"]])
    assert not PAST.search(text), text
    assert CONDITIONAL.search(text)


def test_done_lines():
    skipped = {"skipped": True, "changed": False}
    recovery = {"recovery": {"outcomes": [outcome("SUCCESS", "slot 0: released", slot=0),
                                          outcome("NOT_STUCK", "slot 1: nothing", slot=1)]}}
    validation = {"validation": {"outcomes": [], "findings": [
        {"message": "slot 1: checksum", "repaired": True}, {"message": "count off"}]}}
    assert done_lines([recovery, skipped, skipped]) == ["slot 0: released", "slot 1: nothing"]
    assert done_lines([skipped, skipped, validation]) == [
        "slot 1: checksum -> checksum re-blessed", "count off"]
    cleanup = {"cleanup": {"outcomes": [outcome("SUCCESS", "consumer 0: cleared",
                                                consumer=0)]}}
    assert done_lines([skipped, cleanup, skipped]) == ["consumer 0: cleared"]
    dry = {"validation": {"dry_run": True, "outcomes": [], "findings": [
        {"message": "slot 1: checksum", "repaired": True}]}}
    assert done_lines([dry]) == ["slot 1: checksum -> checksum would be re-blessed"]
    assert done_lines([skipped, skipped, skipped]) == [] == done_lines([])


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("explain", [True, False])
def test_health_report_of_a_real_info_result(run, lab, name, explain):
    slot, dead = lab.stuck_writer(name + "_w")
    lab.healthy(name + "_h")
    info = run(datablock_info, {"pattern": name + "_*", "validate": True})
    assert not info.failed, info
    rep = health_report(info.result, "h1", explain)
    by = {b["address"]: b for b in rep["blocks"]}
    assert by[name + "_h"]["healthy"] is True and by[name + "_w"]["status"] == "stuck"
    assert rep["unhealthy"] == [name + "_w"] and by[name + "_w"]["stuck_slots"] == [slot]
    if explain:
        assert by[name + "_w"]["slots"][0]["write_lock"] == dead
        assert rep["lines"][0].endswith("-> release_writer"), rep["lines"]
    else:
        assert rep["lines"][0] == "%s_w: stuck slots [%d], suspect slots []" % (name, slot)


def test_recovery_report_of_a_real_heal(run, lab, name):
    slot, dead = lab.stuck_writer(name + "_w")
    lab.dead_consumers(name + "_c", dead=2)
    healed_ = run(datablock_recover, {"all": True, "pattern": name + "_*", "action": "heal"})
    assert not healed_.failed, healed_
    rep = recovery_report(healed_.result, "h1")
    by = {b["address"]: b for b in rep["blocks"]}
    assert rep["healthy"] is True and rep["changed_blocks"] == sorted(by)
    assert by[name + "_c"]["cleaned"] == 2
    assert any("pid %d" % dead in m and "WRITING → FREE" in m
               for m in by[name + "_w"]["released"]), by[name + "_w"]
    lines = heal_verdict([rep])["lines"]["h1"]
    assert sum(1 for line in lines if line.startswith(name + "_c: consumer")) == 2, lines
