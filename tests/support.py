# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers shared by test suites and benchmarks (imported as
``ansible_collections.pylabhub.recovery.tests.support``)."""

from __future__ import annotations

import contextlib
import os
import signal


def kernel_extents(path: str, offset: int = 0, size=None) -> list:
    """The allocated parts ``(start, stop)`` of a file, or of ``offset .. offset + size``,
    as the kernel reports them (SEEK_DATA / SEEK_HOLE), walked without the engine: the
    reference tests hold the engine's reads and writes to (holes read nothing, allocate
    nothing)."""
    out = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = os.fstat(fd).st_size if size is None else offset + size
        pos = offset
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:                 # only holes from pos to the end of the file
                break
            if start >= end:
                break
            stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
            out.append((start, stop))
            pos = stop
    finally:
        os.close(fd)
    return out


class Hang(TimeoutError):
    """An operation gave no answer in time (typically: blocked opening a FIFO)."""


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Raise :class:`Hang` in the body after ``seconds`` instead of hanging forever."""
    def alarm(signum, frame):  # pylint: disable=unused-argument
        raise Hang("%s: no answer after %.0f s (hung on a FIFO?)" % (what, seconds))
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- a kill point: an operation SIGKILLed right after its k-th store -----------------------
def run_killed_after(k: int, call, refuse=None, between: bool = False,
                     timeout: float = 60.0) -> bool:
    """Run ``call()`` in a forked child that SIGKILLs itself right after its k-th store
    to a block (``Block.cas`` that succeeded, ``set``, ``add``, ``write``) or, with
    ``between``, right after its k-th before-image line, before the store it announces.
    Returns True when the kill landed, False when ``call`` finished first (it must not
    raise). ``refuse``: the name of a slot word whose first CAS the child makes fail as
    if a live process had changed it, so the step is rolled back (the rollback's stores
    count too). Shared by the kill-point sweep (tests/reliability) and the undo tests."""
    import os
    import time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _block as B, _snapshot as S)
    pid = os.fork()
    if pid == 0:          # child: never returns
        code = 3
        try:
            count = [0]

            def tick():
                count[0] += 1
                if count[0] >= k:
                    os.kill(os.getpid(), signal.SIGKILL)

            def counting(real, cas=False):
                def wrapped(*args, **kwargs):
                    out = real(*args, **kwargs)
                    if not between and (not cas or out[0]):
                        tick()
                    return out
                return wrapped
            real_cas = B.Block.cas
            refused = []

            def cas(self, fld, expected, new, base=0, table=None):
                name = getattr(fld, "name", fld)
                if name == refuse and not refused:
                    refused.append(name)
                    return False, expected ^ 0x7F       # "a live process changed it"
                return real_cas(self, fld, expected, new, base, table)
            B.Block.cas = counting(cas, cas=True)
            for meth in ("set", "add", "write"):
                setattr(B.Block, meth, counting(getattr(B.Block, meth)))
            if between:
                real_intent = S.Journal.intent

                def intent(self, ch, undoes=None):
                    seq = real_intent(self, ch, undoes)
                    tick()
                    return seq
                S.Journal.intent = intent
            call()
            code = 0
        except BaseException:  # pylint: disable=broad-except
            code = 2
        finally:
            os._exit(code)
    limit = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > limit:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the operation hung (k=%d)" % k)
        time.sleep(0.002)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the operation raised in the child (k=%d)" % k
    return False


# -- a fleet-lab-like host: new PID + mount namespaces, this process's code as PID 1 -------
NAMESPACE_HOST = ("unshare", "--mount", "--pid", "--fork", "--mount-proc",
                  "--propagation", "private", "--kill-child")

NAMESPACE_PRELUDE = '''
import ctypes, json, os, sys, time
_libc = ctypes.CDLL(None, use_errno=True)

def mount_tmpfs(target, options="mode=1777"):
    if _libc.mount(b"tmpfs", target.encode(), b"tmpfs", 2 | 4, options.encode()) != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs on " + target)

if PRIVATE_SHM:
    # like lab/fleetlab.py's _init: a private /dev/shm (and /run), mounted by PID 1 after
    # the namespace began (later than the clock granularity the scope check allows for)
    time.sleep(0.05)
    mount_tmpfs("/dev/shm")
    mount_tmpfs("/run", "mode=0755")
'''


def in_namespace_host(code: str, private_shm: bool = True, timeout: float = 120.0,
                      extra: tuple = ()) -> dict:
    """Run ``code`` as PID 1 of new PID and mount namespaces (``unshare``), like a fleet
    lab host: with ``private_shm`` a fresh tmpfs on /dev/shm and /run, else the host's
    /dev/shm inherited. The code's last stdout line must be one JSON document: returned.
    Needs root; the collection is importable through PYTHONPATH (the root conftest)."""
    import json
    import subprocess
    import sys
    source = "PRIVATE_SHM = %r\n" % private_shm + NAMESPACE_PRELUDE + code
    r = subprocess.run(list(NAMESPACE_HOST) + list(extra) + [sys.executable, "-c", source],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       check=False)
    lines = r.stdout.decode(errors="replace").strip().splitlines()
    if r.returncode != 0 or not lines:
        raise AssertionError("namespace host failed (exit %s):\n%s\n%s" % (
            r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")))
    return json.loads(lines[-1])


# -- live openers the rules must account for: a block mapped, or held by an fd alone --------
#: The program of a stand-in opener: maps the block (``/dev/shm/ARGV1``) writable, closes
#: its fd, says "ready" and holds the mapping. It records nothing in the block.
STAND_IN = ("import mmap, os, sys, time; fd = os.open('/dev/shm/' + sys.argv[1], os.O_RDWR);"
            " m = mmap.mmap(fd, 0); os.close(fd); print('ready', flush=True); time.sleep(120)")

#: The program of an fd-only opener: opens ARGV1 (a path) read-only, prints the fd's
#: number and holds it, mapping nothing.
FD_ONLY = ("import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); print(fd, flush=True);"
           " time.sleep(120)")


def stand_in(name: str):
    """A live process with block ``name`` mapped writable and nothing recorded in it,
    started and ready: it plays a process alive at a fixture's capture (a C++ producer or
    consumer), or a consumer between clearing its pid and uncounting itself. The caller
    kills it (or uses :func:`standing_in`)."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", STAND_IN, name], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


@contextlib.contextmanager
def standing_in(name: str):
    """:func:`stand_in` for the body, killed and reaped after it."""
    p = stand_in(name)
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def fd_only(path: str):
    """A live process holding ``path`` open read-only by an fd alone: (process, fd)."""
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", FD_ONLY, path], stdout=subprocess.PIPE)
    return p, int(p.stdout.readline())


def committed_block(name: str, capacity: int, stride: int, data, corrupt=None,
                    **create) -> None:
    """Create block ``name`` with every slot COMMITTED (generation 1) holding ``data(i)``
    under its checksum, the indexes as after ``capacity`` commits; slot ``corrupt`` (if
    any) holds zeros instead, under its data's checksum. ``create``: more arguments of
    ``_runtime.create`` (``evidence=True``). The block is closed on return."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _layout as L, _runtime as R)
    block = R.create(name, capacity=capacity, stride=stride, **create)
    try:
        geo = block.geo
        states = bytearray(capacity * L.SLOT_ENTRY_SIZE)
        sums = bytearray(capacity * L.CHECKSUM_ENTRY_SIZE)
        for i in range(capacity):
            chunk = data(i)
            block.write(geo.slot_data(i), chunk if i != corrupt else bytes(stride))
            e = i * L.SLOT_ENTRY_SIZE
            states[e + 12] = L.SlotState.COMMITTED
            states[e + 16:e + 24] = (1).to_bytes(8, "little")
            c = i * L.CHECKSUM_ENTRY_SIZE
            sums[c:c + L.HASH_SIZE] = L.blake2b256(chunk)
        block.write(geo.slot_table, bytes(states))
        block.write(geo.checksum_table, bytes(sums))
        block.set("write_index", capacity)
        block.set("commit_index", capacity - 1)
        block.set("total_slots_written", capacity)
    finally:
        block.close()
