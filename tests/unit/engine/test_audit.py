"""The audit log (issue 16): one JSON line per real action, appended 0600, parsed back
and checked against the block; refused and failed actions are recorded too; dry runs
write nothing; the same record reaches syslog (a real /dev/log socket in a private mount
namespace); untrusted names stay exact in JSON."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _audit as A, _engine as E, _errors, _snapshot as S)

from .helpers import file_bytes, image


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "log" / "audit.jsonl"
    monkeypatch.setenv(A.ENV_LOG, str(path))
    monkeypatch.setenv(S.ENV_DIR, str(tmp_path / "snaps"))
    return path


def lines(path):
    with open(str(path)) as f:
        return [json.loads(x) for x in f]


def test_each_real_action_is_one_line_checked_against_the_block(lab, log):
    crash = lab.crashed("mid_write")
    dry = E.heal(crash.name, dry_run=True)
    assert dry["audit"] is None and not log.exists()
    result = E.recover(crash.name, crash.slot, "release_writer")
    records = lines(log)
    assert len(records) == 1
    rec = records[0]
    assert stat.S_IMODE(os.stat(str(log)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(log.parent)).st_mode) == 0o700
    assert rec == result["audit"]
    st = os.stat(os.path.join("/dev/shm", crash.name))
    assert rec["block"]["address"] == crash.name and rec["block"]["inode"] == st.st_ino
    assert rec["operation"] == "recover" and rec["forced"] is False and rec["changed"]
    assert rec["host"] == socket.gethostname() and rec["uid"] == os.geteuid()
    assert rec["snapshot"] == result["snapshot"]["id"]
    # the changes are the block's: the last value of each word is what the block holds
    img = image(crash.name)
    last = {c["target"]: c["after"] for c in rec["changes"]}
    slot = img.slot(crash.slot)
    assert last["slot[%d].write_lock" % crash.slot] == slot["lock"] == 0
    assert last["slot[%d].slot_state" % crash.slot] == slot["state"]
    assert last["header.recovery_actions_count"] == img.u(368, 8)
    verdict = rec["verdicts"][0]
    assert verdict["slot"] == crash.slot and verdict["result"] == "SUCCESS"
    assert verdict["holder"]["state"] == "dead" and verdict["holder"]["evidence"]


def test_refused_and_forced_actions_are_recorded(lab, log):
    crash = lab.crashed("draining_live_writer", evidence=False)
    before = file_bytes(crash.name)
    refused = E.recover(crash.name, crash.slot, "release_readers")
    assert refused["result"] == "UNSAFE" and file_bytes(crash.name) == before
    rec = lines(log)[-1]
    assert rec["refused"] == 1 and not rec["changed"] and rec["snapshot"] is None
    assert rec["verdicts"][0]["result"] == "UNSAFE"
    assert rec["verdicts"][0]["message"] == refused["outcomes"][0]["message"]
    forced = E.recover(crash.name, crash.slot, "release_readers", force=True)
    assert forced["changed"]
    rec = lines(log)[-1]
    assert rec["forced"] is True and rec["snapshot"] == forced["snapshot"]["id"]


def test_an_error_is_recorded(lab, log, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv(S.ENV_DIR, str(tmp_path / "f" / "snaps"))
    crash = lab.crashed("mid_write")
    with pytest.raises(_errors.SnapshotError):
        E.heal(crash.name)
    rec = lines(log)[-1]
    assert rec["error"]["code"] == "snapshot-failed" and rec["ok"] is False
    assert not rec["changed"]


def test_audit_log_failure_does_not_undo_the_action(lab, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv(A.ENV_LOG, str(tmp_path / "f" / "audit.jsonl"))
    monkeypatch.setenv(S.ENV_DIR, str(tmp_path / "snaps"))
    crash = lab.crashed("mid_write")
    result = E.recover(crash.name, crash.slot, "release_writer")
    assert result["changed"] and result["audit_error"]
    assert any(w.startswith("audit: ") for w in result["warnings"])


def test_hostile_name_stays_exact_in_json(lab, log):
    crash = lab.crashed("locked")
    hostile = "plhtest_\x1b[31mred\nline_%d" % os.getpid()
    os.rename(os.path.join("/dev/shm", crash.name), os.path.join("/dev/shm", hostile))
    lab.names.append(hostile)
    E.recover(hostile, crash.slot, "release_writer")
    raw = log.read_bytes()
    assert b"\x1b" not in raw and raw.count(b"\n") == 1      # one line, JSON-escaped
    assert lines(log)[0]["block"]["address"] == hostile


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) for a private /dev")
def test_the_record_reaches_syslog(tmp_path):
    """In a private mount namespace a tmpfs hides /dev, and a datagram socket bound at
    /dev/log stands for journald/rsyslog: the line that arrives is the audit record."""
    script = textwrap.dedent("""
        import json, os, socket, sys
        from ansible_collections.pylabhub.recovery.plugins.module_utils import _audit as A
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("/dev/log")
        s.settimeout(30)
        os.environ.pop(A.ENV_SYSLOG, None)
        record = {"operation": "heal", "forced": True, "block": {"address": "x"},
                  "changes": [{"target": "t", "before": 1, "after": 0}] * 400}
        A.to_syslog(record)
        sys.stdout.write(s.recv(65536).decode("utf-8", "replace"))
    """)
    p = subprocess.run(["unshare", "-m", "sh", "-c",
                        'mount -t tmpfs none /dev && exec "$0" -c "$1"', sys.executable,
                        script], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ), check=False)
    assert p.returncode == 0, p.stderr
    head, dummy, body = p.stdout.partition("audit ")
    assert "pylabhub-recovery[" in head
    assert head.startswith("<%d>" % (8 + 4))            # LOG_USER | LOG_WARNING (forced)
    short = json.loads(body)
    assert short["truncated"] is True and short["changes"] == 400   # too long: summarised
    assert short["operation"] == "heal" and short["forced"] is True


def test_nothing_to_do_and_bad_input_write_no_line(lab, log):
    crash = lab.crashed("locked")
    E.recover(crash.name, crash.slot, "release_writer")
    assert len(lines(log)) == 1
    again = E.recover(crash.name, crash.slot, "release_writer")   # nothing to do
    assert not again["changed"] and again["audit"] is None and len(lines(log)) == 1
    E.heal(crash.name)
    assert len(lines(log)) == 1
    path = os.path.join("/dev/shm", crash.name)
    os.truncate(path, 4096 + 64)                     # a truncated block: refused
    with pytest.raises(_errors.TruncatedBlock):
        E.heal(crash.name)
    assert len(lines(log)) == 1


def test_a_refused_undo_is_recorded(lab, log):
    crash = lab.crashed("locked")
    snap = E.recover(crash.name, crash.slot, "release_writer")["snapshot"]["id"]
    E.undo(snap)
    with pytest.raises(_errors.UndoRefused):
        E.undo(snap)
    rec = lines(log)[-1]
    assert rec["operation"] == "undo" and rec["undo_of"] == snap
    assert rec["error"]["code"] == "undo-refused" and not rec["changed"]
