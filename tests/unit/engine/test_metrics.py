"""Metrics (issue 16): the textfile is parsed back by prometheus_client's own parser and
every value is checked against the blocks (and the audit log) it describes; the file is
replaced atomically, never left half-written; hostile names are escaped."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _audit as A, _engine as E, _errors, _metrics as M, _snapshot as S)

from .helpers import image, poke

parser = pytest.importorskip("prometheus_client.parser")


@pytest.fixture
def record(tmp_path, monkeypatch):
    monkeypatch.setenv(A.ENV_LOG, str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv(S.ENV_DIR, str(tmp_path / "snaps"))
    return tmp_path


def parse(text):
    """{metric name: {frozenset(labels): value}} from Prometheus' parser."""
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def value(parsed, name, **labels):
    return parsed["pylabhub_recovery_" + name][frozenset(labels.items())]


def test_textfile_values_match_the_blocks(lab, record, tmp_path):
    stuck = lab.crashed("mid_write")
    consumer = lab.crashed("consumer")
    corrupt = lab.create(capacity=4, commits=4)
    img = image(corrupt)
    off = img.geo["ring"] + img.stride + 77
    poke(corrupt, off, bytes([img.data[off] ^ 0x5A]))
    pattern = "plhtest_eng_%d_*" % os.getpid()

    E.heal(consumer.name)                               # one real heal, in the audit log
    E.recover(stuck.name, stuck.slot, "release_writer", dry_run=True)   # not recorded
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    doc = E.metrics(pattern, textfile=str(textdir))
    assert sorted(os.listdir(str(textdir))) == ["pylabhub_recovery.prom"]
    text = (textdir / "pylabhub_recovery.prom").read_text()
    assert text == doc["text"]
    got = parse(text)

    names = {stuck.name, consumer.name, corrupt}
    assert {dict(k)["block"] for k in got["pylabhub_recovery_block_up"]} >= names
    for name in names:
        assert value(got, "block_up", block=name) == 1
        diag = E.diagnose(name)
        checked = E.validate(name)
        # the health of validation (checksums hashed): diagnose's where nothing is corrupt
        assert value(got, "block_health", block=name, health=checked["health"]) == 1
        assert checked["health"] == diag["health"] or checked["health"] == "corrupt"
        assert value(got, "stuck_slots", block=name) == len(diag["stuck_slots"])
        assert value(got, "suspect_slots", block=name) == len(diag["suspect_slots"])
        dead = sum(1 for c in diag["consumers"] if c["verdict"]["state"] == "dead")
        assert value(got, "dead_consumers", block=name) == dead
        errors = sum(1 for f in checked["findings"] if f["severity"] == "error")
        assert value(got, "integrity_errors", block=name) == errors
    assert value(got, "stuck_slots", block=stuck.name) == 1
    assert value(got, "integrity_errors", block=corrupt) >= 1
    ours = [e for e in doc["blocks"] if e["address"] in names]
    assert len(ours) == 3
    healths = [e["health"] for e in doc["blocks"]]
    for word in M.HEALTH:
        assert value(got, "blocks", health=word) == healths.count(word)

    with open(str(record / "audit.jsonl")) as f:
        heal = [json.loads(x) for x in f][-1]
    assert value(got, "last_heal_timestamp_seconds", block=consumer.name) == pytest.approx(
        heal["ts"])
    assert value(got, "actions_total", operation="heal", outcome="taken") == 1
    assert ("pylabhub_recovery_actions_total" not in got or
            frozenset({"operation": "recover", "outcome": "taken"}.items())
            not in got["pylabhub_recovery_actions_total"])
    assert value(got, "last_diagnose_timestamp_seconds") == pytest.approx(doc["time"])


def test_refused_actions_are_counted(lab, record):
    crash = lab.crashed("draining_live_writer", evidence=False)
    E.recover(crash.name, crash.slot, "release_readers")
    got = parse(E.metrics("plhtest_eng_%d_*" % os.getpid())["text"])
    assert value(got, "actions_total", operation="recover", outcome="refused") == 1
    assert frozenset({"operation": "recover", "outcome": "taken"}.items()) not in got[
        "pylabhub_recovery_actions_total"]


def test_hostile_names_are_escaped_and_parse(record):
    doc = {"time": 1.0, "blocks": [{"address": 'we"ird\\name\n\x1b[31m', "up": True,
                                    "health": "healthy", "stuck_slots": 0,
                                    "suspect_slots": 0, "dead_consumers": 0,
                                    "integrity_errors": 0, "problem": None}],
           "last_heal": {}, "actions": []}
    got = parse(M.render(doc))
    label = _errors.printable('we"ird\\name\n\x1b[31m')
    assert value(got, "block_up", block=label) == 1
    assert "\x1b" not in M.render(doc)


def test_textfile_write_is_atomic_and_checked(tmp_path):
    with pytest.raises(_errors.UsageError):
        M.write_textfile(str(tmp_path / "missing"), "x 1\n")
    path = M.write_textfile(str(tmp_path), "a 1\n")
    M.write_textfile(str(tmp_path), "a 2\n")
    assert open(path).read() == "a 2\n" and os.listdir(str(tmp_path)) == [M.FILENAME]
