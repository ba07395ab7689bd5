"""Bad input and every documented exit code: one line on stderr (no traceback), the
documented code, the same error as JSON with --json, and not one byte changed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import plh_spec as spec
from plh_crash import DEAD_PID, read_bytes

EXIT = {"ok": 0, "findings": 1, "usage": 2, "refused": 3, "no_block": 4, "permission": 5,
        "concurrent": 6, "internal": 7}
COMMANDS = [
    ["diagnose", "{}", "--slot", "0"],
    ["recover", "{}", "--slot", "0", "--action", "release_writer"],
    ["recover", "{}", "--slot", "all", "--action", "force_reset", "--force"],
    ["cleanup", "{}"],
    ["validate", "{}"],
    ["validate", "{}", "--repair"],
    ["heal", "{}", "--repair"],
]
CMD_IDS = ["_".join(a for a in c if a != "{}").replace("--", "") for c in COMMANDS]


def shm(name):
    return os.path.join("/dev/shm", name)


def snapshot(path):
    """The bytes of a regular file; for anything else what it is (never opens a FIFO)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        return ("special", stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return read_bytes(path)


def assert_one_line_error(r, code, *needles):
    assert r.rc == code, r
    lines = r.err_lines
    assert len(lines) == 1, r
    assert lines[0].startswith("datablock-admin"), r
    assert "error:" in lines[0] or "refused:" in lines[0], r
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, r)


def run_both(cli, argv, code, *needles):
    """Human and --json: one stderr line each; JSON error document with the same code."""
    r = cli(*argv)
    assert_one_line_error(r, code, *needles)
    j = cli(*(argv + ["--json"]))
    assert_one_line_error(j, code, *needles)
    return r, j


# --------------------------------------------------------------------------- bad blocks
def _missing(crashes, names):
    return names(), None


def _foreign(crashes, names):
    name = names()
    with open(shm(name), "wb") as f:
        f.write(b"not a datablock".ljust(16384, b"\0"))
    os.chmod(shm(name), 0o600)
    return name, "magic"


def _truncated_below_header(crashes, names):
    name = names()
    crashes.committed(name)
    os.truncate(shm(name), 2048)
    return name, "2048 bytes"


def _symlink(crashes, names):
    target, name = names(), names()
    crashes.committed(target)
    os.symlink(shm(target), shm(name))
    return name, "symlink"


def _fifo(crashes, names):
    name = names()
    os.mkfifo(shm(name), 0o600)
    return name, "regular file"


def _directory(crashes, names):
    name = names()
    os.mkdir(shm(name), 0o700)
    return name, "regular file"


BAD_BLOCKS = {"missing": _missing, "foreign": _foreign,
              "truncated": _truncated_below_header, "symlink": _symlink, "fifo": _fifo,
              "directory": _directory}


@pytest.mark.parametrize("argv", COMMANDS, ids=CMD_IDS)
@pytest.mark.parametrize("kind", sorted(BAD_BLOCKS))
def test_bad_block_exit_4(cli, crashes, names, kind, argv):
    name, needle = BAD_BLOCKS[kind](crashes, names)
    before = snapshot(shm(name))
    args = [a.format(name) for a in argv]
    r, j = run_both(cli, args, EXIT["no_block"], *([needle] if needle else []))
    assert j.json["error"]["code"] in ("not-found", "not-a-datablock", "truncated",
                                       "unsafe-path", "unsupported-layout")
    assert snapshot(shm(name)) == before


def test_truncated_body_is_refused_but_validate_reports_it(cli, crashes, names):
    """A file cut after the header: every command but validate refuses it (4); validate
    attaches leniently and reports the truncation as a finding (1)."""
    name = names()
    crashes.committed(name)
    os.truncate(shm(name), 8192)
    before = read_bytes(shm(name))
    run_both(cli, ["diagnose", name], EXIT["no_block"], "truncated")
    run_both(cli, ["recover", name, "--slot", "0", "--action", "release_writer"],
             EXIT["no_block"], "truncated")
    run_both(cli, ["heal", name], EXIT["no_block"], "truncated")
    r = cli("validate", name, "--json")
    assert r.rc == EXIT["findings"], r
    assert r.json["valid"] is False and r.json["findings"][0]["code"] == "truncated"
    assert read_bytes(shm(name)) == before


@pytest.mark.parametrize("address", ["../x", "a/../../etc/passwd", "/dev/shm/../etc/passwd",
                                     "..", "x/y"])
def test_path_tricks_are_usage_errors(cli, address):
    for argv in (["diagnose", address], ["recover", address, "--slot", "0", "--action",
                                         "force_reset", "--force"], ["heal", address]):
        r, j = run_both(cli, argv, EXIT["usage"])
        assert j.json["error"]["code"] == "invalid-name"


@pytest.mark.parametrize("argv", [
    ["diagnose", "{}", "--slot", "2"],
    ["diagnose", "{}", "--slot", "-1"],
    ["recover", "{}", "--slot", "7", "--action", "release_writer"],
    ["recover", "{}", "--slot", "2", "--action", "force_reset", "--force"],
], ids=["diagnose2", "diagnose-1", "recover7", "reset2"])
def test_slot_out_of_range(cli, crashes, names, argv):
    name = names()
    crashes.stuck_writer(name)
    before = read_bytes(shm(name))
    r, j = run_both(cli, [a.format(name) for a in argv], EXIT["usage"], "out of range")
    assert j.json["error"]["code"] == "slot-out-of-range"
    assert j.json["error"]["capacity"] == 2
    assert read_bytes(shm(name)) == before


@pytest.mark.parametrize("argv", [
    [],
    ["recover", "x", "--slot", "0"],
    ["recover", "x", "--action", "release_writer"],
    ["recover", "x", "--slot", "zero", "--action", "release_writer"],
    ["recover", "x", "--slot", "0", "--action", "explode"],
    ["diagnose"],
    ["cleanup"],
    ["cleanup", "x", "--all"],
    ["validate", "x", "--match", "y*"],
    ["frobnicate"],
    ["diagnose", "x", "--bogus"],
], ids=lambda a: "_".join(a) or "nothing")
def test_argument_errors(cli, argv):
    r, j = run_both(cli, argv, EXIT["usage"])
    assert j.json["error"]["code"] == "usage"


# --------------------------------------------------------------------------- refused: 3
@pytest.mark.parametrize("argv", [
    ["recover", "{}", "--slot", "0", "--action", "release_writer"],
    ["recover", "{}", "--slot", "0", "--action", "force_reset"],
    ["recover", "{}", "--slot", "all", "--action", "force_reset"],
], ids=["release_writer", "force_reset", "force_reset_all"])
def test_live_holder_without_force_is_refused(cli, crashes, names, argv):
    name = names()
    info = crashes.live_writer(name)
    before = read_bytes(shm(name))
    args = [a.format(name) for a in argv]
    r = cli(*args)
    assert_one_line_error(r, EXIT["refused"], "refused", "pid %d" % info["writer"], "alive")
    j = cli(*(args + ["--json"]))
    assert j.rc == EXIT["refused"] and j.json["result"] == "UNSAFE"
    assert j.json["refused"][0]["holder"]["state"] == "alive"
    assert read_bytes(shm(name)) == before
    assert info["actor"].alive


def test_live_holder_with_force_is_released(cli, crashes, names):
    name = names()
    info = crashes.live_writer(name)
    r = cli("recover", name, "--slot", "0", "--action", "release_writer", "--force", "--json")
    assert r.rc == EXIT["ok"], r
    assert r.json["warnings"] and "FORCED" in r.json["warnings"][0]
    assert spec.Image.read(shm(name)).slot(0)["lock"] == 0
    assert info["actor"].alive


def test_heal_reports_but_never_forces(cli, crashes, names):
    """heal leaves a live writer alone (not stuck): nothing to do, exit 0."""
    name = names()
    crashes.live_writer(name)
    before = read_bytes(shm(name))
    r = cli("heal", name, "--json")
    assert r.rc == EXIT["ok"] and r.json["changed"] is False, r
    assert read_bytes(shm(name)) == before


# --------------------------------------------------------------------------- permission: 5
@pytest.fixture(scope="module")
def nobody_tree():
    """World-readable copies of the package and the core for uid 65534 (the venv and the
    working tree may sit where that uid cannot go); yields its PYTHONPATH."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as uid 65534 (setpriv)")
    if not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs setpriv and /usr/bin/python3")
    repo = Path(__file__).resolve().parents[3]
    top = tempfile.mkdtemp(prefix="plh-nobody-", dir="/tmp")
    shutil.copytree(str(repo / "plugins" / "module_utils"),
                    os.path.join(top, "ansible_collections", "pylabhub", "recovery", "plugins",
                                 "module_utils"), ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(str(repo / "src" / "pylabhub"), os.path.join(top, "src", "pylabhub"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(top):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2] "
                            ">= (3, 8))"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        shutil.rmtree(top, ignore_errors=True)
        pytest.skip("uid 65534 cannot run /usr/bin/python3 (>= 3.8): %s" % probe.stderr.strip())
    yield os.pathsep.join([top, os.path.join(top, "src")])
    shutil.rmtree(top, ignore_errors=True)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
          "-B", "-m", "pylabhub.recovery.cli"]


@pytest.mark.parametrize("mode,code", [(0o600, "permission"), (0o644, "wrong-owner"),
                                       (0o666, "wrong-owner")])
def test_permission_exit_5(cli, crashes, names, nobody_tree, mode, code):
    """Writes need ownership or root; reading needs only the kernel's read permission: a
    0644/0666 block of root is diagnosed by anyone, a 0600 one says whom to run as."""
    name = names()
    crashes.stuck_writer(name)
    os.chmod(shm(name), mode)
    before = read_bytes(shm(name))
    env = {"PYTHONPATH": nobody_tree, "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}
    writes = [["recover", name, "--slot", "0", "--action", "release_writer"], ["heal", name]]
    reads = [["diagnose", name], ["heal", name, "--dry-run"], ["validate", name]]
    for argv in writes + (reads if mode == 0o600 else []):
        r = cli(*argv, env=env, prefix=NOBODY)
        assert_one_line_error(r, EXIT["permission"])
        assert "run as root or as uid 0 (owner)" in r.stderr or "needs root or uid 0" in r.stderr, r
        j = cli(*(argv + ["--json"]), env=env, prefix=NOBODY)
        assert j.rc == EXIT["permission"] and j.json["error"]["code"] in ("permission", code), j
    if mode != 0o600:
        r = cli("diagnose", name, env=env, prefix=NOBODY)     # read-only: allowed
        assert r.rc == EXIT["findings"] and "stuck slot(s): 0" in r.stdout, r
        r = cli("heal", name, "--dry-run", "--json", env=env, prefix=NOBODY)
        assert r.rc == EXIT["ok"] and r.json["changed"] and r.json["dry_run"], r
    assert read_bytes(shm(name)) == before


# --------------------------------------------------------------------------- concurrent: 6
RACE = textwrap.dedent("""
    # A live process changes the word between our observation and our CAS: the first CAS
    # datablock-admin attempts finds another value (deterministic, no timing involved).
    import sys
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _block, _layout
    real = _block.Block.cas
    state = {"raced": False}

    def cas(self, field, expected, new, base=0, table=None):
        if not state["raced"]:
            state["raced"] = True
            real(self, field, expected, int(sys.argv[1]), base, table)   # the "other" process
        return real(self, field, expected, new, base, table)

    _block.Block.cas = cas
    from pylabhub.recovery.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_concurrent_change_exit_6_nothing_half_done(cli, crashes, names):
    name = names()
    crashes.stuck_writer(name)
    before = read_bytes(shm(name))
    other = DEAD_PID - 1
    r = cli("recover", name, "--slot", "0", "--action", "release_writer", "--json",
            prefix=[sys.executable, "-c", RACE, str(other)])
    assert r.rc == EXIT["concurrent"], r
    assert r.json["result"] == "FAILED" and r.json["changed"] is False
    assert len(r.err_lines) == 1 and "concurrent change" in r.err_lines[0]
    after = read_bytes(shm(name))
    # only the racing process's word differs: our step was rolled back entirely
    lock = slice(4096, 4104)
    assert int.from_bytes(after[lock], "little") == other
    assert after[:4096] + after[4104:] == before[:4096] + before[4104:]


# --------------------------------------------------------------------------- internal: 7
BOOM = textwrap.dedent("""
    import sys
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine
    def boom(*a, **k):
        raise RuntimeError("simulated bug\\nsecond line")
    _engine.diagnose = boom
    from pylabhub.recovery.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_internal_error_exit_7(cli):
    r = cli("diagnose", "whatever", prefix=[sys.executable, "-c", BOOM])
    assert_one_line_error(r, EXIT["internal"], "internal error", "RuntimeError",
                          "simulated bug\\nsecond line")
    j = cli("diagnose", "whatever", "--json", prefix=[sys.executable, "-c", BOOM])
    assert j.rc == EXIT["internal"] and j.json["error"]["code"] == "internal"
    d = cli("diagnose", "whatever", env={"PLH_DEBUG": "1"}, prefix=[sys.executable, "-c", BOOM])
    assert d.rc == EXIT["internal"] and "Traceback" in d.stderr and "RuntimeError" in d.stderr


def test_interrupt_exit_130(cli):
    prog = textwrap.dedent("""
        import sys
        from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine
        def interrupted(*a, **k):
            raise KeyboardInterrupt
        _engine.diagnose = interrupted
        from pylabhub.recovery.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    r = cli("diagnose", "x", prefix=[sys.executable, "-c", prog])
    assert r.rc == 130 and r.err_lines == ["datablock-admin: interrupted"], r


def test_exit_codes_match_the_core_constants():
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _errors as E
    assert {k: getattr(E, "EXIT_" + k.upper()) for k in EXIT} == EXIT
