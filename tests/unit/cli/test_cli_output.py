"""Output that guides (issue 13), on blocks left by real processes really killed.

* The change list speaks the block's terms (state names, flags, pids with their verdict)
  and folds the tool's own claim away; a dry run prints the very change lines of the real
  run that follows, for every crash state of ``engine/helpers.py`` ``ScratchBlocks.crashed`` and of
  ``plh_crash`` (the CLI's own scenarios).
* Dry runs speak in the conditional ("would release"), real runs in the past tense: no
  past-tense verb of the vocabulary (``_wording.PAST_FORMS``) in a dry run, no
  conditional in a real run, in anything the command prints.
* A refusal is one line, printed once, naming the holder, its verdict and the exact
  command that forces it; ``--verbose`` adds the evidence; JSON carries it too.
* ``diagnose --all``/``--match``: one engine call, the exit code the worst block's.
"""

from __future__ import annotations

import os
import re
import shlex

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _wording as W
from engine.helpers import SCENARIOS, WRITER_POINTS, ScratchBlocks


@pytest.fixture
def lab(fixtures_dir):
    owner = ScratchBlocks(lambda: fixtures_dir)
    yield owner
    owner.close()


PAST = re.compile(r"(?<!would be )\b(%s)\b" % "|".join(re.escape(w) for w in W.PAST_FORMS))
CONDITIONAL = re.compile("|".join(re.escape(w) for w in W.CONDITIONAL_FORMS))


def change_lines(stdout):
    """The lines of every change list printed (a block's 'changes' section)."""
    lines, inside = [], False
    for line in stdout.splitlines():
        if line.startswith("  changes"):
            inside = not line.startswith("  changes: none")
            continue
        if inside and line.startswith("    "):
            lines.append(line)
        else:
            inside = False
    return lines


def check_tense(dry, real):
    """The dry run's text has no past tense of the vocabulary; the real run's no
    conditional."""
    dry_text, real_text = dry.stdout + dry.stderr, real.stdout + real.stderr
    assert not PAST.search(dry_text), (PAST.search(dry_text), dry)
    assert not CONDITIONAL.search(real_text), (CONDITIONAL.search(real_text), real)


def complete_scope(name):
    """Whether the kernel scan is complete for this block here (the reader and count
    rules act without force only then, or once nobody else has the block open)."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _kernel as K, _runtime as R)
    with R.attach(name, writable=False) as b:
        return K.HostScan.take().scope(K.BlockId.of(b)).complete


def dry_then_real(cli, argv):
    dry = cli(*(argv + ["--dry-run"]))
    real = cli(*argv)
    assert dry.rc == real.rc, (dry, real)
    return dry, real


# --------------------------------------------------------------------------- every crash state
def commands_for(scenario, name, slot):
    """What an operator runs on each crash state of ``ScratchBlocks.crashed``: the slot action the
    state calls for, then (on a fresh copy of the state) heal."""
    if scenario in WRITER_POINTS:
        return ["recover", name, "--slot", str(slot), "--action", "release_writer"]
    if scenario == "reader":
        return ["recover", name, "--slot", str(slot), "--action", "release_readers"]
    if scenario == "consumer":
        return ["cleanup", name]
    if scenario == "deadlock":
        return ["recover", name, "--slot", "all", "--action", "force_reset"]
    return ["heal", name]                          # draining_live_writer


@pytest.mark.parametrize("how", ["action", "heal"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dry_run_prints_the_real_runs_change_lines(cli, lab, scenario, how):
    crash = lab.crashed(scenario)
    argv = (commands_for(scenario, crash.name, crash.slot) if how == "action"
            else ["heal", crash.name])
    complete = complete_scope(crash.name)
    dry, real = dry_then_real(cli, argv)
    # a live writer behind a dead reader: released without force only where the scan is
    # complete; elsewhere refused (exit 3) after the dead consumer's entry is cleared
    assert dry.rc in ((0, 1) if complete or scenario != "draining_live_writer" else (3,)), dry
    lines = change_lines(real.stdout)
    assert lines, real                             # every crash state changes something
    assert change_lines(dry.stdout) == lines
    assert "DRY RUN" in dry.stdout and "DRY RUN" not in real.stdout
    check_tense(dry, real)
    # the block's own terms: names, not codes; each word once; no claim of ours shown
    targets = [line.split(":")[0].strip() for line in lines]
    assert len(targets) == len(set(targets)), lines
    for line in lines:
        if ".slot_state:" in line:
            assert re.search(r"slot_state: [A-Z]+ → [A-Z]+$", line), line
        if ".writer_waiting:" in line:
            assert line.endswith("Yes → No"), line
        if line.strip().startswith("header.last_error_timestamp_ns"):
            assert line.endswith("→ now"), line
    for line in lines:
        if ".write_lock:" in line or ".consumer_pid:" in line:
            assert re.search(r": \d+ \((dead|alive|suspect-hung|unknown)\) → 0$", line), line


CLI_SCENARIOS = [
    ("stuck_writer", ["recover", "{}", "--slot", "0", "--action", "release_writer"]),
    ("zombie_readers", ["recover", "{}", "--slot", "0", "--action", "release_readers"]),
    ("zombie_readers", ["recover", "{}", "--slot", "all", "--action", "force_reset"]),
    ("dead_consumers", ["cleanup", "{}"]),
    ("corrupt", ["validate", "{}", "--repair"]),
    ("corrupt", ["heal", "{}", "--repair"]),
    ("stuck_writer", ["heal", "{}"]),
    ("zombie_readers", ["heal", "{}"]),
    ("dead_consumers", ["heal", "{}"]),
]


@pytest.mark.parametrize("scenario,argv", CLI_SCENARIOS,
                         ids=["%s:%s" % (s, a[0] + ("_" + a[-1] if a[0] == "recover" else ""))
                              for s, a in CLI_SCENARIOS])
def test_dry_run_lines_and_tense_on_the_cli_scenarios(cli, crashes, names, scenario, argv):
    name = names()
    getattr(crashes, scenario)(name)
    complete = complete_scope(name)
    dry, real = dry_then_real(cli, [a.format(name) for a in argv] + ["--yes"])
    # heal after dead consumers: in a partial scope the count is kept (degraded, exit 1)
    assert dry.rc == (1 if argv[0] == "heal" and scenario == "dead_consumers"
                      and not complete else 0), dry
    lines = change_lines(real.stdout)
    assert lines and change_lines(dry.stdout) == lines, (dry, real)
    check_tense(dry, real)
    assert "would" in dry.stdout and re.search(r"\b(released|cleared|re-blessed)\b",
                                               real.stdout), real


def test_change_list_folds_the_tools_own_claim(cli, crashes, names):
    """Our pid is stored in the write lock while the release runs: the change list shows
    the dead holder -> 0 and never our pid; --verbose shows every store, the claim too."""
    name = names()
    dead = crashes.stuck_writer(name)["writer"]
    r = cli("recover", name, "--slot", "0", "--action", "release_writer", "--verbose")
    assert r.rc == 0, r
    head, _sep, stores = r.stdout.partition("every store, in order")
    claims = re.findall(r"slot\[0\]\.write_lock: %d -> (\d+)" % dead, stores)
    assert claims and int(claims[0]) not in (0, dead), r      # our pid, as recorded
    ours = claims[0]
    folded = change_lines(head)
    assert "    slot[0].write_lock: %d (dead) → 0" % dead in folded
    assert "    slot[0].slot_state: WRITING → FREE" in folded
    assert not any(re.search(r"\b%s\b" % ours, line) for line in folded), folded
    assert re.search(r"slot\[0\]\.write_lock: %s -> 0" % ours, stores), r


# --------------------------------------------------------------------------- refusals
def refusal_lines(run, pid):
    return [line for line in (run.stdout + run.stderr).splitlines()
            if "refused" in line or ("pid %d" % pid) in line]


def test_refusal_is_one_line_with_the_command(cli, crashes, names):
    name = names()
    live = crashes.live_writer(name)["writer"]
    forced = "datablock-admin recover %s --slot 0 --action release_writer --force" % name
    for extra in ([], ["--dry-run"]):
        r = cli("recover", name, "--slot", "0", "--action", "release_writer", *extra)
        assert r.rc == 3, r
        (line,) = refusal_lines(r, live)
        assert line in r.err_lines and line.startswith("datablock-admin: refused: slot 0")
        assert "pid %d, verdict alive" % live in line and line.endswith(forced), line
        assert len(line) - len(forced) < 130, line                    # short
        assert (r.stdout + r.stderr).count(forced) == 1
        assert "has the block mapped" not in r.stdout + r.stderr      # no evidence here
    v = cli("recover", name, "--slot", "0", "--action", "release_writer", "-v")
    assert v.rc == 3
    (line,) = [ln for ln in v.err_lines if "refused" in ln]
    evidence = [ln for ln in v.err_lines if ln.startswith("  evidence: pid %d: " % live)]
    # the kernel's view (issue 10: kernel truth first) is the evidence of a live holder
    assert evidence and any("(python, NSpid %d" % live in ln and "has the block mapped "
                            "read-write" in ln for ln in evidence), v
    assert (v.stdout + v.stderr).count(forced) == 1
    d = cli("diagnose", name, "--verbose")                           # the same evidence
    assert d.rc == 0 and "evidence for pid %d (alive): " % live in d.stdout, d
    assert "evidence" not in cli("diagnose", name).stdout
    j = cli("recover", name, "--slot", "0", "--action", "release_writer", "--json")
    (refusal,) = j.json["refused"]
    assert refusal["evidence"] and refusal["holder"]["evidence"]
    # the command works as printed (the operator is sure)
    argv = shlex.split(line.split("If you are sure: ", 1)[1])
    assert argv[0] == "datablock-admin"
    assert cli(*argv[1:], "--yes").rc == 0


def test_refused_readers_one_line(cli, crashes, names):
    name = names()
    reader = crashes.live_reader(name)["reader"]
    r = cli("recover", name, "--slot", "0", "--action", "release_readers")
    assert r.rc == 3
    (line,) = refusal_lines(r, reader)
    assert "pid %d (alive)" % reader in line
    assert line.endswith("datablock-admin recover %s --slot 0 --action release_readers "
                         "--force" % name), line


# --------------------------------------------------------------------------- diagnose --all
def test_diagnose_all_exit_code_is_the_worst_blocks(cli, crashes, names):
    healthy, stuck = names(), names()
    crashes.committed(healthy)
    r = cli("diagnose", "--all", "--match", names.prefix + "*")
    assert r.rc == 0, r
    crashes.stuck_writer(stuck)
    r = cli("diagnose", "--all", "--match", names.prefix + "*", "--json")
    assert r.rc == 1, r
    assert r.json["operation"] == "diagnose"
    by = {b["address"]: b["result"] for b in r.json["blocks"]}
    assert by[healthy]["healthy"] and by[stuck]["stuck_slots"] == [0]
    t = cli("diagnose", "--all", "--match", names.prefix + "*")
    assert t.rc == 1 and "2 block(s); exit 1" in t.stdout
    assert healthy in t.stdout and stuck in t.stdout
    bad = names()
    crashes.committed(bad)
    with open(os.path.join("/dev/shm", bad), "r+b") as f:      # a layout checksum byte
        f.seek(2528)
        byte = f.read(1)
        f.seek(2528)
        f.write(bytes([byte[0] ^ 0xFF]))
    t = cli("diagnose", "--all", "--match", names.prefix + "*")
    assert t.rc == 4 and "3 block(s), 1 skipped; exit 4" in t.stdout, t
    for argv, needle in ((["diagnose"], "a BLOCK or --all is required"),
                         (["diagnose", healthy, "--all"], "not both"),
                         (["diagnose", healthy, "--match", "x"], "--match needs --all"),
                         (["diagnose", "--all", "--slot", "0"], "--slot needs a BLOCK")):
        u = cli(*argv)
        assert u.rc == 2 and len(u.err_lines) == 1 and needle in u.stderr, u
