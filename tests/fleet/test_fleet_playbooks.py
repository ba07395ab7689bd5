# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's playbooks, run by FQCN with real ``ansible-playbook`` over real ssh
against a 4-host fleet lab (lab/fleetlab.py) broken by real crashed processes.

Each scenario of the recovery procedure sits on its own host:

    lab-01  stuck_writer (+ a healthy block)   lab-02  stuck_readers: a live writer
    lab-03  dead_consumers                              waits in DRAINING behind a dead reader
    lab-04  corruption

In order (the tests share the lab and build on each other): ``diagnose`` sees every fault
and changes nothing; ``validate`` fails exactly the corrupt host; ``recover`` takes every
host through its own procedure step in one run (release_writer, release_readers, cleanup,
validate with repair) - first in check mode (bytes untouched), then for real, then again
(nothing left to do); ``validate`` passes everywhere; ``heal`` refuses a suspect-hung
writer (SIGSTOPped) and leaves new corruption unrepaired, then releases it by force when
the policy enables it for that slot and re-blesses with allow_repair. After each run the
per-host results (facts and task results, from the json stdout callback) are checked, the bytes
of every block are read back inside each host (fleetlab exec + the core's open_block),
and the pylabhub.recovery.fleet_summary table is parsed and its counts compared with
what was done. Needs root, util-linux and openssh-server; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.fleet

REPO = Path(__file__).resolve().parents[2]
FLEETLAB = REPO / "lab" / "fleetlab.py"
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
HOSTS = ("lab-01", "lab-02", "lab-03", "lab-04")
FAULTS = (("lab-01", "stuck_writer"), ("lab-01", "healthy"), ("lab-02", "stuck_readers"),
          ("lab-03", "dead_consumers"), ("lab-04", "corruption"))

sys.path.insert(0, str(FLEETLAB.parent))
import fleetlab  # noqa: E402

_MISSING = fleetlab.missing_prerequisites() or (
    None if PLAYBOOK.exists() else "ansible-playbook not installed beside %s" % sys.executable)
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)

# The bytes of every block of a host, read inside the host with the core's open_block.
READ_BLOCKS = textwrap.dedent("""
    import json, os
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _layout as L
    from ansible_collections.pylabhub.recovery.plugins.module_utils._block import open_block
    out = {}
    for name in sorted(os.listdir("/dev/shm")):
        with open_block(name) as b:
            g = b.geo
            slots = []
            for i in range(g.capacity):
                base = b.slot_base(i)
                stored = b.read(g.checksum_entry(i), L.HASH_SIZE)
                data = b.read(g.slot_data(i), g.stride)
                slots.append({"state": L.enum_name(L.SlotState, b.get(L.SLOT["slot_state"], base)),
                              "lock": b.get(L.SLOT["write_lock"], base),
                              "readers": b.get(L.SLOT["reader_count"], base),
                              "waiting": b.get(L.SLOT["writer_waiting"], base),
                              "sum_ok": (L.blake2b256(data) == stored) if any(stored) else None})
            out[name] = {"slots": slots,
                         "consumers": [b.consumer(k, "consumer_pid") for k in range(L.MAX_CONSUMERS)],
                         "active_consumers": b.get("active_consumer_count"),
                         "write_index": b.get("write_index"),
                         "recoveries": b.get("recovery_actions_count")}
    print(json.dumps(out))
""")

# A callback of the test's own (written into the lab directory, loaded with
# ANSIBLE_CALLBACK_PLUGINS): every task result of every host, failed ones included, as
# JSON in $PLH_RECORD (ansible-core 2.19 no longer ships a json stdout callback).
RECORDER = textwrap.dedent("""
    import json, os
    from ansible.plugins.callback import CallbackBase

    class CallbackModule(CallbackBase):
        CALLBACK_VERSION = 2.0
        CALLBACK_TYPE = "aggregate"
        CALLBACK_NAME = "plh_record"
        CALLBACK_NEEDS_ENABLED = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rows = []

        def _add(self, result, status):
            host = getattr(result, "host", None) or result._host
            task = getattr(result, "task", None) or result._task
            data = getattr(result, "result", None)
            data = data if isinstance(data, dict) else result._result
            self.rows.append({"host": host.get_name(), "task": task.get_name(),
                              "status": status,
                              "result": self._dump_results(data, serialize=False)})

        def v2_runner_on_ok(self, result):
            self._add(result, "ok")

        def v2_runner_on_failed(self, result, ignore_errors=False):
            self._add(result, "failed")

        def v2_runner_on_skipped(self, result):
            self._add(result, "skipped")

        def v2_playbook_on_stats(self, stats):
            out = {"rows": self.rows,
                   "stats": {h: stats.summarize(h) for h in stats.processed}}
            with open(os.environ["PLH_RECORD"], "w") as f:
                json.dump(out, f, default=str)
""")


@pytest.fixture(scope="module")
def lab():
    lab_dir = Path(tempfile.mkdtemp(prefix="fleetpb-", dir="/tmp"))   # short: ssh sockets
    fleetlab.up(lab_dir, len(HOSTS), 0)         # 0: free ports, retried if one is taken
    reports = {}
    try:
        for host, scenario in FAULTS:
            reports[(host, scenario)] = fleetlab.inject(lab_dir, host, scenario)
        work = lab_dir / "test"
        (work / "callbacks").mkdir(parents=True)
        (work / "callbacks" / "plh_record.py").write_text(RECORDER)
        yield {"dir": lab_dir, "work": work, "injected": reports}
    finally:
        if (lab_dir / fleetlab.STATE_FILE).exists():
            fleetlab.down(lab_dir)
        shutil.rmtree(lab_dir, ignore_errors=True)


def run(lab, playbook, *args, inventory=(), timeout=180):
    """ansible-playbook pylabhub.recovery.<playbook>, summary callback on (and the test's
    recorder). Returns (returncode, output, results, table): ``results`` is
    {host: {"facts": every fact set, "tasks": {task name: result}, "stats": recap}},
    ``table`` the fleet summary {host: {column: value}} parsed from the output."""
    record = lab["work"] / "record.json"
    if record.exists():
        record.unlink()
    env = dict(os.environ, ANSIBLE_CONFIG=str(lab["dir"] / "ansible.cfg"),
               ANSIBLE_CALLBACKS_ENABLED="pylabhub.recovery.fleet_summary,plh_record",
               ANSIBLE_CALLBACK_PLUGINS=str(lab["work"] / "callbacks"),
               PLH_RECORD=str(record), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_DEPRECATION_WARNINGS="False")
    argv = [str(PLAYBOOK), "-i", str(lab["dir"] / "inventory.ini")]
    for inv in inventory:
        argv += ["-i", str(inv)]
    argv += ["pylabhub.recovery.%s" % playbook] + list(args)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    out = proc.stdout + proc.stderr
    assert record.exists(), out
    doc = json.loads(record.read_text())
    results = {h: {"facts": {}, "tasks": {}, "stats": doc["stats"].get(h)} for h in HOSTS}
    for row in doc["rows"]:            # in order: a later result of a task name wins
        if row["host"] in results:
            results[row["host"]]["tasks"][row["task"]] = dict(row["result"], status=row["status"])
            results[row["host"]]["facts"].update(row["result"].get("ansible_facts") or {})
    return proc.returncode, out, results, summary_table(proc.stdout)


def summary_table(text):
    """The fleet_summary table: {host: {column: value}} (values as printed)."""
    if "PYLABHUB FLEET SUMMARY" not in text:
        return None
    lines = text.split("PYLABHUB FLEET SUMMARY", 1)[1].splitlines()[1:]
    header = lines[0].split()
    assert header[0] == "host", lines
    table = {}
    for line in lines[1:]:
        cells = line.split()
        if not cells or cells[0] not in HOSTS:
            break
        table[cells[0]] = dict(zip(header[1:], cells[1:]))
    return table


def table_col(table, column):
    return {host: row[column] for host, row in table.items()}


def bytes_on(lab, host):
    res = fleetlab.exec_in(lab["dir"], host, ["python", "-c", READ_BLOCKS],
                           capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def fleet_bytes(lab):
    return {host: bytes_on(lab, host) for host in HOSTS}


def protocol_words(state):
    """Everything but counters a live process may bump (heartbeats are not read)."""
    return {host: {name: {k: v for k, v in blk.items() if k != "recoveries"}
                   for name, blk in blocks.items()} for host, blocks in state.items()}


def recovery_reports(results):
    """Each host's datablock_recovery_report: what the role's one task (the
    datablock_heal action) returned and registered."""
    return {h: next(result for task, result in results[h]["tasks"].items()
                    if task.endswith("Heal every DataBlock in one call, and report"))
            for h in HOSTS}


def slot_of(lab, host, scenario):
    return lab["injected"][(host, scenario)]["slot"]


def stats(results, key):
    return {h: results[h]["stats"][key] for h in HOSTS}


# --------------------------------------------------------------------------- tests
def test_diagnose_sees_every_fault_and_changes_nothing(lab):
    before = fleet_bytes(lab)
    rc, out, reg, table = run(lab, "diagnose")
    assert rc == 0, out
    rep = {h: reg[h]["facts"]["datablock_health_report"] for h in HOSTS}

    w = slot_of(lab, "lab-01", "stuck_writer")
    blocks = {b["address"]: b for b in rep["lab-01"]["blocks"]}
    assert blocks["stuck_writer_block"]["stuck_slots"] == [w]
    assert blocks["stuck_writer_block"]["status"] == "stuck"
    assert blocks["stuck_writer_block"]["slots"][0]["action"] == "release_writer"
    assert blocks["healthy_block"]["healthy"] is True
    assert blocks["healthy_block"]["status"] == "healthy"
    assert rep["lab-01"]["unhealthy"] == ["stuck_writer_block"]

    r = slot_of(lab, "lab-02", "stuck_readers")
    (readers,) = rep["lab-02"]["blocks"]
    assert readers["stuck_slots"] == [r] and readers["dead_consumers"] == 1
    assert readers["producer_alive"] is True          # the writer waiting in DRAINING
    assert readers["slots"][0]["state"] == "DRAINING"
    assert readers["slots"][0]["action"] == "release_readers"

    (consumers,) = rep["lab-03"]["blocks"]
    assert consumers["dead_consumers"] == 3 and consumers["stuck_slots"] == []
    assert consumers["status"] == "degraded"          # dead consumers' entries: warnings
    assert len([f for f in rep["lab-03"]["findings"] if f["code"] == "dead-consumer"]) == 3

    assert rep["lab-04"]["corrupt"] == ["corruption_block"]
    (finding,) = [f for f in rep["lab-04"]["findings"] if f["source"] == "validate"]
    assert finding["code"] == "checksum-mismatch"
    assert finding["slot"] == slot_of(lab, "lab-04", "corruption")
    assert not any(r["healthy"] for r in rep.values())
    assert any("release_writer" in line for line in rep["lab-01"]["lines"])

    # read-only: not one protocol word moved, nothing changed in the recap
    assert protocol_words(fleet_bytes(lab)) == protocol_words(before)
    assert set(stats(reg, "changed").values()) == {0}, out
    assert table_col(table, "blocks") == {"lab-01": "2", "lab-02": "1", "lab-03": "1",
                                          "lab-04": "1"}
    assert table_col(table, "healthy") == {"lab-01": "1", "lab-02": "0", "lab-03": "0",
                                           "lab-04": "0"}
    assert table_col(table, "corrupt") == {"lab-01": "0", "lab-02": "0", "lab-03": "0",
                                           "lab-04": "1"}
    assert set(table_col(table, "recovered").values()) == {"0"}


def test_validate_fails_exactly_the_corrupt_host(lab):
    rc, out, reg, table = run(lab, "validate")
    assert rc != 0
    assert stats(reg, "failures") == {"lab-01": 0, "lab-02": 0, "lab-03": 0, "lab-04": 1}, out
    failed = reg["lab-04"]["tasks"]["Validate (datablock_validate)"]
    assert failed["status"] == "failed" and failed["code"] == "corrupt" and failed["valid"] is False
    assert all(reg[h]["tasks"]["Validate (datablock_validate)"]["valid"] for h in ("lab-01", "lab-02", "lab-03"))
    assert table_col(table, "corrupt") == {"lab-01": "0", "lab-02": "0", "lab-03": "0",
                                           "lab-04": "1"}
    # report-only: succeeds everywhere and says valid=false
    rc, out, reg, table = run(lab, "validate", "-e", "validate_fail_on_corruption=false")
    assert rc == 0, out
    assert reg["lab-04"]["tasks"]["Validate (datablock_validate)"]["valid"] is False
    assert table_col(table, "corrupt")["lab-04"] == "1"


def test_recover_takes_each_host_through_its_procedure_step(lab):
    steps = lab["work"] / "steps.yml"
    w, r = slot_of(lab, "lab-01", "stuck_writer"), slot_of(lab, "lab-02", "stuck_readers")
    steps.write_text(textwrap.dedent("""\
        all:
          hosts:
            lab-01: {recover_block: stuck_writer_block, recover_action: release_writer, recover_slot: %d}
            lab-02: {recover_block: stuck_readers_block, recover_action: release_readers, recover_slot: %d}
            lab-03: {recover_block: dead_consumers_block, recover_action: cleanup}
            lab-04: {recover_block: corruption_block, recover_action: validate, recover_repair: true}
        """ % (w, r)))
    before = fleet_bytes(lab)

    # check mode: every step predicted as a change, not one byte written
    rc, out, reg, table = run(lab, "recover", "--check", "--diff", inventory=[steps])
    assert rc == 0, out
    assert stats(reg, "changed") == {h: 1 for h in HOSTS}, out
    assert reg["lab-01"]["tasks"]["Release what dead holders own, or heal (datablock_recover)"]["recovery"]["dry_run"] is True
    assert protocol_words(fleet_bytes(lab)) == protocol_words(before)
    assert set(table_col(table, "recovered").values()) == {"1*"}

    rc, out, reg, table = run(lab, "recover", inventory=[steps])
    assert rc == 0, out
    rel = reg["lab-01"]["tasks"]["Release what dead holders own, or heal (datablock_recover)"]["recovery"]
    assert rel["result"] == "SUCCESS" and rel["changed"] and rel["outcomes"][0]["slot"] == w
    assert "WRITING → FREE" in rel["outcomes"][0]["message"]
    rel = reg["lab-02"]["tasks"]["Release what dead holders own, or heal (datablock_recover)"]["recovery"]
    assert rel["result"] == "SUCCESS" and "reader_count 1 → 0" in rel["outcomes"][0]["message"]
    assert reg["lab-03"]["tasks"]["Clear dead consumers (datablock_cleanup)"]["cleanup"]["cleaned"] == 3
    val = reg["lab-04"]["tasks"]["Validate, re-blessing checksums with recover_repair=true (datablock_validate)"]["validation"]
    assert val["valid"] and [x["slot"] for x in val["reblessed"]] == [
        slot_of(lab, "lab-04", "corruption")]

    after = fleet_bytes(lab)
    s = after["lab-01"]["stuck_writer_block"]["slots"][w]
    assert (s["state"], s["lock"]) == ("FREE", 0)
    assert after["lab-01"]["stuck_writer_block"]["recoveries"] >= 1
    s = after["lab-02"]["stuck_readers_block"]["slots"][r]
    # the dead reader is gone, so the live writer got through: it now writes the slot
    assert s["readers"] == 0 and s["state"] == "WRITING" and s["waiting"] == 0
    assert s["lock"] == lab["injected"][("lab-02", "stuck_readers")]["processes"][0]["pid"]
    c = after["lab-03"]["dead_consumers_block"]
    assert c["active_consumers"] == 1 and sum(1 for p in c["consumers"] if p) == 1
    assert all(x["sum_ok"] for x in after["lab-04"]["corruption_block"]["slots"])
    assert after["lab-01"]["healthy_block"] == before["lab-01"]["healthy_block"]

    # the table: one block recovered per host; health as datablock_info saw it after
    assert set(table_col(table, "recovered").values()) == {"1"}
    assert table_col(table, "blocks") == {h: "1" for h in HOSTS}
    # lab-02: release_readers leaves the dead consumer's entry (cleanup is the next step)
    assert table_col(table, "healthy") == {"lab-01": "1", "lab-02": "0", "lab-03": "1",
                                           "lab-04": "1"}
    assert set(table_col(table, "corrupt").values()) == {"0"}

    # again: nothing left to do for any step
    rc, out, reg, table = run(lab, "recover", inventory=[steps])
    assert rc == 0, out
    assert set(stats(reg, "changed").values()) == {0}, out
    assert set(table_col(table, "recovered").values()) == {"0"}


def test_validate_passes_after_recovery(lab):
    rc, out, reg, table = run(lab, "validate")
    assert rc == 0, out
    assert all(reg[h]["tasks"]["Validate (datablock_validate)"]["valid"] for h in HOSTS)
    assert set(table_col(table, "corrupt").values()) == {"0"}


def test_heal_refuses_then_forces_what_the_policy_enables(lab):
    r = slot_of(lab, "lab-02", "stuck_readers")
    writer = lab["injected"][("lab-02", "stuck_readers")]["processes"][0]["host_pid"]
    fleetlab.inject(lab["dir"], "lab-04", "corruption", name="corruption_again")
    os.kill(writer, signal.SIGSTOP)    # the live writer of lab-02 now makes no progress
    try:
        rc, out, reg, table = run(lab, "heal")
        assert rc != 0 and "host(s) left unhealthy" in out, out   # the fleet verdict
        rep = recovery_reports(reg)
        assert rep["lab-01"]["healthy"] and rep["lab-03"]["healthy"]
        (blk,) = rep["lab-02"]["blocks"]
        (refused,) = blk["refused"]
        assert refused["slot"] == r and "suspect-hung" in refused["message"], refused
        assert blk["cleaned"] == 1          # the dead reader's entry, left by recover
        assert rep["lab-02"]["unhealthy"] == ["stuck_readers_block"]
        again = {b["address"]: b for b in rep["lab-04"]["blocks"]}["corruption_again"]
        assert len(again["unrepaired"]) == 1 and again["reblessed"] == []
        assert table_col(table, "refused") == {"lab-01": "0", "lab-02": "1", "lab-03": "0",
                                               "lab-04": "0"}
        assert table_col(table, "corrupt")["lab-04"] == "1"
        assert bytes_on(lab, "lab-02")["stuck_readers_block"]["slots"][r]["lock"] != 0

        force = json.dumps({"datablock_recovery_allow_repair": True,
                            "datablock_recovery_force": [
                                {"name": "stuck_readers_block", "slot": r, "host": "lab-02",
                                 "action": "release_writer", "reason": "writer stopped"}]})
        rc, out, reg, table = run(lab, "heal", "-e", force)
        assert rc == 0, out
        rep = recovery_reports(reg)
        assert all(rep[h]["healthy"] for h in HOSTS)
        (blk,) = rep["lab-02"]["blocks"]
        (forced,) = blk["forced"]
        assert forced["slot"] == r and forced["result"] == "SUCCESS" and forced["warnings"]
        assert forced["reason"] == "writer stopped" and blk["refused"] == []
        again = {b["address"]: b for b in rep["lab-04"]["blocks"]}["corruption_again"]
        assert again["reblessed"] == [1] and again["unrepaired"] == []
        assert "FORCED" in forced["warnings"][0]
        # the heal refused lab-02's writer, then the enabled forced action released it:
        # the table counts the refusal (the run did refuse) and the block as healthy
        assert table_col(table, "refused") == {"lab-01": "0", "lab-02": "1", "lab-03": "0",
                                               "lab-04": "0"}
        assert table_col(table, "healthy") == table_col(table, "blocks")
        assert table_col(table, "recovered") == {"lab-01": "0", "lab-02": "1",
                                                 "lab-03": "0", "lab-04": "1"}
        after = fleet_bytes(lab)
        s = after["lab-02"]["stuck_readers_block"]["slots"][r]
        assert (s["state"], s["lock"]) == ("FREE", 0)
        assert all(x["sum_ok"] for x in after["lab-04"]["corruption_again"]["slots"])
    finally:
        os.kill(writer, signal.SIGCONT)
