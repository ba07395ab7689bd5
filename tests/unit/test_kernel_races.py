"""The kernel scan's races, made deterministic (docs/reliability.md section 8, target
``kernel``): a process (or its thread, or one of its fds) vanishes between two reads of
/proc that the scan makes.

The scan is paused at the chosen read by wrapping the function that makes it (``os``'s
``readlink``, ``_kernel._read`` or ``_kernel.read_proc``): the wrapper makes a real
process vanish, then makes the real read, so the answer is the kernel's own. Each case
failed (raised, or missed a holder) on a mutant that the unpaused tests never reach."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _kernel as K, _runtime as R)
from ansible_collections.pylabhub.recovery.tests.support import stand_in

# An fd-holding process: opens a decoy (fd A), then the block read-only (fd B), prints
# "A B"; on the line "close" from its stdin it closes A and answers "closed".
TWO_FDS = ("import os, sys; a = os.open('/dev/null', os.O_RDONLY);"
           " b = os.open(sys.argv[1], os.O_RDONLY); print(a, b, flush=True);"
           " sys.stdin.readline(); os.close(a); print('closed', flush=True);"
           " sys.stdin.readline()")

# A process whose leader exits (raw exit syscall, x86-64) while a thread lives on,
# holding the block: the leader is a zombie, its maps live in the thread group.
ZOMBIE_LEADER = ("import ctypes, sys, threading, time\n"
                 "from ansible_collections.pylabhub.recovery.plugins.module_utils"
                 " import _runtime as R\n"
                 "keep = R.attach(sys.argv[1])\n"
                 "threading.Thread(target=time.sleep, args=(120,)).start()\n"
                 "ctypes.CDLL(None).syscall(60, 0)\n")


@pytest.fixture
def block(shm_name):
    R.create(shm_name, capacity=2).close()
    with R.attach(shm_name, writable=False) as b:
        key = K.BlockId.of(b).key
    yield shm_name, key


def state_of(pid: int) -> str:
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def until(what: str, pred, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, what
        time.sleep(0.01)


def paused_at(monkeypatch, owner, name: str, when, vanish) -> list:
    """Wrap ``owner.name`` so that its first call for which ``when(args)`` is true runs
    ``vanish()`` first; returns a list that gets one entry when it fired."""
    real = getattr(owner, name)
    fired: list = []

    def wrapper(*args, **kwargs):
        if not fired and when(args):
            fired.append(args)
            vanish()
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, wrapper)
    return fired


def test_an_fd_closed_between_listing_and_reading_skips_that_fd_only(block, monkeypatch):
    """A process's fd list names a decoy (fd A) and the block (fd B, after it); A is
    closed between the listing and its readlink: A is skipped, B still found (``break``
    would stop there and miss the holder)."""
    name, key = block
    p = subprocess.Popen([sys.executable, "-c", TWO_FDS, "/dev/shm/" + name],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        a, b = (int(x) for x in p.stdout.readline().split())
        assert a < b

        def close_a():
            p.stdin.write(b"close\n")
            p.stdin.flush()
            assert p.stdout.readline() == b"closed\n"
        fired = paused_at(monkeypatch, K.os, "readlink",
                          lambda args: args[0] == "/proc/%d/fd/%d" % (p.pid, a), close_a)
        found = K._candidate_fds("/proc", p.pid, (), set())
        assert fired, "the scan never read fd A's link"
        assert found == {key: K.Hold(fds=(b,))}, found
    finally:
        p.kill()
        p.wait()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the raw exit syscall's number")
def test_a_thread_gone_before_its_stat_is_read_is_no_live_thread(block, monkeypatch):
    """A zombie leader whose live thread holds the block; the whole process is killed
    and reaped between the thread listing and the thread's stat read: there is no live
    thread (None), never an error."""
    name, dummy = block
    p = subprocess.Popen([sys.executable, "-c", ZOMBIE_LEADER, name], env=dict(os.environ))
    try:
        until("the leader never became a zombie", lambda: state_of(p.pid) == "Z")
        tid = [t for t in os.listdir("/proc/%d/task" % p.pid) if t != str(p.pid)]
        assert tid, "the thread is gone already"

        def kill_all():
            p.kill()
            p.wait()
        fired = paused_at(monkeypatch, K, "_read",
                          lambda args: args[0].endswith("/task/%s/stat" % tid[0]), kill_all)
        assert K._live_thread("/proc", p.pid) is None
        assert fired, "the thread's stat was never read"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_process_gone_before_its_task_list_is_read_has_no_live_thread():
    """The zombie leader reaped before its task list is read: no live thread, no error."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert K._live_thread("/proc", p.pid) is None


def test_a_zombie_reaped_before_its_stat_is_read_holds_nothing(block, monkeypatch):
    """process_hold on a zombie (its maps read empty); it is reaped before its stat is
    read: it holds nothing (a falsy Hold, not "unreadable"), never an error."""
    dummy, key = block
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    until("the child never became a zombie", lambda: state_of(p.pid) == "Z")
    fired = paused_at(monkeypatch, K, "_read",
                      lambda args: args[0] == "/proc/%d/stat" % p.pid, p.wait)
    hold = K.process_hold(p.pid, key)
    assert fired, "the zombie's stat was never read"
    assert hold is not None and not hold, hold


def test_a_holder_gone_before_its_identity_is_read_is_no_holder(block, monkeypatch):
    """direct_holder finds the block mapped by a live process, which is killed and
    reaped before its identity (status, namespaces) is read: no holder (None) -- never a
    holder with no identity."""
    name, key = block
    p = stand_in(name)

    def kill_it():
        p.send_signal(signal.SIGKILL)
        p.wait()
    try:
        fired = paused_at(monkeypatch, K, "read_proc", lambda args: args[0] == p.pid, kill_it)
        assert K.direct_holder(p.pid, key) is None
        assert fired, "the holder's identity was never read"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
