"""A writer in its own PID namespace (a container) holds a slot: recovery run from the
outside must not release it, though the pid number it recorded names another (or no)
process out here. Real namespaces (unshare), a real live writer, then a real SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E
from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R

from .helpers import file_bytes

WRITER = """
import sys, time
from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
b = R.attach(sys.argv[1])
p = R.Producer(b)
ws = p.acquire()
print(ws.index, flush=True)
time.sleep(120)
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare(1) for a PID namespace")


def test_writer_in_another_pid_namespace_is_never_released(shm_name):
    block = R.create(shm_name, capacity=2, stride=4096)
    block.close()
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                             "-c", WRITER, shm_name], stdout=subprocess.PIPE, text=True)
    try:
        slot = int(proc.stdout.readline())
        diag = E.diagnose(shm_name, slot=slot)["slots"][0]
        assert diag["write_lock"] == 1, diag          # pid 1 of its namespace, init out here
        # Changed rule (was "unknown": a pid recorded in another namespace was never
        # probed): the kernel shows the process that has the block mapped with pid 1 at
        # its own NSpid level, so the holder is alive, whatever pid 1 is out here.
        writer = diag["writer"]
        assert writer["state"] == "alive", diag
        assert writer["process"]["nspid"][-1] == 1 and writer["process"]["pid"] != 1
        assert "mapped read-write" in " ".join(writer["evidence"]), writer
        before = file_bytes(shm_name)
        for action in ("release_writer", "force_reset"):
            result = E.recover(shm_name, slot, action)
            assert result["result"] == "UNSAFE" and not result["changed"], result
        assert E.heal(shm_name)["changed"] is False
        assert file_bytes(shm_name) == before
    finally:
        proc.send_signal(signal.SIGKILL)   # unshare's child (the writer, pid 1) dies with it?
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _holders(shm_name):
            time.sleep(0.05)


def _holders(name):
    """Processes still mapping the block (the namespaced writer outlives unshare's kill)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/maps" % pid) as f:
                if "/dev/shm/%s" % name in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    for pid in out:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return out
