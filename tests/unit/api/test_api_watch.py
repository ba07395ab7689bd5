"""The API's watch (issue 16): ``recovery.watch(policy, once=True)`` heals a block left
stuck by a SIGKILLed writer when the policy's delay is 0, records the heal in the audit
log with its before-image, and is undone like any heal; a bad policy raises
:class:`PolicyError` (exit code 2) and changes nothing."""

from __future__ import annotations

import json
import os

import pytest

from pylabhub import recovery


def _bytes(name):
    with open(os.path.join("/dev/shm", name), "rb") as f:
        return f.read()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLABHUB_RECOVERY_WATCH_LOCK", str(tmp_path / "run" / "watch.lock"))
    monkeypatch.setenv("PYLABHUB_RECOVERY_SYSLOG", "off")
    return tmp_path


def test_watch_once_heals_and_the_heal_can_be_undone(crashes, names, env):
    name = names()
    crashes.stuck_writer(name)
    original = _bytes(name)
    policy = env / "policy.json"
    policy.write_text(json.dumps({"blocks": [names.prefix + "*"], "delay": 0,
                                  "state_file": str(env / "state.json")}))
    log = str(env / "audit.jsonl")
    doc = recovery.watch(str(policy), once=True, snapshot_dir=str(env / "snaps"),
                         audit_log=log)
    assert doc["operation"] == "watch" and doc["healed"] == 1 and doc["stopped"] is False
    row = doc["blocks"][0]
    assert row["address"] == name and row["healed"]["changed"]
    snapshot = row["healed"]["snapshots"][0]
    with open(log) as f:
        records = [json.loads(x) for x in f]
    assert [(r["operation"], r["snapshot"]) for r in records] == [("heal", snapshot)]
    recovery.undo(snapshot, snapshot_dir=str(env / "snaps"), audit_log=log)
    assert _bytes(name) == original


def test_bad_policy_raises_and_changes_nothing(crashes, names, env):
    name = names()
    crashes.stuck_writer(name)
    before = _bytes(name)
    policy = env / "policy.json"
    policy.write_text('{"blocks": ["%s"], "delay": 0, "forced": true}' % name)
    with pytest.raises(recovery.PolicyError) as err:
        recovery.watch(str(policy), once=True)
    assert err.value.exit_code == recovery.EXIT_USAGE and "forced" in err.value.message
    assert _bytes(name) == before
    assert issubclass(recovery.WatchRunning, recovery.RecoveryError)
