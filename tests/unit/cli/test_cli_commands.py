"""datablock-admin end to end: the commands of issue 4 exactly as written, on blocks left in
real crash states by SIGKILLed processes, checked on the bytes afterwards (read back with
the spec's offsets, plh_spec); every mutating command twice (the second run changes
nothing) and under --dry-run (no byte changes, and it predicts the real run)."""

from __future__ import annotations

import os

import pytest

import plh_spec as spec
from plh_crash import read_bytes

FREE, WRITING, COMMITTED, DRAINING = spec.FREE, spec.WRITING, spec.COMMITTED, spec.DRAINING
RECOVERY_COUNT = 368          # header.recovery_actions_count (u64)


def shm(name):
    return os.path.join("/dev/shm", name)


def image(name):
    return spec.Image.read(shm(name))


def issue(command, name):
    """A command of the issue, with the block name of the test for my_datablock."""
    return [name if word == "my_datablock" else word for word in command.split()[1:]]


def same_except(before, after, *ranges):
    """Bytes are equal outside the (offset, size) ranges."""
    assert len(before) == len(after)
    b, a = bytearray(before), bytearray(after)
    for off, size in ranges:
        b[off:off + size] = a[off:off + size] = bytes(size)
    return b == a


# --------------------------------------------------------------------------- issue commands
def test_diagnose_slot_0_stuck_writer(cli, crashes, names):
    name = names()
    dead = crashes.stuck_writer(name)["writer"]
    before = read_bytes(shm(name))
    r = cli(*issue("datablock-admin diagnose my_datablock --slot 0", name))
    assert r.rc == 1, r                                   # findings: a stuck slot
    head = next(line for line in r.stdout.splitlines() if "SLOT" in line)
    for column in ("STATE", "WRITE_LOCK", "READER_COUNT", "WRITER_WAITING", "IS_STUCK",
                   "STUCK FOR", "REASON"):
        assert column in head
    row = next(line for line in r.stdout.splitlines() if line.strip().startswith("0 "))
    assert "WRITING" in row and "%d (dead)" % dead in row and "Yes" in row
    assert "recover %s --slot 0 --action release_writer" % name in r.stdout
    assert r.stderr == ""
    assert read_bytes(shm(name)) == before                # read-only

    j = cli("diagnose", name, "--slot", "0", "--json")
    assert j.rc == 1 and j.json["stuck_slots"] == [0] and len(j.json["slots"]) == 1
    assert j.json["slots"][0]["writer"]["state"] == "dead"


def test_diagnose_healthy_exit_0_and_slot_all(cli, crashes, names):
    name = names()
    crashes.committed(name)
    r = cli("diagnose", name, "--slot", "0")
    assert r.rc == 0, r
    assert "healthy" in r.stdout and "NOT HEALTHY" not in r.stdout
    j = cli("diagnose", name, "--slot", "all", "--json")
    assert j.rc == 0 and j.json["healthy"] is True and len(j.json["slots"]) == 2


def test_recover_release_writer(cli, crashes, names):
    name = names()
    crashes.stuck_writer(name)
    old = image(name)
    assert old.slot(0)["state"] == WRITING and old.slot(0)["lock"]
    r = cli(*issue("datablock-admin recover my_datablock --slot 0 --action release_writer",
                   name))
    assert r.rc == 0, r
    assert "SUCCESS" in r.stdout and "slot[0].write_lock" in r.stdout
    new = image(name)
    s0 = new.slot(0)
    assert (s0["lock"], s0["state"], s0["waiting"], s0["readers"]) == (0, FREE, 0, 0)
    assert new.u(RECOVERY_COUNT, 8) == old.u(RECOVERY_COUNT, 8) + 1
    assert new.write_index == 2 and new.commit_index == 1       # the dead claim rolled back
    assert new.slot(1) == old.slot(1) and new.slot_data(1) == old.slot_data(1)
    assert new.checksum_valid(1)


def test_recover_release_readers_force(cli, crashes, names):
    name = names()
    crashes.zombie_readers(name, readers=3)
    assert image(name).slot(0)["readers"] == 3
    r = cli(*issue("datablock-admin recover my_datablock --slot 0 --action release_readers "
                   "--force", name))
    assert r.rc == 0, r
    assert "warning" in r.stderr and "--force" in r.stderr    # the flag is the consent
    s0 = image(name).slot(0)
    assert (s0["readers"], s0["state"], s0["lock"]) == (0, COMMITTED, 0)
    assert image(name).checksum_valid(0)


def test_recover_release_readers_force_on_a_live_reader(cli, crashes, names):
    name = names()
    live = crashes.live_reader(name)
    r = cli("recover", name, "--slot", "0", "--action", "release_readers")
    assert r.rc == 3, r                                          # refused without --force
    assert image(name).slot(0)["readers"] == 1
    r = cli("recover", name, "--slot", "0", "--action", "release_readers", "--force", "--json")
    assert r.rc == 0, r
    assert r.json["warnings"] and "FORCED" in r.json["warnings"][0]
    assert image(name).slot(0)["readers"] == 0
    assert live["actor"].alive


def test_cleanup(cli, crashes, names):
    name = names()
    info = crashes.dead_consumers(name, dead=2)
    old = image(name)
    assert old.active_consumers == 3
    r = cli(*issue("datablock-admin cleanup my_datablock", name))
    assert r.rc == 0, r
    new = image(name)
    for k in (0, 1):
        assert new.consumer(k) == {"pid": 0, "heartbeat_ns": 0, "uid": "", "name": ""}
        assert new.consumer_evidence(k) == {"pid": 0, "start": 0, "reading": 0}
    assert new.consumer(2) == old.consumer(2) and new.consumer(2)["pid"] == info["live"]
    # the count rule: lowered only where the scan is complete (else kept, reported)
    assert new.active_consumers == (1 if complete_scope(name) else 3)
    assert new.u(RECOVERY_COUNT, 8) == old.u(RECOVERY_COUNT, 8) + 2


def test_validate(cli, crashes, names):
    bad, good = names(), names()
    crashes.corrupt(bad, slot=1)
    crashes.committed(good)
    before = read_bytes(shm(bad))
    r = cli(*issue("datablock-admin validate my_datablock", bad))
    assert r.rc == 1, r
    assert "checksum-mismatch" in r.stdout and "slot 1" in r.stdout
    assert read_bytes(shm(bad)) == before
    r = cli(*issue("datablock-admin validate my_datablock", good))
    assert r.rc == 0, r
    assert "valid" in r.stdout


def test_validate_repair(cli, crashes, names):
    name = names()
    crashes.corrupt(name, slot=1)
    old = image(name)
    assert not old.checksum_valid(1) and old.checksum_valid(0)
    r = cli(*issue("datablock-admin validate my_datablock --repair", name))
    assert r.rc == 0, r
    assert "warning" in r.stderr and "--repair" in r.stderr
    new = image(name)
    assert new.checksum_valid(1) and new.slot_data(1) == old.slot_data(1)
    assert new.checksum(0) == old.checksum(0) and new.slot(1)["lock"] == 0
    geo = old.geo
    assert same_except(old.data, new.data, (geo["checksums"] + 33, 33), (RECOVERY_COUNT, 8),
                       (304, 8))


def test_list(cli, crashes, names):
    a, b = names(), names()
    crashes.stuck_writer(a)
    crashes.committed(b)
    r = cli("list", names.prefix + "*")
    assert r.rc == 0, r
    assert a in r.stdout and b in r.stdout
    j = cli("list", names.prefix + "*", "--json")
    assert sorted(e["address"] for e in j.json["blocks"]) == sorted([a, b])
    assert {e["status"] for e in j.json["blocks"]} == {"ok"}
    assert cli("list", names.prefix + "nothing*").stdout.strip() == "no DataBlock found"


def test_heal_one_block(cli, crashes, names):
    name = names()
    crashes.stuck_writer(name)
    r = cli("heal", name, "--json")
    assert r.rc == 0, r
    assert r.json["healthy"] is True and r.json["changed"] is True
    s0 = image(name).slot(0)
    assert (s0["lock"], s0["state"]) == (0, FREE)


def test_heal_all_with_match(cli, crashes, names):
    sw, dc, co = names(), names(), names()
    crashes.stuck_writer(sw)
    crashes.dead_consumers(dc)
    crashes.corrupt(co)
    r = cli("heal", "--all", "--match", names.prefix + "*", "--json")
    assert r.rc == 1, r                         # corruption is left without --repair
    j = r.json                                  # exactly the engine's each_block document
    assert (j["operation"], j["pattern"], j["dry_run"], j["changed"], j["ok"]) == (
        "heal", names.prefix + "*", False, True, True)    # ok: nothing refused or failed
    by = {b["address"]: b for b in j["blocks"]}
    assert set(by) == {sw, dc, co}
    assert all(b["status"] == "ok" and b["error"] is None and b["skipped"] is None
               and b["result"]["block"]["address"] == a for a, b in by.items())
    complete = complete_scope(dc)
    assert by[sw]["result"]["healthy"]
    assert by[dc]["result"]["health"] == ("healthy" if complete else "degraded")
    assert not by[co]["result"]["healthy"]
    assert image(dc).active_consumers == (1 if complete else 3)
    r = cli("heal", "--all", "--match", names.prefix + "*", "--repair")
    assert r.rc == (0 if complete else 1), r        # dc stays degraded (count kept)
    assert image(co).checksum_valid(1)
    assert "3 block(s)" in r.stdout


def test_validate_all_and_cleanup_all(cli, crashes, names):
    a, b = names(), names()
    crashes.dead_consumers(a)
    crashes.corrupt(b)
    r = cli("validate", "--all", "--match", names.prefix + "*", "--json")
    assert r.rc == 1 and r.json["operation"] == "validate" and r.json["ok"] is False
    assert [x["result"]["valid"] for x in sorted(r.json["blocks"], key=lambda x: x["address"])] \
        == [True, False]
    r = cli("cleanup", "--all", "--match", names.prefix + "*", "--json")
    assert r.rc == 0 and len(r.json["blocks"]) == 2
    assert r.json["changed"] is True and r.json["ok"] is True
    r = cli("cleanup", "--all", "--match", names.prefix + "*", "--json", "--dry-run")
    assert r.rc == 0 and r.json["dry_run"] is True and r.json["changed"] is False


def test_all_without_a_match_is_an_empty_document(cli, names):
    r = cli("heal", "--all", "--match", names.prefix + "-none-*", "--json")
    assert r.rc == 0 and r.json["blocks"] == [] and r.json["ok"] is True
    r = cli("heal", "--all", "--match", names.prefix + "-none-*")
    assert r.rc == 0 and r.stdout.strip() == "no DataBlock found"


def test_global_options_before_the_command(cli, crashes, names):
    name = names()
    crashes.committed(name)
    r = cli("--json", "--no-color", "diagnose", name)
    assert r.rc == 0 and r.json["operation"] == "diagnose"


def test_version(cli, repo_root):
    import re
    r = cli("--version")
    assert r.rc == 0
    version = re.search(r'__version__ = "([^"]+)"',
                        (repo_root / "src/pylabhub/recovery/_version.py").read_text()).group(1)
    assert r.stdout.split()[:2] == ["datablock-admin", version]


def test_help_documents_exit_codes(cli):
    """The exit-code table lives in 'datablock-admin --help' only; every subcommand's help
    points there instead of repeating it."""
    r = cli("--help")
    assert r.rc == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "6 ", "7 ", "130 "):
        assert "\n  " + code in r.stdout, code
    from pylabhub.recovery.cli import COMMANDS
    for command in COMMANDS:
        r = cli(command, "--help")
        assert r.rc == 0
        assert "exit codes: see 'datablock-admin --help'" in r.stdout, command
        assert "exit codes:\n" not in r.stdout and "\n  130" not in r.stdout, command
        assert not any(line.startswith("  %d    " % code) for code in range(8)
                       for line in r.stdout.splitlines()), command


def test_help_documents_every_option_of_every_subcommand(cli):
    """Each subcommand's --help lists each of its own options with a line of help (none
    bare), and recover's says what each action means."""
    from pylabhub.recovery.cli import COMMANDS, build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")   # the subparsers
    for command in COMMANDS:
        text = cli(command, "--help").stdout
        for action in sub.choices[command]._actions:
            what = action.option_strings or action.dest
            assert action.help and action.help.strip(), (command, what)
            for flag in action.option_strings:
                assert flag in text, (command, flag)
    text = cli("recover", "--help").stdout
    for action in ("release_writer", "release_readers", "force_reset"):
        assert any(line.strip().startswith(action + " ") for line in text.splitlines()), action


# --------------------------------------------------------------------------- twice, dry run
def _prepare(crashes, scenario, name):
    getattr(crashes, scenario)(name)


MUTATIONS = [
    ("stuck_writer", ["recover", "{}", "--slot", "0", "--action", "release_writer"]),
    ("stuck_writer", ["recover", "{}", "--slot", "all", "--action", "force_reset"]),
    ("zombie_readers", ["recover", "{}", "--slot", "0", "--action", "release_readers",
                        "--force"]),
    ("zombie_readers", ["recover", "{}", "--slot", "0", "--action", "release_readers"]),
    ("dead_consumers", ["cleanup", "{}"]),
    ("corrupt", ["validate", "{}", "--repair"]),
    ("stuck_writer", ["heal", "{}"]),
    ("zombie_readers", ["heal", "{}"]),
    ("corrupt", ["heal", "{}", "--repair"]),
]
IDS = ["%s:%s" % (s, "_".join(a for a in argv[2:] if a not in ("--slot", "--action")) or argv[0])
       for s, argv in MUTATIONS]


@pytest.mark.parametrize("scenario,argv", MUTATIONS, ids=IDS)
def test_every_mutation_twice(cli, crashes, names, scenario, argv):
    name = names()
    _prepare(crashes, scenario, name)
    args = [a.format(name) for a in argv] + ["--json"]
    first = cli(*args)
    assert first.rc == 0, first
    assert first.json["changed"] is True
    after_first = read_bytes(shm(name))
    second = cli(*args)
    assert second.rc == 0, second
    assert second.json["changed"] is False and second.json["changes"] == []
    assert read_bytes(shm(name)) == after_first


@pytest.mark.parametrize("scenario,argv", MUTATIONS, ids=IDS)
def test_dry_run_changes_no_byte_and_predicts(cli, crashes, names, scenario, argv):
    name = names()
    _prepare(crashes, scenario, name)
    args = [a.format(name) for a in argv] + ["--json"]
    before = read_bytes(shm(name))
    dry = cli(*(args + ["--dry-run"]))
    assert dry.rc == 0, dry
    assert dry.json["dry_run"] is True and dry.json["changed"] is True
    assert read_bytes(shm(name)) == before
    human = cli(*([a.format(name) for a in argv] + ["--dry-run"]))
    assert "DRY RUN" in human.stdout and read_bytes(shm(name)) == before
    real = cli(*args)
    assert real.rc == 0 and real.json["dry_run"] is False
    assert [c["target"] for c in dry.json["changes"]] == [c["target"] for c in real.json["changes"]]


@pytest.mark.parametrize("argv", [["diagnose", "{}"], ["diagnose", "{}", "--slot", "0"],
                                  ["validate", "{}"], ["list", "{}"]])
def test_read_only_commands_twice(cli, crashes, names, argv):
    name = names()
    crashes.stuck_writer(name)
    before = read_bytes(shm(name))
    args = [a.format(name) for a in argv] + ["--json"]
    one, two = cli(*args), cli(*args)
    assert one.rc == two.rc
    assert read_bytes(shm(name)) == before


# --------------------------------------------------------------------------- addresses, --all
def test_block_by_path(cli, crashes, names):
    name = names()
    crashes.stuck_writer(name)
    r = cli("diagnose", shm(name), "--json")
    assert r.rc == 1 and r.json["block"]["kind"] == "path" and r.json["stuck_slots"] == [0]
    r = cli("recover", shm(name), "--slot", "0", "--action", "release_writer")
    assert r.rc == 0 and image(name).slot(0)["lock"] == 0


MEMFD_HOLDER = """
import os, signal, sys
data = open(sys.argv[1], "rb").read()
fd = os.memfd_create(sys.argv[2])
os.write(fd, data)
print(fd, flush=True)
while True:
    signal.pause()
"""


def test_block_by_memfd_address(cli, crashes, names):
    """A memfd-backed block (pylabhub's newer channels): list prints memfd:<pid>:<fd>, and
    that address works in every command."""
    import subprocess
    import sys
    source = names()
    crashes.stuck_writer(source)
    holder = subprocess.Popen([sys.executable, "-c", MEMFD_HOLDER, shm(source), "plh_memfd"],
                              stdout=subprocess.PIPE, text=True)
    try:
        fd = int(holder.stdout.readline())
        address = "memfd:%d:%d" % (holder.pid, fd)
        r = cli("list", address, "--json")
        assert [(b["address"], b["kind"], b["name"]) for b in r.json["blocks"]] == [
            (address, "memfd", "plh_memfd")]
        assert address in cli("list", address).stdout
        r = cli("diagnose", address, "--json")
        assert r.rc == 1 and r.json["block"]["kind"] == "memfd" and r.json["stuck_slots"] == [0]
        r = cli("recover", address, "--slot", "0", "--action", "release_writer", "--json")
        assert r.rc == 0 and r.json["changed"], r
        assert cli("diagnose", address).rc == 0
        assert image(source).slot(0)["state"] == WRITING     # the memfd is its own copy
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_all_reports_a_bad_block_and_goes_on(cli, crashes, names):
    good, bad = names(), names()
    crashes.stuck_writer(good)
    crashes.committed(bad)
    path = shm(bad)
    with open(path, "r+b") as f:                     # one layout checksum byte flipped
        f.seek(2528)
        byte = f.read(1)
        f.seek(2528)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = read_bytes(path)
    r = cli("heal", "--all", "--match", names.prefix + "*", "--json")
    assert r.rc == 4, r                 # a skipped block counts as "no usable block" (4)
    by = {b["address"]: b for b in r.json["blocks"]}
    assert by[bad]["status"] == "unsupported-layout" and by[bad]["result"] is None
    assert "layout checksum" in by[bad]["skipped"] and by[bad]["error"] is None
    assert by[good]["result"]["healthy"] and r.json["ok"] is True
    assert len(r.err_lines) == 1 and "skipped" in r.err_lines[0] and bad in r.err_lines[0]
    assert "layout checksum" in r.err_lines[0]
    assert image(good).slot(0)["lock"] == 0 and read_bytes(path) == before
    r = cli("validate", "--all", "--match", names.prefix + "*", "--json")
    assert r.rc == 1                    # validate is never skipped: the header is a finding
    by = {b["address"]: b["result"] for b in r.json["blocks"]}
    assert by[good]["valid"] and not by[bad]["valid"]
    assert by[bad]["findings"][0]["code"] == "unsupported-layout"
    h = cli("heal", "--all", "--match", names.prefix + "*")
    assert h.rc == 4 and "2 block(s), 1 skipped; exit 4" in h.stdout


def test_all_exit_code_of_an_entry():
    """--all: an entry's error gives the exit code its error class carries (exit_code_for
    reads the class hierarchy, Declined - the CLI's confirmation answered no - included);
    a skipped entry gives 4."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _errors
    for cls in (_errors.WrongOwner, _errors.UnsupportedLayout, _errors.ConcurrentChange,
                _errors.InvalidName, _errors.AtomicsUnavailable):
        assert _errors.exit_code_for(cls.code) == cls.exit_code
    assert _errors.exit_code_for("internal") == _errors.EXIT_INTERNAL
    assert _errors.exit_code_for("no-such-code") == _errors.EXIT_INTERNAL
    from pylabhub.recovery import cli as cli_module
    assert _errors.exit_code_for(_errors.Declined.code) == _errors.EXIT_REFUSED
    entry = {"address": "x", "status": "ok", "result": None, "skipped": None,
             "error": {"code": "permission", "message": "x: permission denied"}}
    assert cli_module.entry_exit_code("heal", entry) == _errors.EXIT_PERMISSION
    entry.update(error=None, skipped="header not sound: truncated")
    assert cli_module.entry_exit_code("heal", entry) == _errors.EXIT_NO_BLOCK


def complete_scope(name):
    """Whether the kernel scan is complete for this block here (the reader and count
    rules act without force only then, or once nobody else has the block open)."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _kernel as K, _runtime as R)
    with R.attach(name, writable=False) as b:
        return K.HostScan.take().scope(K.BlockId.of(b)).complete
