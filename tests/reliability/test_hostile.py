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
import sys
import tempfile
import textwrap

import pytest

from ansible_collections.pylabhub.recovery.tests.support import Hang, deadline, kernel_extents
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
        _block as B, _discovery, _engine as E, _errors)
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
    found = _discovery.scan(sys.argv[1])
    out["scan"] = {"blocks": sorted(e["address"] for e in found["blocks"]),
                   "unreadable": found["unreadable"]}
    for address in sys.argv[2:]:
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


READS = ("attach", "diagnose", "validate")       # need only read permission


def test_unprivileged_user_least_privilege(zoo, unprivileged_python):
    """As uid 65534: root's world-readable blocks are diagnosed and validated read-only
    (never mapped, nothing changed); every write needs ownership or root; a 0600 block
    says whom to run as; the listing counts what it could not read, with the reason."""
    cmd, env = unprivileged_python
    made = []
    try:
        cases = {}
        for name, mode, owner, reads, writes in (
                ("root0600", 0o600, 0, {"permission"}, {"permission"}),
                ("root0644", 0o644, 0, {"ok"}, {"permission"}),
                ("root0666", 0o666, 0, {"ok"}, {"wrong-owner"}),
                ("nobody000", 0o000, NOBODY, {"permission"}, {"permission"})):
            path = _make_block(PREFIX + name, mode=mode)
            made.append(path)
            os.chown(path, owner, owner)
            os.chmod(path, mode)
            cases[PREFIX + name] = (reads, writes, owner)
        own = _make_block(PREFIX + "nobody0600")         # control: its own block works
        made.append(own)
        os.chown(own, NOBODY, NOBODY)
        before = world()
        proc = subprocess.run(cmd + [PREFIX + "*"] + list(cases) + [PREFIX + "nobody0600"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        assert world() == before, "the unprivileged run changed something"
        out = json.loads(proc.stdout)
        for address, (reads, writes, owner) in cases.items():
            TRIED["inputs"] += 1
            for label, got in out[address].items():
                TRIED["calls"] += 1
                expect = reads if label in READS else writes
                if got == "ok":
                    assert "ok" in expect, ("%s(%s) succeeded as uid %d"
                                            % (label, address, NOBODY))
                    continue
                code, msg = got
                assert code in expect, "%s(%s): %s %s" % (label, address, code, msg)
                assert "\n" not in msg and address in msg
                assert ("run as root or as uid %d (owner)" % owner in msg
                        or "needs root or uid %d (owner)" % owner in msg), msg
        # a write to someone else's readable block says what would work
        assert out[PREFIX + "root0666"]["heal(repair)"][0] == "wrong-owner"
        assert "changing it needs root or uid 0" in out[PREFIX + "root0666"]["heal(repair)"][1]
        assert "mode 0600, owner uid 0" in out[PREFIX + "root0600"]["diagnose"][1]
        assert set(out[PREFIX + "nobody0600"].values()) == {"ok"}, out[PREFIX + "nobody0600"]
        # the listing: what it could read, and a count (with the reason) of what it could not
        scan = out["scan"]
        assert PREFIX + "root0644" in scan["blocks"] and PREFIX + "root0600" not in scan["blocks"]
        unreadable = {os.path.basename(e["path"]) for e in scan["unreadable"]["entries"]}
        assert {PREFIX + "root0600", PREFIX + "nobody000"} <= unreadable, scan
        assert scan["unreadable"]["by_reason"].get("permission denied", 0) >= 2, scan
    finally:
        for path in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# -------------------------------------------------------------------- sparse, huge, lying
def sparse_block(path, capacity, stride, flex=0, mode=0o644):
    """A block with a valid, self-consistent header for a huge geometry, the file
    ``ftruncate``d to the claimed total: all of it a hole but the header (as pylabhub's own
    blocks are before their slots are touched). Returns the geometry."""
    name = "plhsparse_%d" % os.getpid()
    blk = R.create(name, capacity=2, stride=64)
    try:
        head = bytearray(blk.read(0, L.HEADER_SIZE))
    finally:
        blk.close()
        os.unlink(os.path.join(SHM, name))
    geo = L.Geometry(capacity, stride, flex)
    values = {"ring_buffer_capacity": capacity, "logical_unit_size": stride,
              "flexible_zone_size": flex, "total_block_size": geo.total_size}
    for key, value in values.items():
        fld = L.HEADER[key]
        head[fld.offset:fld.end] = value.to_bytes(fld.size, "little")

    def u(key):
        fld = L.HEADER[key]
        return int.from_bytes(head[fld.offset:fld.end], "little")
    head[2528:2560] = L.layout_checksum(capacity, u("physical_page_size"), stride, flex,
                                        u("checksum_type"), u("policy"),
                                        u("consumer_sync_policy"))
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, mode)
    try:
        os.ftruncate(fd, geo.total_size)
        os.pwrite(fd, bytes(head), 0)
    finally:
        os.close(fd)
    return geo


def sparse_print(path):
    """Size, allocated blocks, mtime/ctime and a hash of the allocated bytes (holes are
    skipped, so a 4 GiB sparse file costs what it holds): any change shows."""
    st = os.stat(path)
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start, stop in kernel_extents(path):
            h.update(b"@%d:" % start)
            while start < stop:
                chunk = os.pread(fd, min(1 << 20, stop - start), start)
                h.update(chunk)
                start += len(chunk)
    finally:
        os.close(fd)
    return (st.st_size, st.st_blocks, st.st_mtime_ns, st.st_ctime_ns, h.hexdigest())


# One child per private tmpfs: it mounts 64 MiB in its own mount namespace, builds hostile
# sparse blocks there and runs the CLI on each, reporting rc, output and tmpfs usage.
_PRIVATE_TMPFS = textwrap.dedent("""
    import json, os, subprocess, sys
    sys.path.insert(0, os.environ["PLH_TEST_DIR"])
    import test_hostile as T
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _layout as L
    mnt = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=1777", "plhtmpfs", mnt],
                   check=True)

    def used():
        st = os.statvfs(mnt)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    huge = os.path.join(mnt, "huge")           # 4 Mi slots x 64 B: 675 MB claimed
    T.sparse_block(huge, 4 << 20, 64)
    # a committed slot far out, its data a hole: validate must hash it as zeros (valid
    # when the stored checksum is the all-zero digest) without reading or allocating
    far = os.path.join(mnt, "far")
    geo = T.sparse_block(far, 1 << 20, 4096)
    i = 900000
    fd = os.open(far, os.O_RDWR)
    os.pwrite(fd, bytes([2]), geo.slot_entry(i) + 12)                 # COMMITTED
    os.pwrite(fd, L.blake2b256(bytes(4096)), geo.checksum_entry(i))
    os.pwrite(fd, (i + 1).to_bytes(8, "little"), 184)                 # write_index
    os.pwrite(fd, i.to_bytes(8, "little"), 192)                       # commit_index
    os.close(fd)
    bad = os.path.join(mnt, "bad")                                    # same, wrong checksum
    geo = T.sparse_block(bad, 1 << 20, 4096)
    fd = os.open(bad, os.O_RDWR)
    os.pwrite(fd, bytes([2]), geo.slot_entry(i) + 12)
    os.pwrite(fd, b"\\x01" * 32, geo.checksum_entry(i))
    os.pwrite(fd, (i + 1).to_bytes(8, "little"), 184)
    os.pwrite(fd, i.to_bytes(8, "little"), 192)
    os.close(fd)
    out = {"runs": []}
    cli = [sys.executable, "-m", "pylabhub.recovery.cli"]
    for path, argv in json.loads(sys.argv[2]):
        target = os.path.join(mnt, path)
        before = (T.sparse_print(target), used())
        p = subprocess.run(cli + [a.replace("@", target) for a in argv],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
        after = (T.sparse_print(target), used())
        out["runs"].append({"argv": argv, "path": path, "rc": p.returncode,
                            "stdout": p.stdout, "stderr": p.stderr,
                            "before": before, "after": after})
    print(json.dumps(out))
""")

# (file, argv with @ for the block, exit code, text that must appear in stdout+stderr)
SPARSE_RUNS = (
    ("huge", ["diagnose", "@"], 0, "4194304 slots not listed: plain"),
    ("huge", ["diagnose", "@", "--all-slots"], 4, "4194304 slots x 64 B"),
    ("huge", ["diagnose", "@", "--slot", "4194303"], 0, "result: healthy"),
    ("huge", ["validate", "@"], 0, "result: valid"),
    ("huge", ["validate", "@", "--repair", "--yes"], 0, "result: valid"),
    ("huge", ["heal", "@", "--dry-run"], 0, "result: healthy"),
    ("huge", ["heal", "@", "--repair", "--yes"], 0, "result: healthy"),
    ("huge", ["cleanup", "@"], 0, "result: ok"),
    ("huge", ["recover", "@", "--slot", "all", "--action", "force_reset", "--force",
              "--yes"], 4, "over the budget"),
    ("huge", ["recover", "@", "--slot", "7", "--action", "force_reset", "--force",
              "--yes"], 0, "NOT_STUCK"),
    ("huge", ["diagnose", "@", "--max-bytes", "8G", "--slot", "0"], 0, "result: healthy"),
    ("far", ["validate", "@"], 0, "result: valid"),
    ("far", ["heal", "@"], 0, "result: healthy"),
    ("far", ["validate", "@", "--max-bytes", "8K"], 4, "1048576 slots x 4096 B"),
    ("bad", ["validate", "@"], 1, "checksum-mismatch"),
    ("bad", ["validate", "@", "--repair", "--dry-run"], 0, "would re-bless the checksum of slot 900000"),
)


def _private_tmpfs_available():
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return "needs root, unshare and mount"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=30, check=False)
    return None if probe.returncode == 0 else "unshare --mount: %s" % probe.stderr.strip()


def test_sparse_huge_geometries_on_a_private_tmpfs(tmp_path):
    """A 64 MiB tmpfs of our own: blocks claiming 675 MB and 4 GiB (valid headers, sparse).
    Reads never fault pages in (diagnose/validate used to die by SIGBUS, exit 135, with the
    tmpfs full): each command gives its documented exit code and one clear line or the
    right answer, and neither the file (size, allocated blocks, bytes, times) nor the
    tmpfs usage changes, even for writing commands that found nothing to do."""
    why = _private_tmpfs_available()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(os.environ, PLH_TEST_DIR=os.path.dirname(os.path.abspath(__file__)))
    runs = [[path, argv] for path, argv, dummy, dummy2 in SPARSE_RUNS]
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private",
                           sys.executable, "-c", _PRIVATE_TMPFS, str(mnt), json.dumps(runs)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    for run, (path, argv, rc, needle) in zip(out["runs"], SPARSE_RUNS):
        TRIED["inputs"] += 1
        TRIED["calls"] += 1
        label = "%s %s" % (path, " ".join(argv))
        assert run["rc"] == rc, (label, run)
        assert needle in run["stdout"] + run["stderr"], (label, run)
        assert "Traceback" not in run["stderr"], (label, run)
        errors = [line for line in run["stderr"].splitlines() if "error:" in line]
        assert len(errors) <= 1, (label, run)
        assert run["before"] == run["after"], ("changed: file or tmpfs usage", label, run)


def test_heal_all_dry_run_over_a_million_slot_sparse_block(names_here):
    """In /dev/shm: a 1 Mi-slot sparse block (today: 90 s and +64 MiB for heal --all
    --dry-run). Slots in holes are FREE and idle, so heal examines only what is allocated:
    it answers (well within the hang guard), allocates nothing, changes nothing; a diagnosis
    lists no slot of it (none is not plain), and one of every slot (all_slots) is over the
    budget: --all skips that block by name and goes on."""
    big, small = names_here(), names_here()
    sparse_block(os.path.join(SHM, big), 1 << 20, 64)
    _make_block(small)
    before = sparse_print(os.path.join(SHM, big))
    with deadline(120.0, "heal --all --dry-run"):
        healed = E.each_block("heal", pattern=PREFIX + "*", dry_run=True)
    by = {e["address"]: e for e in healed["blocks"]}
    assert by[big]["error"] is None and by[big]["skipped"] is None
    assert by[big]["result"]["healthy"] and not by[big]["result"]["changed"]
    cost = B.cost(B.open_block(big), hashing=True)
    assert cost["slots"] == 0 and cost["total"] < 64 << 10, cost
    # a diagnosis lists the slots that are not plain (none here): the table is scanned
    # in bulk, holes unread; listing every slot is over the budget, and --all skips
    # that block by name and goes on
    diagnosed = E.each_block("diagnose", pattern=PREFIX + "*")
    by = {e["address"]: e for e in diagnosed["blocks"]}
    assert by[big]["skipped"] is None and by[big]["result"]["slots"] == []
    assert by[big]["result"]["slot_counts"]["FREE"] == 1 << 20
    diagnosed = E.each_block("diagnose", pattern=PREFIX + "*", all_slots=True)
    by = {e["address"]: e for e in diagnosed["blocks"]}
    assert by[big]["result"] is None and "1048576 slots x 64 B" in by[big]["skipped"]
    assert "\n" not in by[big]["skipped"]
    assert by[small]["result"] is not None and by[small]["skipped"] is None
    assert sparse_print(os.path.join(SHM, big)) == before
    TRIED["inputs"] += 1
    TRIED["calls"] += 2


@pytest.fixture
def names_here():
    made = []

    def new():
        name = "%ssp%d" % (PREFIX, len(made))
        made.append(os.path.join(SHM, name))
        return name
    yield new
    for path in made:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def test_truncated_between_two_commands(names_here):
    """A block shrunk after it was listed: every command gives one line (truncated, exit
    4), never SIGBUS, and writes nothing."""
    name = names_here()
    _make_block(name)
    listed = {e["address"]: e for e in _discovery.discover(PREFIX + "*")}
    assert listed[name]["status"] == "ok"
    os.truncate(os.path.join(SHM, name), 6000)
    out = run_all_ops(name)
    for label, got in out.items():
        if label in VALIDATING and not isinstance(got, _errors.RecoveryError):
            assert got is None or {f["code"] for f in got["findings"]} == {"truncated"}, (
                label, got)                      # attach(lenient) returns nothing
            continue
        assert isinstance(got, _errors.RecoveryError), (label, got)
        assert got.code == "truncated" and got.exit_code == 4, (label, got)


def test_truncated_while_mapped(names_here):
    """Shrunk while we hold it open and mapped for writing: the next write is refused
    (checked with fstat before every store) instead of a SIGBUS, and a read says the
    file shrank. What remains (a shrink between that check and the store) is a documented
    limit; pylabhub never shrinks a segment."""
    name = names_here()
    _make_block(name)
    path = os.path.join(SHM, name)
    with B.open_block(name, writable=True) as blk:
        base = blk.geo.slot_entry(1)
        ok, seen = blk.cas(L.SLOT["write_lock"], 0, 0, base)     # maps, changes nothing
        assert blk.mapped and ok and seen == 0
        os.truncate(path, 4096)
        with pytest.raises(_errors.TruncatedBlock) as info:
            blk.cas(L.SLOT["write_lock"], 0, 12345, base)
        assert "shrank to 4096 bytes" in info.value.message
        with pytest.raises(_errors.TruncatedBlock):
            blk.get(L.SLOT["slot_state"], base)
    assert os.stat(path).st_size == 4096
    TRIED["inputs"] += 1
    TRIED["calls"] += 3


# -------------------------------------------------------------------- untrusted text
ESC_TEXT = b"\x1b]0;owned\x07\x1b[2J\x1b[H\x9b31m\r\nresult: healthy\xff\xfe\xe2\x80\xae"
FORGED = "result: healthy"


def _raw_terminal_bytes(text):
    """Characters a terminal would act on (what escaping must have removed)."""
    return [ch for ch in text if (ord(ch) < 0x20 and ch not in "\n") or 0x7f <= ord(ch) < 0xa0
            or ch in "\u202e\u2028\u2029" or 0xdc80 <= ord(ch) <= 0xdcff]


def _put_text(path, offset, size, raw):
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, raw[:size - 1].ljust(size, b"\0"), offset)
    finally:
        os.close(fd)


@pytest.fixture
def hostile_text_block(names_here):
    """A block whose /dev/shm name and identity strings (hub/producer name and uid, and a
    dead consumer's name and uid) carry OSC/CSI/C1 sequences, CR LF + a forged result line,
    invalid UTF-8 and a bidi override."""
    suffix = "e\x1b[2J\x1b]0;t\x07\nresult: healthy\udcff"
    name = PREFIX + "txt_" + suffix
    path = os.path.join(SHM, name)
    _make_block(PREFIX + "txt_tmp")
    os.rename(os.path.join(SHM, PREFIX + "txt_tmp"), os.fsencode(path))
    for key in ("hub_name", "hub_uid", "producer_name", "producer_uid"):
        fld = L.HEADER[key]
        _put_text(path, fld.offset, fld.size, ESC_TEXT)
    child = subprocess.Popen(["sleep", "0"])
    child.wait()                                          # a dead pid for the consumer
    base = L.consumer_entry(0)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, child.pid.to_bytes(8, "little"), base)
        os.pwrite(fd, (1).to_bytes(4, "little"), L.HEADER["active_consumer_count"].offset)
    finally:
        os.close(fd)
    for key in ("consumer_name", "consumer_uid"):
        fld = L.CONSUMER[key]
        _put_text(path, base + fld.offset, fld.size, ESC_TEXT)
    yield name
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.fsencode(path))


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "pylabhub.recovery.cli"] + list(argv),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120, check=False,
                          env=dict(os.environ, TERM="xterm"))


def test_untrusted_text_never_reaches_the_terminal_raw(hostile_text_block):
    """list, diagnose, cleanup (change list and outcomes, dry run and real), heal and
    validate print every name and identity string escaped: no control character, escape
    sequence, bidi override or invalid UTF-8 byte comes out, and the only result line is
    ours. JSON keeps the exact values."""
    name = hostile_text_block

    def decode(raw):
        return raw.decode("utf-8", "surrogateescape")

    runs = {"list": ("list", PREFIX + "*"), "diagnose": ("diagnose", name),
            "cleanup": ("cleanup", name, "--dry-run"), "heal": ("heal", name, "--dry-run"),
            "validate": ("validate", name), "cleanup-real": ("cleanup", name),
            "heal-all": ("heal", "--all", "--match", PREFIX + "txt_*", "--max-bytes", "4K"),
            "missing": ("diagnose", name + "\x1b[2J")}
    seen = {}
    for label, argv in runs.items():
        TRIED["calls"] += 1
        p = _cli(*argv)
        out, err = decode(p.stdout), decode(p.stderr)
        assert "Traceback" not in err, (argv, err)
        assert not _raw_terminal_bytes(out + err), (argv, out, err)
        for line in (out + err).splitlines():
            assert not line.startswith(FORGED), (argv, line)
        seen[label] = out + err
    assert "\\x1b]0;owned\\x07" in seen["diagnose"]              # shown, escaped
    assert "\\x1b[2J" in seen["list"] and "\\xff" in seen["list"]
    assert "consumer" in seen["cleanup"] and "\\x1b" in seen["cleanup"]   # change list
    assert "consumer_name" in seen["cleanup-real"] and "SUCCESS" in seen["cleanup-real"]
    assert "over the budget" in seen["heal-all"]                # skipped, named, escaped
    assert "\\x1b[2J" in seen["heal-all"] and "no such block" in seen["missing"]
    j = _cli("list", PREFIX + "txt_*", "--json")
    entry = json.loads(j.stdout)["blocks"][0]
    assert entry["name"] == PREFIX + "txt_" + "e\x1b[2J\x1b]0;t\x07\nresult: healthy\udcff"
    assert entry["producer_name"].startswith("\x1b]0;owned\x07\x1b[2J")   # exact, JSON-escaped
    assert b"\x1b" not in j.stdout
    TRIED["inputs"] += 1


def test_module_msg_and_callback_escape_untrusted_text(hostile_text_block, monkeypatch):
    """The Ansible face: a module's msg and warnings show names escaped (its structured
    result keeps them exact); the fleet_summary callback escapes host names."""
    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args
    from ansible_collections.pylabhub.recovery.plugins.modules import datablock_validate
    from ansible_collections.pylabhub.recovery.plugins.callback import fleet_summary

    class Done(Exception):
        pass
    got = {"warnings": []}

    def finish(self, **kwargs):
        got.update(kwargs)
        raise Done()
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", finish)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", finish)
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, w: got["warnings"].append(w))
    with patch_module_args({"all": True, "pattern": PREFIX + "txt_*", "max_bytes": "4K"}):
        with pytest.raises(Done):
            datablock_validate.main()
    text = " ".join(got["warnings"]) + str(got.get("msg", ""))
    assert "skipped" in text and "\\x1b[2J" in text, got
    assert not _raw_terminal_bytes(text)
    assert got["blocks"][0]["address"] == hostile_text_block    # exact in the result
    with patch_module_args({"name": PREFIX + "nope\x1b]0;x\x07\n" + FORGED}):
        with pytest.raises(Done):
            datablock_validate.main()
    assert not _raw_terminal_bytes(got["msg"]) and "\n" not in got["msg"], got["msg"]

    cb = fleet_summary.CallbackModule()
    cb._hosts["evil\x1b]0;x\x07\nhost"] = {}
    table = cb.table()
    assert "evil\\x1b]0;x\\x07\\nhost" in table and not _raw_terminal_bytes(table)
    TRIED["inputs"] += 2
    TRIED["calls"] += 3


def test_zz_count_hostile_inputs(figures):
    """Runs last in this module: the number of hostile inputs tried, for the doc."""
    assert TRIED["inputs"] >= 60, TRIED
    figures["hostile inputs tried"] = "%d inputs, %d entry-point calls" % (
        TRIED["inputs"], TRIED["calls"])
    print("hostile inputs tried: %(inputs)d (%(calls)d entry-point calls)" % TRIED)
