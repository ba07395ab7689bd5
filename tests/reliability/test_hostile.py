"""Hostile inputs (issue 7): every entry point (attach, diagnose, validate with repair,
recover with force, cleanup, heal with repair, discovery) gets a clear one-line
RecoveryError or the right verdict, never hangs, and changes nothing: the bytes, size,
mode, owner, mtime and ctime of every file involved stay identical, no file is created,
removed, renamed, truncated or re-moded (the calls are watched), and no new entry of ours
appears in /dev/shm.

Unprivileged cases run in a child as uid/gid 65534 (``setpriv``) with /usr/bin/python3
and a world-readable copy of the core on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import textwrap

import pytest

from ansible_collections.pylabhub.recovery.tests.support import Hang, deadline
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _discovery, _engine as E, _errors, _layout as L, _registry, _runtime as R)

SHM = "/dev/shm"
PREFIX = "plhhostile_%d_" % os.getpid()
NOBODY = 65534
TRIED = {"inputs": 0, "calls": 0}

# Every entry point, each with the most dangerous arguments it takes (none are dry runs).
OPS = (
    ("attach", lambda a: B.open_block(a).close()),
    ("attach(rw)", lambda a: B.open_block(a, writable=True).close()),
    ("attach(lenient)", lambda a: B.open_block(a, strict=False).close()),
    ("diagnose", E.diagnose),
    ("validate", E.validate),
    ("validate(repair)", lambda a: E.validate(a, repair=True)),
    ("recover(all, release_writer)", lambda a: E.recover(a, "all", "release_writer")),
    ("recover(all, release_readers, force)",
     lambda a: E.recover(a, "all", "release_readers", force=True)),
    ("recover(0, force_reset, force)", lambda a: E.recover(a, 0, "force_reset", force=True)),
    ("cleanup", E.cleanup),
    ("heal(repair)", lambda a: E.heal(a, repair=True)),
)
VALIDATING = ("validate", "validate(repair)", "attach(lenient)")


def shm(name):
    return os.path.join(SHM, PREFIX + name)


# ---------------------------------------------------------------- watching for changes
def fingerprint(path):
    """Everything about one directory entry that a change could touch."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    out = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size,
           st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    if stat.S_ISLNK(st.st_mode):
        out.append(os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            out.append(hashlib.sha256(f.read()).hexdigest())
    return tuple(out)


def world(extra=()):
    """Fingerprints of all our /dev/shm entries, the files hostile links point at, and
    the set of our names in /dev/shm."""
    names = sorted(n for n in os.listdir(SHM) if n.startswith(PREFIX))
    paths = [os.path.join(SHM, n) for n in names] + ["/etc/passwd"] + list(extra)
    return {p: fingerprint(p) for p in paths}


_MUTATORS = ("mkdir", "mkfifo", "mknod", "symlink", "link", "unlink", "remove", "rmdir",
             "rename", "replace", "chmod", "fchmod", "chown", "fchown", "lchown", "truncate",
             "ftruncate", "utime")


@contextlib.contextmanager
def watched_os():
    """Record every call that could create, remove or alter a file (os.open with O_CREAT
    or O_TRUNC included) while the engine runs."""
    calls = []
    real = {n: getattr(os, n) for n in _MUTATORS if hasattr(os, n)}
    real_open = os.open

    def registry(args):
        # a mutating call registers itself as a recovery run (docs/architecture.md,
        # "Recovery processes"): the one file change it is allowed, outside any block
        return bool(args) and str(args[0]).startswith(_registry.REGISTRY_DIR + "/")

    def spy(name):
        def call(*args, **kw):
            if not registry(args):
                calls.append((name, args[:2]))
            return real[name](*args, **kw)
        return call

    def spy_open(path, flags, *args, **kw):
        if flags & (os.O_CREAT | os.O_TRUNC) and not registry((path,)):
            calls.append(("open", (path, flags)))
        return real_open(path, flags, *args, **kw)
    for n in real:
        setattr(os, n, spy(n))
    os.open = spy_open
    try:
        yield calls
    finally:
        for n, f in real.items():
            setattr(os, n, f)
        os.open = real_open


def run_all_ops(address, extra_paths=()):
    """Every op on ``address``: {op: RecoveryError or result}; asserts nothing changed."""
    before = world(extra_paths)
    out = {}
    with watched_os() as calls:
        for label, op in OPS:
            TRIED["calls"] += 1
            try:
                with deadline(10.0, "%s(%r)" % (label, address)):
                    out[label] = op(address)
            except _errors.RecoveryError as exc:
                out[label] = exc
            except Hang as exc:
                pytest.fail("%s(%r): %s" % (label, address, exc))
            except Exception as exc:   # noqa: BLE001 - the point: nothing else may escape
                pytest.fail("%s(%r) raised %s (not a RecoveryError): %s"
                            % (label, address, type(exc).__name__, exc))
    TRIED["inputs"] += 1
    assert not calls, "file-changing calls made for %r: %s" % (address, calls)
    after = world(extra_paths)
    assert after == before, "changed for %r: %s" % (address, {
        p: (before.get(p), after.get(p)) for p in set(before) | set(after)
        if before.get(p) != after.get(p)})
    return out


def assert_refused(out, codes, address, except_validating=False):
    """Every op raised one of ``codes`` with a one-line message naming the problem."""
    codes = {codes} if isinstance(codes, str) else set(codes)
    for label, got in out.items():
        if except_validating and label in VALIDATING:
            continue
        assert isinstance(got, _errors.RecoveryError), (
            "%s(%r) accepted a hostile input: %r" % (label, address, got))
        assert got.code in codes, "%s(%r): %s (%s), expected %s" % (
            label, address, got.code, got, codes)
        msg = str(got)
        assert msg and "\n" not in msg and "\r" not in msg, (
            "%s(%r): message is not one line: %r" % (label, address, msg))
        assert got.exit_code != 0 and got.to_dict()["code"] == got.code


# ---------------------------------------------------------------------- the inputs
def _make_block(name, publish=True, mode=0o600):
    blk = R.create(name, capacity=2, stride=4096, mode=mode)
    try:
        if publish:
            R.Producer(blk).publish(b"hostile-test payload")
    finally:
        blk.close()
    return os.path.join(SHM, name)


def _reseal(path, **fields):
    """Rewrite header fields and a matching layout checksum (a self-consistent lie)."""
    with open(path, "r+b") as f:
        head = bytearray(f.read(4096))
        for name, value in fields.items():
            fld = L.HEADER[name]
            head[fld.offset:fld.end] = value.to_bytes(fld.size, "little")

        def u(name):
            fld = L.HEADER[name]
            return int.from_bytes(head[fld.offset:fld.end], "little")
        head[2528:2560] = L.layout_checksum(
            u("ring_buffer_capacity"), u("physical_page_size"), u("logical_unit_size"),
            u("flexible_zone_size"), u("checksum_type"), u("policy"), u("consumer_sync_policy"))
        f.seek(0)
        f.write(bytes(head))


@pytest.fixture(scope="module")
def zoo():
    """All hostile entries in /dev/shm (and a few fds), removed afterwards."""
    made = []
    keep = []

    def add(name):
        made.append(shm(name))
        return shm(name)
    try:
        ok = _make_block(PREFIX + "ok")
        made.append(ok)
        os.symlink(ok, add("ln_block"))
        os.symlink("/etc/passwd", add("ln_passwd"))
        os.symlink("/nonexistent/plh", add("ln_dangling"))
        os.symlink(shm("ln_loop"), add("ln_loop"))
        os.symlink(SHM, add("ln_dir"))
        os.mkfifo(add("fifo"), 0o600)
        os.mkdir(add("dir"))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(add("sock"))
        keep.append(sock)
        for name, data in (("empty", b""), ("zeros", bytes(16384)),
                           ("passwd_copy", open("/etc/passwd", "rb").read()),
                           ("tiny_magic", L.MAGIC.to_bytes(4, "little")),
                           ("header_only", open(ok, "rb").read(2048))):
            with open(add(name), "wb") as f:
                f.write(data)
        # another user's block, and an unreadable one (root reads both)
        shutil.copyfile(ok, add("foreign"))
        os.chown(shm("foreign"), NOBODY, NOBODY)
        shutil.copyfile(ok, add("mode000"))
        os.chmod(shm("mode000"), 0)
        # headers claiming more than the file holds
        shutil.copyfile(ok, add("truncated"))
        os.truncate(shm("truncated"), os.path.getsize(ok) // 2)
        shutil.copyfile(ok, add("lying_capacity"))
        _reseal(shm("lying_capacity"), ring_buffer_capacity=1 << 20)
        shutil.copyfile(ok, add("lying_total"))
        _reseal(shm("lying_total"), ring_buffer_capacity=4000, total_block_size=(1 << 64) - 1)
        shutil.copyfile(ok, add("lying_stride"))
        _reseal(shm("lying_stride"), logical_unit_size=(1 << 32) - 64)
        # caught mid-creation: magic set, both hashes still zero; and before the magic
        mid = _make_block(PREFIX + "midcreation", publish=False)
        made.append(mid)
        with open(mid, "r+b") as f:
            f.seek(2496)
            f.write(bytes(64))
        premagic = _make_block(PREFIX + "premagic", publish=False)
        made.append(premagic)
        with open(premagic, "r+b") as f:
            f.write(bytes(4))
        # file descriptors for memfd: addresses
        r, w = os.pipe()
        reg = os.open(ok, os.O_RDONLY)
        garbage = os.memfd_create("plh_shm_capability")
        os.write(garbage, bytes(8192))
        notready = os.memfd_create("plh_shm_capability")
        os.write(notready, open(mid, "rb").read())
        keep += [r, w, reg, garbage, notready]
        yield {"ok": ok, "pipe": w, "regular_fd": reg, "memfd_garbage": garbage,
               "memfd_notready": notready, "sock_fd": keep[0].fileno()}
    finally:
        for item in keep:
            if isinstance(item, int):
                os.close(item)
            else:
                item.close()
        for path in reversed(made):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


NAME_CASES = [
    ("slash", "a/b", "invalid-name"),
    ("dotdot-relative", "../etc/passwd", "invalid-name"),
    ("dotdot", "..", "invalid-name"),
    ("dot", ".", "invalid-name"),
    ("dotdot-absolute", "/dev/shm/../etc/passwd", "invalid-name"),
    ("dotdot-shm", "/dev/shm/../../etc/shadow", "invalid-name"),
    ("nul", "plh\0block", "invalid-name"),
    ("nul-absolute", "/dev/shm/x\0y", "invalid-name"),
    ("too-long", "x" * 256, "invalid-name"),
    ("too-long-multibyte", "\u00e9" * 128, "invalid-name"),
    ("empty", "", "invalid-name"),
    ("memfd-malformed", "memfd:abc", "invalid-name"),
    ("memfd-extra", "memfd:1:2:3", "invalid-name"),
    ("memfd-negative", "memfd:-1:3", "invalid-name"),
    ("newline", "plh\nblock", "not-found"),
    ("escape-sequence", "plh\x1b[2Jblock", "not-found"),
    ("missing", "plhhostile_nonexistent_block", "not-found"),
    ("memfd-no-such-fd", "memfd:%d:99999" % os.getpid(), "not-found"),
    ("memfd-no-such-pid", "memfd:4194304:3", "not-found"),
]


@pytest.mark.parametrize("label,address,code", NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_hostile_names(label, address, code):
    out = run_all_ops(address)
    assert_refused(out, code, address)


def test_non_string_addresses():
    for address in (None, 3, b"/dev/shm/x", ["x"]):
        out = run_all_ops(address)
        assert_refused(out, "invalid-name", address)


UNSAFE = "unsafe-path"
ENTRY_CASES = [
    ("symlink-to-block", "ln_block", UNSAFE),
    ("symlink-to-passwd", "ln_passwd", UNSAFE),
    ("symlink-dangling", "ln_dangling", UNSAFE),
    ("symlink-loop", "ln_loop", UNSAFE),
    ("symlink-to-dir", "ln_dir", UNSAFE),
    ("fifo", "fifo", UNSAFE),
    ("directory", "dir", UNSAFE),
    ("socket", "sock", UNSAFE),
    ("empty-file", "empty", "not-a-datablock"),
    ("zeros", "zeros", "not-a-datablock"),
    ("passwd-copy", "passwd_copy", "not-a-datablock"),
    ("magic-only", "tiny_magic", "truncated"),
    ("half-header", "header_only", "truncated"),
    ("before-magic", "premagic", "not-a-datablock"),
    ("mid-creation", "midcreation", "not-ready"),
]


@pytest.mark.parametrize("label,entry,code", ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
def test_hostile_entries_in_dev_shm(zoo, label, entry, code):
    for address in (PREFIX + entry, "/" + PREFIX + entry, shm(entry)):
        out = run_all_ops(address)
        assert_refused(out, code, address)
    if code == "not-ready":
        msg = str(out["diagnose"])
        assert "being created" in msg and "retry" in msg, msg


ABS_CASES = [
    ("dev-null", "/dev/null", UNSAFE),
    ("dev-zero", "/dev/zero", UNSAFE),
    ("dev-shm-dir", "/dev/shm", UNSAFE),
    ("dev-shm-dir-slash", "/dev/shm/", UNSAFE),
    ("root-dir", "/", UNSAFE),
    ("etc-passwd", "/etc/passwd", "not-a-datablock"),
    ("proc-status", "/proc/self/status", "not-a-datablock"),
    ("proc-mem", "/proc/self/mem", ("not-a-datablock", "unsafe-path", "error")),
    ("sys-file", "/sys/kernel/mm/transparent_hugepage/enabled", "not-a-datablock"),
]


@pytest.mark.parametrize("label,address,code", ABS_CASES, ids=[c[0] for c in ABS_CASES])
def test_hostile_absolute_paths(label, address, code):
    if not os.path.exists(address):
        pytest.skip("%s does not exist here" % address)
    out = run_all_ops(address)
    assert_refused(out, code, address)


def test_hostile_memfd_addresses(zoo):
    pid = os.getpid()
    cases = [("memfd:%d:%d" % (pid, zoo["pipe"]), UNSAFE),
             ("memfd:%d:%d" % (pid, zoo["regular_fd"]), UNSAFE),
             ("memfd:%d:%d" % (pid, zoo["sock_fd"]), UNSAFE),
             ("memfd:%d:%d" % (pid, zoo["memfd_garbage"]), "not-a-datablock"),
             ("memfd:%d:%d" % (pid, zoo["memfd_notready"]), "not-ready")]
    for address, code in cases:
        out = run_all_ops(address)
        assert_refused(out, code, address)


TRUNC_CASES = [("truncated-copy", "truncated"), ("lying-capacity", "lying_capacity"),
               ("lying-total", "lying_total"), ("lying-stride", "lying_stride")]


@pytest.mark.parametrize("label,entry", TRUNC_CASES, ids=[c[0] for c in TRUNC_CASES])
def test_header_claiming_more_than_the_file(zoo, label, entry):
    """Strict entry points refuse (truncated/unsupported-layout); validate reports it as
    a finding and reads nothing past the file (a read there would be SIGBUS)."""
    address = PREFIX + entry
    out = run_all_ops(address)
    assert_refused(out, ("truncated", "unsupported-layout"), address, except_validating=True)
    for label_ in ("validate", "validate(repair)"):
        report = out[label_]
        assert isinstance(report, dict) and not report["valid"], report
        codes = {f["code"] for f in report["findings"]}
        assert "truncated" in codes or "unsupported-layout" in codes, codes
        assert not report["changed"] and not report["reblessed"]
        assert report["block"].get("capacity") is None     # geometry not trusted


def test_foreign_owner_and_unreadable_as_root(zoo):
    """Root may read another user's block and a mode-000 one; a healthy block stays
    byte-identical through every entry point, the mutating ones included."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for entry in ("foreign", "mode000"):
        out = run_all_ops(PREFIX + entry)
        for label, got in out.items():
            assert not isinstance(got, _errors.RecoveryError), (label, got)
        assert out["diagnose"]["healthy"] and out["validate"]["valid"]
        assert not out["heal(repair)"]["changed"]
        assert out["recover(0, force_reset, force)"]["result"] == "NOT_STUCK"


def test_discovery_amid_hostile_entries(zoo):
    """Listing /dev/shm with all of the above present: no hang, no error, right verdicts,
    no change."""
    TRIED["calls"] += 1
    before = world()
    with watched_os() as calls, deadline(10.0, "discover"):
        found = {e["name"]: e for e in _discovery.discover(pattern=PREFIX + "*")}
    assert not calls and world() == before
    assert found[PREFIX + "ok"]["status"] == "ok"
    assert found[PREFIX + "midcreation"]["status"] == "not-ready"
    assert found[PREFIX + "truncated"]["status"] == "truncated"
    for entry in ("ln_block", "ln_passwd", "fifo", "dir", "sock", "zeros", "premagic"):
        assert PREFIX + entry not in found, entry
    assert {PREFIX + "foreign", PREFIX + "mode000"} <= set(found)


# -------------------------------------------------------------------- unprivileged
_CHILD = textwrap.dedent("""
    import json, sys
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _block as B, _engine as E, _errors)
    ops = {
        "attach": lambda a: B.open_block(a).close(),
        "attach(rw)": lambda a: B.open_block(a, writable=True).close(),
        "diagnose": E.diagnose,
        "validate": E.validate,
        "validate(repair)": lambda a: E.validate(a, repair=True),
        "recover(all, force_reset, force)": lambda a: E.recover(a, "all", "force_reset",
                                                                 force=True),
        "cleanup": E.cleanup,
        "heal(repair)": lambda a: E.heal(a, repair=True),
    }
    out = {}
    for address in sys.argv[1:]:
        res = out[address] = {}
        for label, op in ops.items():
            try:
                op(address)
                res[label] = "ok"
            except _errors.RecoveryError as exc:
                res[label] = [exc.code, str(exc)]
            except Exception as exc:
                res[label] = ["UNHANDLED", "%s: %s" % (type(exc).__name__, exc)]
    print(json.dumps(out))
""")


@pytest.fixture
def unprivileged_python():
    """A command prefix running /usr/bin/python3 as uid/gid 65534, and the env for it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to uid 65534")
    setpriv = shutil.which("setpriv")
    if not setpriv or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs setpriv and /usr/bin/python3")
    tmp = tempfile.mkdtemp(prefix="plh-unpriv-")
    try:
        os.chmod(tmp, 0o755)
        src = os.path.dirname(os.path.abspath(B.__file__))
        dst = os.path.join(tmp, "ansible_collections", "pylabhub", "recovery", "plugins",
                           "module_utils")
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1",
               "LANG": "C.UTF-8"}
        cmd = [setpriv, "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
               "/usr/bin/python3", "-s", "-c", _CHILD]
        probe = subprocess.run(cmd[:-2] + ["-c", "import os; print(os.geteuid())"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=30, check=False)
        if probe.returncode != 0 or probe.stdout.strip() != str(NOBODY):
            pytest.skip("cannot run as uid %d here: %s" % (NOBODY, probe.stderr.strip()))
        yield cmd, env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_unprivileged_user_gets_permission_errors(zoo, unprivileged_python):
    cmd, env = unprivileged_python
    made = []
    try:
        cases = {}
        for name, mode, owner, expect in (
                ("root0600", 0o600, 0, {"permission"}),
                ("root0644", 0o644, 0, {"wrong-owner", "permission"}),
                ("root0666", 0o666, 0, {"wrong-owner"}),
                ("nobody000", 0o000, NOBODY, {"permission"})):
            path = _make_block(PREFIX + name, mode=mode)
            made.append(path)
            os.chown(path, owner, owner)
            os.chmod(path, mode)
            cases[PREFIX + name] = expect
        own = _make_block(PREFIX + "nobody0600")         # control: its own block works
        made.append(own)
        os.chown(own, NOBODY, NOBODY)
        before = world()
        proc = subprocess.run(cmd + list(cases) + [PREFIX + "nobody0600"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert world() == before, "the unprivileged run changed something"
        out = json.loads(proc.stdout)
        for address, expect in cases.items():
            TRIED["inputs"] += 1
            for label, got in out[address].items():
                TRIED["calls"] += 1
                assert got != "ok", "%s(%s) succeeded as uid %d" % (label, address, NOBODY)
                code, msg = got
                assert code in expect, "%s(%s): %s %s" % (label, address, code, msg)
                assert "\n" not in msg and address in msg
        # writable opens of someone else's readable block say so
        assert out[PREFIX + "root0666"]["heal(repair)"][0] == "wrong-owner"
        assert "owned by uid 0" in out[PREFIX + "root0666"]["diagnose"][1]
        assert set(out[PREFIX + "nobody0600"].values()) == {"ok"}, out[PREFIX + "nobody0600"]
    finally:
        for path in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def test_zz_count_hostile_inputs(figures):
    """Runs last in this module: the number of hostile inputs tried, for the doc."""
    assert TRIED["inputs"] >= 60, TRIED
    figures["hostile inputs tried"] = "%d inputs, %d entry-point calls" % (
        TRIED["inputs"], TRIED["calls"])
    print("hostile inputs tried: %(inputs)d (%(calls)d entry-point calls)" % TRIED)
