"""datablock-admin undo and snapshots end to end (issue 16): a real run prints its
before-image id; undo puts the block back byte for byte; --dry-run writes nothing; a
live change since is refused in one line naming the field (exit 6) and changes nothing;
an unusable snapshot directory refuses the mutation (exit 8); --no-snapshot opts out;
the audit line of each real run is appended (JSON lines, 0600)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from plh_crash import read_bytes


def shm(name):
    return os.path.join("/dev/shm", name)


def _publish(name, count):
    """A producer process of ours attaches and commits ``count`` slots."""
    code = ("import sys\n"
            "from ansible_collections.pylabhub.recovery.plugins.module_utils import "
            "_runtime as R\n"
            "b = R.attach(sys.argv[1]); p = R.Producer(b)\n"
            "for i in range(int(sys.argv[2])): p.publish(b'live %d' % i)\n"
            "b.close()\n")
    subprocess.run([sys.executable, "-c", code, name, str(count)], check=True, timeout=60)


def _env(tmp_path):
    return {"PYLABHUB_RECOVERY_SNAPSHOT_DIR": str(tmp_path / "snaps"),
            "PYLABHUB_RECOVERY_AUDIT_LOG": str(tmp_path / "log" / "audit.jsonl")}


def test_recover_prints_its_before_image_and_undo_restores(cli, crashes, names, tmp_path):
    name = names()
    crashes.stuck_writer(name)
    env = _env(tmp_path)
    original = read_bytes(shm(name))
    r = cli("recover", name, "--slot", "0", "--action", "release_writer", env=env)
    assert r.rc == 0, r
    line = [x for x in r.stdout.splitlines() if "before-image:" in x]
    assert line, r
    snap_id = line[0].split("before-image:")[1].split()[0]
    assert "datablock-admin undo %s" % snap_id in line[0]

    listed = cli("snapshots", "--json", env=env)
    assert listed.rc == 0 and listed.json["snapshots"][0]["id"] == snap_id
    assert snap_id in cli("snapshots", env=env).stdout

    recovered = read_bytes(shm(name))
    text = cli("undo", snap_id, "--dry-run", env=env)
    assert text.rc == 0 and "DRY RUN" in text.stdout, text
    assert "slot[0].write_lock: 0 → " in text.stdout and "→ now" not in text.stdout, text
    dry = cli("undo", snap_id, "--dry-run", "--json", env=env)
    assert dry.rc == 0 and dry.json["changed"] and dry.json["snapshot"] is None, dry
    assert read_bytes(shm(name)) == recovered
    done = cli("undo", snap_id, "--json", env=env)
    assert done.rc == 0 and done.json["undo_of"] == snap_id, done
    assert read_bytes(shm(name)) == original

    log = tmp_path / "log" / "audit.jsonl"
    assert stat.S_IMODE(os.stat(str(log)).st_mode) == 0o600
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r_["operation"] for r_ in records] == ["recover", "undo"]
    assert records[0]["snapshot"] == snap_id and records[1]["undo_of"] == snap_id
    assert records[0]["changes"] and records[0]["block"]["address"] == name


def test_undo_refused_after_a_live_commit(cli, crashes, names, tmp_path):
    name = names()
    crashes.stuck_writer(name)
    env = _env(tmp_path)
    r = cli("recover", name, "--slot", "0", "--action", "release_writer", "--json", env=env)
    snap_id = r.json["snapshot"]["id"]
    _publish(name, 3)                           # a real producer commits since
    now = read_bytes(shm(name))
    refused = cli("undo", snap_id, env=env)
    assert refused.rc == 6, refused
    assert len(refused.err_lines) == 1 and "changed since" in refused.err_lines[0]
    assert "slot[" in refused.err_lines[0]
    assert read_bytes(shm(name)) == now


def test_snapshot_directory_unusable_refuses_with_exit_8(cli, crashes, names, tmp_path):
    name = names()
    crashes.stuck_writer(name)
    (tmp_path / "file").write_text("x")
    original = read_bytes(shm(name))
    r = cli("recover", name, "--slot", "0", "--action", "release_writer",
            "--snapshot-dir", str(tmp_path / "file" / "snaps"))
    assert r.rc == 8, r
    assert len(r.err_lines) == 1 and "nothing was changed" in r.err_lines[0]
    assert read_bytes(shm(name)) == original
    r = cli("recover", name, "--slot", "0", "--action", "release_writer", "--no-snapshot",
            "--snapshot-dir", str(tmp_path / "file" / "snaps"), "--json")
    assert r.rc == 0 and r.json["snapshot"] is None and r.json["changed"], r


def test_undo_of_a_missing_snapshot_is_a_usage_error(cli, tmp_path):
    r = cli("undo", "20260101T000000.000000Z-heal-1-00000000", env=_env(tmp_path))
    assert r.rc == 2 and len(r.err_lines) == 1, r
    r = cli("undo", "not a snapshot\x1b[31m", env=_env(tmp_path))
    assert r.rc == 2 and "\x1b" not in r.stderr, r


def test_metrics_textfile(cli, crashes, names, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    name = names()
    crashes.stuck_writer(name)
    env = _env(tmp_path)
    (tmp_path / "tf").mkdir()
    r = cli("metrics", "--textfile", str(tmp_path / "tf"), "--match", name, env=env)
    assert r.rc == 0 and "wrote " in r.stdout, r
    text = (tmp_path / "tf" / "pylabhub_recovery.prom").read_text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("pylabhub_recovery_stuck_slots", (("block", name),))] == 1
    assert samples[("pylabhub_recovery_blocks", (("health", "stuck"),))] == 1
    printed = cli("metrics", "--match", name, env=env)
    assert printed.rc == 0 and "pylabhub_recovery_stuck_slots{block=" in printed.stdout
    doc = cli("metrics", "--match", name, "--json", env=env)
    assert doc.rc == 0 and doc.json["blocks"][0]["stuck_slots"] == 1
    missing = cli("metrics", "--textfile", str(tmp_path / "nope"), env=env)
    assert missing.rc == 2 and len(missing.err_lines) == 1, missing
