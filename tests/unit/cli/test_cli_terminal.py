"""datablock-admin on a terminal (confirmation, colour), the progress bar, and what it
imports (never ansible; the engine only after parsing)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import plh_spec as spec
from ansible_collections.pylabhub.recovery.tests.support import committed_block
from plh_crash import read_bytes


def shm(name):
    return os.path.join("/dev/shm", name)


# --------------------------------------------------------------------------- confirmation
def test_force_on_a_terminal_asks_and_no_changes_nothing(tty_cli, crashes, names):
    name = names()
    crashes.live_writer(name)
    before = read_bytes(shm(name))
    rc, term, unused = tty_cli("recover", name, "--slot", "0", "--action", "release_writer",
                               "--force", answer="n")
    assert rc == 3, term
    assert "warning: --force" in term and "[y/N]" in term and "not confirmed" in term
    assert read_bytes(shm(name)) == before


def test_force_on_a_terminal_yes_proceeds(tty_cli, crashes, names):
    name = names()
    crashes.live_writer(name)
    rc, term, out = tty_cli("recover", name, "--slot", "0", "--action", "release_writer",
                            "--force", answer="y")
    assert rc == 0, term + out
    assert spec.Image.read(shm(name)).slot(0)["lock"] == 0


def test_yes_skips_the_question(tty_cli, crashes, names):
    name = names()
    crashes.corrupt(name)
    rc, term, out = tty_cli("validate", name, "--repair", "--yes")
    assert rc == 0, term + out
    assert "[y/N]" not in term and "warning: --repair" in term
    assert spec.Image.read(shm(name)).checksum_valid(1)


def test_repair_on_a_terminal_eof_is_no(tty_cli, crashes, names):
    name = names()
    crashes.corrupt(name)
    before = read_bytes(shm(name))
    rc, term, unused = tty_cli("heal", name, "--repair", answer="")
    assert rc == 3 and read_bytes(shm(name)) == before, term


def test_dry_run_never_asks(tty_cli, crashes, names):
    name = names()
    crashes.live_writer(name)
    rc, term, out = tty_cli("recover", name, "--slot", "0", "--action", "release_writer",
                            "--force", "--dry-run")
    assert rc == 0 and "[y/N]" not in term, term + out


def test_without_a_terminal_the_flag_is_consent(cli, crashes, names):
    """stdin is /dev/null here: no question, no hang, the warning after the result."""
    name = names()
    crashes.live_writer(name)
    r = cli("recover", name, "--slot", "0", "--action", "release_writer", "--force")
    assert r.rc == 0 and "[y/N]" not in r.stderr and "warning: --force" in r.stderr, r


# --------------------------------------------------------------------------- colour
def test_colour_only_on_a_terminal(tty_cli, cli, crashes, names):
    name = names()
    crashes.stuck_writer(name)
    rc, term, unused = tty_cli("diagnose", name, stdout_tty=True)
    assert rc == 1 and "\x1b[" in term, term
    rc, term, unused = tty_cli("diagnose", name, stdout_tty=True, env={"NO_COLOR": "1"})
    assert rc == 1 and "\x1b[" not in term
    rc, term, unused = tty_cli("diagnose", name, "--no-color", stdout_tty=True)
    assert rc == 1 and "\x1b[" not in term
    r = cli("diagnose", name)                          # a pipe
    assert r.rc == 1 and "\x1b[" not in r.stdout


# --------------------------------------------------------------------------- progress bar
def test_progress_bar_draws_and_erases():
    from pylabhub.recovery._render import ProgressBar
    stream = io.StringIO()
    progress = ProgressBar("blk", stream, delay=0.0)
    progress(1 << 20, 4 << 20)
    progress(4 << 20, 4 << 20)
    progress.close()
    text = stream.getvalue()
    assert "blk [" in text and "100%" in text and "4/4 MiB" in text
    assert text.endswith("\r\x1b[K")


def test_progress_bar_quiet_for_short_work():
    from pylabhub.recovery._render import ProgressBar
    stream = io.StringIO()
    progress = ProgressBar("blk", stream, delay=60.0)
    progress(4 << 20, 4 << 20)
    progress.close()
    assert stream.getvalue() == ""


def test_validate_feeds_the_engine_progress_callback(crashes, names):
    """The CLI hands the engine a ProgressBar when stderr is a terminal; the engine calls
    it with (done, total) bytes."""
    from pylabhub.recovery import cli
    assert cli._progress("x") is None or sys.stderr.isatty()
    name = names()
    crashes.committed(name)
    calls = []

    def record(done, total):
        calls.append((done, total))
    result = cli._engine().validate(name, progress=record)
    assert result["valid"] and calls and calls[-1][0] == calls[-1][1] > 0


# --------------------------------------------------------------------------- imports
def _modules_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join("
                          "sorted(sys.modules)))"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_cli_never_imports_ansible(crashes, names):
    name = names()
    crashes.stuck_writer(name)
    for code in ("import pylabhub.recovery.cli",
                 textwrap.dedent("""
                     from pylabhub.recovery.cli import main
                     for argv in (['list'], ['diagnose', %r], ['heal', %r, '--dry-run'],
                                  ['validate', %r, '--json']):
                         main(argv)
                 """ % (name, name, name))):
        mods = _modules_after(code)
        assert not [m for m in mods if m == "ansible" or m.startswith("ansible.")], code


#: What start-up must not load: the engine (any core module but its import-free
#: ``_contract``), the renderer, the API's types, and the heavy standard modules they use.
_CORE = "ansible_collections.pylabhub.recovery.plugins.module_utils."
_HEAVY = ("dataclasses", "inspect", "typing", "json", "ctypes", "hashlib", "mmap", "shutil",
          "pylabhub.recovery._render", "pylabhub.recovery._api")


def _heavy_after(argv):
    mods = _modules_after("import sys\nfrom pylabhub.recovery.cli import main\n"
                          "try:\n    main(%r)\nexcept SystemExit:\n    pass" % (argv,))
    return sorted(m for m in mods if m in _HEAVY or (
        m.startswith(_CORE) and m != _CORE + "_contract"))


def _commands():
    from pylabhub.recovery.cli import COMMANDS
    return sorted(COMMANDS)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["--json", "--help"]]
                         + [[c, "--help"] for c in _commands()], ids=" ".join)
def test_help_and_version_do_not_load_the_engine(argv):
    assert _heavy_after(argv) == []


#: The script pip installs as ``datablock-admin`` (pyproject: script-files), as the user
#: runs it; :func:`_launched` prepends a hook that writes the loaded modules at exit.
REPO_ROOT = Path(__file__).resolve().parents[3]
LAUNCHER = (REPO_ROOT / "src" / "bin" / "datablock-admin").read_text()
_AT_EXIT = ("import atexit, os, sys\n"
            "atexit.register(lambda: open(os.environ['PLH_MODULES'], 'w').write("
            "'\\n'.join(sorted(sys.modules))))\n")


def _launched(argv, tmp_path):
    """The modules loaded by ``datablock-admin ARGV`` (the installed script), and its run."""
    where = tmp_path / "modules"
    r = subprocess.run([sys.executable, "-c", _AT_EXIT + LAUNCHER] + list(argv),
                       capture_output=True, text=True, timeout=120, check=False,
                       env=dict(os.environ, PLH_MODULES=str(where)))
    return set(where.read_text().split()), r


def test_pip_installs_the_shipped_script():
    """pip installs src/bin/datablock-admin as it is (the interpreter line aside), not the
    console script it would generate for an entry point, which imports ``re`` (and with it
    ``enum``, ``functools``, ``collections``: a sixth of a small command's start-up). What
    the installed command imports: scripts/install-check; what this script loads: below."""
    assert LAUNCHER.startswith("#!/usr/bin/env python\n")
    assert os.access(str(REPO_ROOT / "src" / "bin" / "datablock-admin"), os.X_OK)
    with open(str(REPO_ROOT / "pyproject.toml")) as f:
        assert 'script-files = ["src/bin/datablock-admin"]' in f.read()


def test_version_does_not_even_load_argparse(tmp_path):
    """``--version`` as the installed script runs it: ``sys``, the CLI module, one line
    printed; no parser built (argparse and its gettext are a fifth of the interpreter's
    start-up: issue 14 allows twice ``python3 -c pass``), no ``re``."""
    mods, r = _launched(["--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("datablock-admin "), r
    assert not mods & {"argparse", "gettext", "locale", "re", "enum",
                       "pylabhub.recovery._render", _CORE + "_engine"}, sorted(mods)
    assert "pylabhub.recovery.cli" in mods                  # the check can fail
    mods, r = _launched(["--help"], tmp_path)
    assert r.returncode == 0 and "argparse" in mods


def test_a_command_loads_the_engine_it_needs(crashes, names):
    """The check above can fail: a command that reads a block loads the engine."""
    name = names()
    crashes.committed(name)
    assert _CORE + "_engine" in _heavy_after(["diagnose", name])


#: What a diagnosis must not load (issue 14: ``diagnose B`` within 3x and ``--slot N`` within
#: 2x of ``python3 -c pass``): the core's records are plain classes, typing is for the
#: checkers only, and hashing, mapping, journalling and threads load what they need when
#: they run (the slot hasher and its bisect: validate only); its plain command line is
#: parsed without argparse and the gettext and locale it loads (test_cli_quick_parse.py);
#: the format's named values are not ``enum``s, context managers are classes (no
#: ``contextlib``), no regular expression (``re``), no ``shlex``, ``functools`` or
#: ``collections`` (a sixth of the command together).
_NOT_FOR_DIAGNOSE = ("dataclasses", "inspect", "typing", "ast", "hashlib", "_hashlib",
                     "ctypes", "socket", "threading", "uuid", "platform", "shutil", "bisect",
                     "_bisect", _CORE + "_hashing", "argparse", "gettext", "locale",
                     "enum", "contextlib", "shlex", "functools", "collections")
#: ... but ``--json`` loads ``json``, whose decoder imports ``re`` and what ``re`` imports.
_JSON_LOADS = ("enum", "functools", "collections")


@pytest.mark.parametrize("extra", [[], ["--json"], ["--slot", "1"], ["--slot", "0"]],
                         ids=" ".join)
def test_diagnose_loads_no_heavy_module(crashes, names, extra, tmp_path):
    """As the installed script runs it; ``--json`` loads ``json``, which loads ``re``."""
    name = names()
    crashes.stuck_writer(name)
    mods, r = _launched(["diagnose", name] + extra, tmp_path)
    assert r.returncode == 1, r
    assert _CORE + "_engine" in mods and _CORE + "_kernel" in mods     # the check can fail
    allowed = _JSON_LOADS if "--json" in extra else ()
    assert sorted(m for m in _NOT_FOR_DIAGNOSE if m in mods and m not in allowed) == []
    assert ("json" in mods) == ("--json" in extra) == ("re" in mods)


#: What validate, cleanup and heal must not load: argparse and the gettext and locale it
#: brings (their plain lines are parsed without it), ``concurrent.futures`` and the
#: ``logging`` it imports (the slot hasher starts its own threads): together a third of a
#: validate's start-up (issue 14, validate against b2sum).
_NOT_FOR_WRITES = ("argparse", "gettext", "locale", "concurrent.futures", "logging")


@pytest.mark.parametrize("argv", [["validate", "{name}", "--max-bytes", "1G"],
                                  ["validate", "{name}", "--repair", "-y"],
                                  ["cleanup", "{name}", "--dry-run"], ["heal", "{name}"]],
                         ids=lambda argv: " ".join(argv[:1] + argv[2:]))
def test_validate_cleanup_and_heal_load_no_parser_and_no_pool(crashes, names, argv,
                                                              tmp_path):
    """As the installed script runs them, on a block whose 256 committed 64 KiB slots (4
    batches: the hasher's helper threads) hold one corrupt slot."""
    name = names()
    committed_block(name, 256, 64 << 10, lambda i: (b"%08d" % i) * (8 << 10), corrupt=7)
    mods, r = _launched([a.format(name=name) for a in argv], tmp_path)
    assert r.returncode in (0, 1, 3), r
    assert _CORE + "_engine" in mods                               # the check can fail
    assert (_CORE + "_hashing" in mods) == (argv[0] != "cleanup"), sorted(mods)
    assert sorted(m for m in _NOT_FOR_WRITES if m in mods) == []


def test_a_diagnosis_that_argparse_must_explain_loads_it(crashes, names):
    """The check above can fail: a command line the quick parser declines loads argparse."""
    name = names()
    crashes.stuck_writer(name)
    mods = _modules_after("import sys\nfrom pylabhub.recovery.cli import main\n"
                          "assert main(%r) == 2\n" % (["diagnose", name, "--slot", "x"],))
    assert "argparse" in mods


#: Reports, from inside the engine call, whether the cyclic garbage collector is on and
#: how many objects it tracks outside the permanent generation, then runs the CLI as the
#: program (console script: ``main()`` without arguments) or as a caller (``main(argv)``).
_GC_PROBE = textwrap.dedent("""
    import gc, sys
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine
    for op in ("diagnose", "list_blocks", "heal"):
        def probe(*a, _real=getattr(_engine, op), **k):
            sys.stderr.write("gc %s\\n" % gc.isenabled())
            return _real(*a, **k)
        setattr(_engine, op, probe)
    from pylabhub.recovery.cli import main
    mode, argv = sys.argv[1], sys.argv[2:]
    sys.argv[1:] = argv
    code = main() if mode == "program" else main(argv)
    sys.stderr.write("after %s %s\\n" % (gc.isenabled(), gc.get_freeze_count() > 0))
    sys.exit(code)
""")


@pytest.mark.parametrize("argv,collector", [
    (["diagnose", "{name}"], False), (["diagnose", "{name}", "--json"], False),
    (["list"], False), (["heal", "{name}", "--dry-run"], True)], ids=str)
def test_a_read_only_program_runs_without_the_collector(crashes, names, argv, collector):
    """As the program, diagnose and list run with the cyclic collector off and freeze what
    start-up made for the exit; a writing command runs with it on; a caller's ``main(argv)``
    leaves it as it was."""
    name = names()
    crashes.stuck_writer(name)
    argv = [a.format(name=name) for a in argv]
    for mode in ("program", "caller"):
        r = subprocess.run([sys.executable, "-c", _GC_PROBE, mode] + argv, capture_output=True,
                           text=True, timeout=120, check=False)
        seen = [line for line in r.stderr.splitlines() if line.startswith(("gc ", "after "))]
        assert r.returncode in (0, 1) and len(seen) == 2, (mode, r.stderr)
        on = collector or mode == "caller"
        frozen = mode == "program" and not collector
        assert seen[0] == "gc %s" % on and seen[-1] == "after True %s" % frozen, (mode, seen)


def test_a_heal_loads_what_it_needs(crashes, names):
    """The check above can fail: what a diagnosis leaves out is loaded when it is used (a
    heal journals with json, maps the block with ctypes and hashes with BLAKE2b, through
    the slot hasher)."""
    name = names()
    crashes.stuck_writer(name)
    mods = _modules_after("import sys\nfrom pylabhub.recovery.cli import main\n"
                          "main(['heal', %r])\n" % name)
    assert {"json", "ctypes", "_blake2", "bisect", _CORE + "_hashing"} <= mods, sorted(mods)


def test_import_of_the_api_is_cheap():
    mods = _modules_after("import pylabhub.recovery")
    assert not [m for m in mods if m in _HEAVY or m.startswith(_CORE)], sorted(mods)
    mods = _modules_after("import pylabhub.recovery\npylabhub.recovery.RecoveryResult")
    assert _CORE + "_engine" in mods and "pylabhub.recovery._api" in mods


def test_importtime_has_no_ansible():
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pylabhub.recovery.cli"],
                       capture_output=True, text=True, check=True)
    names = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
             if line.startswith("import time:")]
    assert "pylabhub.recovery.cli" in names
    assert not [n for n in names if n == "ansible" or n.startswith("ansible.")]
