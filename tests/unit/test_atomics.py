# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomics from both providers (libatomic, and the built-in x86-64 instructions used
where no libatomic is installed): semantics on every width, exactness under real
contention between processes on a real /dev/shm word, the crash drill run on each
provider, and a clear refusal to write where no provider exists."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _atomics as A
from ansible_collections.pylabhub.recovery.plugins.module_utils._errors import (
    AtomicsUnavailable)

PROVIDERS = ["libatomic", pytest.param("builtin", marks=pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"), reason="built-in atomics are x86-64"))]

SEMANTICS_AND_CONTENTION = textwrap.dedent("""
    import ctypes, mmap, os, sys
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _atomics as A
    print(A.PROVIDER)
    buf = (ctypes.c_uint64 * 4)()
    word = ctypes.addressof(buf) + 8
    for size in (1, 2, 4, 8):
        top = (1 << 8 * size) - 1
        A.store(word, size, 5)
        assert A.load(word, size) == 5
        assert A.cas(word, size, 5, 7) == (True, 5) and A.load(word, size) == 7
        assert A.cas(word, size, 5, 9) == (False, 7) and A.load(word, size) == 7
        assert A.fetch_add(word, size, 3) == 7 and A.load(word, size) == 10
        assert A.fetch_add(word, size, -11) == 10 and A.load(word, size) == top
        assert A.cas(word, size, top, 0) == (True, top)
        assert buf[0] == 0 and buf[2] == 0, "a neighbouring word changed"
        A.store(word, 8, 0)
    # two processes hammer one shared word: fetch-add and CAS-increment loops
    path, n = sys.argv[1], int(sys.argv[2])
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, 4096)
    shared = ctypes.addressof(ctypes.c_char.from_buffer(m))
    kids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            for _ in range(n):
                A.fetch_add(shared, 8, 1)
                while True:
                    v = A.load(shared + 8, 4)
                    if A.cas(shared + 8, 4, v, v + 1)[0]:
                        break
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        assert os.waitpid(pid, 0)[1] == 0
    print(A.load(shared, 8), A.load(shared + 8, 4))
""")


def _run(provider, code, *args):
    env = dict(os.environ, PLH_ATOMICS=provider)
    return subprocess.run([sys.executable, "-c", code] + list(args), env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_semantics_and_exact_under_contention(provider, shm_name):
    path = "/dev/shm/" + shm_name
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    n = 50000
    proc = _run(provider, SEMANTICS_AND_CONTENTION, path, str(n))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[0] == ("builtin-x86_64" if provider == "builtin" else "libatomic.so.1"), lines
    assert lines[1] == "%d %d" % (2 * n, 2 * n), "lost updates: %s" % lines[1]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_crash_drill_on_each_provider(provider):
    proc = _run(provider, textwrap.dedent("""
        from ansible_collections.pylabhub.recovery.plugins.module_utils import _atomics, _drill
        r = _drill.drill(iterations=40, seed=11)
        print(_atomics.PROVIDER, r["survived"], r["iterations"], r["committed_lost"])
    """))
    assert proc.returncode == 0, proc.stderr
    name, survived, iterations, lost = proc.stdout.split()
    assert name == ("builtin-x86_64" if provider == "builtin" else "libatomic.so.1")
    assert (survived, iterations, lost) == ("40", "40", "0")


def test_no_provider_refuses_writes_but_reads(monkeypatch):
    monkeypatch.setattr(A, "_libatomic", lambda: (None, "no libatomic found"))
    monkeypatch.setattr(A, "_builtin", lambda: (None, "no built-in atomics for sparc"))
    ops, why = A._select()  # pylint: disable=protected-access
    assert ops == {} and "no libatomic found" in why and "sparc" in why
    monkeypatch.setattr(A, "_OPS", {})
    monkeypatch.setattr(A, "_WHY", why)
    import ctypes
    word = ctypes.c_uint64(42)
    assert A.load(ctypes.addressof(word), 8) == 42        # aligned plain read
    for call in (lambda: A.store(ctypes.addressof(word), 8, 1),
                 lambda: A.cas(ctypes.addressof(word), 8, 42, 1),
                 lambda: A.fetch_add(ctypes.addressof(word), 8, 1)):
        with pytest.raises(AtomicsUnavailable, match="cannot be changed atomically"):
            call()
    assert word.value == 42


def test_libatomic_is_found_without_running_ldconfig():
    """Where libatomic is installed under its usual name the dynamic loader finds it, and
    ``ctypes.util.find_library`` (which runs ``ldconfig -p`` in a subprocess: a third of a
    heal's start-up) is not called; the check can fail: it names the provider chosen."""
    import ctypes
    try:
        ctypes.CDLL("libatomic.so.1")
    except OSError:
        pytest.skip("libatomic.so.1 is not installed here")
    code = ("import sys\nfrom ansible_collections.pylabhub.recovery.plugins.module_utils "
            "import _atomics as A\nprint(A.PROVIDER, 'ctypes.util' in sys.modules, "
            "'subprocess' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("PLH_ATOMICS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=60).stdout.split()
    assert out == ["libatomic.so.1", "False", "False"]
