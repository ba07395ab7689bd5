"""datablock-admin watch end to end (issue 16): --once heals a stuck block (delay 0) and
prints one schema-valid JSON document per pass; a bad policy is one line and exit 2; a
second watch on the host exits 3 while the first runs; SIGTERM ends the watch between
passes with exit 0."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from plh_crash import read_bytes


def _env(tmp_path):
    return {"PYLABHUB_RECOVERY_SNAPSHOT_DIR": str(tmp_path / "snaps"),
            "PYLABHUB_RECOVERY_AUDIT_LOG": str(tmp_path / "log" / "audit.jsonl"),
            "PYLABHUB_RECOVERY_WATCH_LOCK": str(tmp_path / "run" / "watch.lock"),
            "PYLABHUB_RECOVERY_SYSLOG": "off"}


def _policy(tmp_path, name, **kw):
    doc = {"blocks": [name], "interval": 0.2, "delay": 0,
           "state_file": str(tmp_path / "state.json")}
    doc.update(kw)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_once_heals_and_prints_one_document(cli, crashes, names, tmp_path):
    name = names()
    crashes.stuck_writer(name)
    env = _env(tmp_path)
    r = cli("watch", "--policy", _policy(tmp_path, name), "--once", "--json", env=env)
    assert r.rc == 0, r
    doc = r.json                    # one document (the fixture checked it against the schema)
    assert doc["operation"] == "watch" and doc["healed"] == 1, r
    row = doc["blocks"][0]
    assert row["address"] == name and row["healed"]["changed"], r
    records = [json.loads(x) for x in (tmp_path / "log" / "audit.jsonl").read_text().splitlines()]
    assert [x["operation"] for x in records] == ["heal"]
    assert records[0]["watch"]["pass"] == doc["pass"]
    again = cli("watch", "--policy", _policy(tmp_path, name), "--once", env=env)
    assert again.rc == 0 and again.stdout.startswith("pass 2: 1 block(s), 0 healed"), again


def test_text_output_names_what_it_waits_for(cli, crashes, names, tmp_path):
    name = names()
    crashes.stuck_writer(name)
    before = read_bytes("/dev/shm/" + name)
    r = cli("watch", "--policy", _policy(tmp_path, name, delay=3600), "--once",
            env=_env(tmp_path))
    assert r.rc == 0, r
    assert "slot 0 stuck, seen for 0.0 s; waiting for the policy's delay" in r.stdout, r
    assert read_bytes("/dev/shm/" + name) == before


def test_bad_policy_is_one_line_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"delay": "soon"}')
    r = cli("watch", "--policy", str(bad), "--once", env=_env(tmp_path))
    assert r.rc == 2, r
    assert r.err_lines == ["datablock-admin: error: watch policy %s: delay must be seconds a "
                           "slot must be seen stuck before its block is healed, >= 0, not "
                           "\"soon\"" % bad], r
    j = cli("watch", "--policy", str(tmp_path / "absent.json"), "--json", env=_env(tmp_path))
    assert j.rc == 2 and j.json["error"]["code"] == "bad-policy", j


def _start(tmp_path, policy):
    env = dict(os.environ, **_env(tmp_path))
    env.pop("PLH_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "pylabhub.recovery.cli", "watch",
                             "--policy", policy], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _line(proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            return proc.stdout.readline()
    raise AssertionError("no line from the watch in %.0f s" % timeout)


def test_one_watch_per_host_and_sigterm_ends_it_between_passes(cli, crashes, names, tmp_path):
    name = names()
    crashes.stuck_writer(name)
    policy = _policy(tmp_path, name, delay=3600)
    proc = _start(tmp_path, policy)
    try:
        first = _line(proc)
        assert first.startswith("pass 1: 1 block(s), 0 healed, 1 waiting"), first
        second = cli("watch", "--policy", policy, "--once", env=_env(tmp_path))
        assert second.rc == 3, second
        assert len(second.err_lines) == 1 and "another watch is running" in second.stderr
        assert "pid %d" % proc.pid in second.stderr, second
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out, err)
    assert out.rstrip().splitlines()[-1].startswith("watch stopped after pass"), out
    assert "Traceback" not in err and err == "", err
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["passes"] >= 1 and state["heals"] == 0
    # the lock went with the process: a new watch runs
    assert cli("watch", "--policy", policy, "--once", env=_env(tmp_path)).rc == 0
