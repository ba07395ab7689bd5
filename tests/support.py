# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers shared by test suites (imported as
``ansible_collections.pylabhub.recovery.tests.support``)."""

from __future__ import annotations

import contextlib
import signal


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
