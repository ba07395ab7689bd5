# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two independent witnesses, installed for the tests only (requirements-dev.txt): the
product uses neither library, so each checks our own reading from the outside.

* psutil - its view of real processes (running, sleeping, stopped, zombie, reaped)
  agrees with what ``_procinfo`` reads from /proc and what the liveness verdicts rest
  on: existence, scheduler state, start time, owner and name.
* posix_ipc - ``shm_open`` creates a segment the way pylabhub's C++ programs do; filled
  with a real C++ block (a fixture), our tools find it, diagnose it and heal it, and the
  healed words are what posix_ipc's own mapping of the segment then shows.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _liveness as liveness, _procinfo as procinfo)

psutil = pytest.importorskip("psutil")
posix_ipc = pytest.importorskip("posix_ipc")

#: /proc/<pid>/stat state letters and psutil's names for them.
PSUTIL_STATUS = {"R": psutil.STATUS_RUNNING, "S": psutil.STATUS_SLEEPING,
                 "D": psutil.STATUS_DISK_SLEEP, "T": psutil.STATUS_STOPPED,
                 "t": psutil.STATUS_TRACING_STOP, "Z": psutil.STATUS_ZOMBIE,
                 "I": psutil.STATUS_IDLE}


def wait_state(pid, wanted, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procinfo.process_state(pid) in wanted:
            return
        time.sleep(0.005)
    pytest.fail("pid %d never reached %s" % (pid, wanted))


@pytest.fixture
def processes():
    """Real processes in four conditions: {label: (pid, start ticks)}; all ended after."""
    procs = []

    def start(argv):
        p = subprocess.Popen(argv)
        procs.append(p)
        return p

    sleeping = start(["sleep", "60"])
    stopped = start(["sleep", "60"])
    zombie = start(["true"])
    reaped = start(["true"])
    wait_state(sleeping.pid, ("S",))
    wait_state(stopped.pid, ("S",))
    ticks = {p.pid: procinfo.process_start_ticks(p.pid) for p in (sleeping, stopped, zombie)}
    os.kill(stopped.pid, signal.SIGSTOP)
    wait_state(stopped.pid, ("T",))
    wait_state(zombie.pid, ("Z",))
    reaped.wait()
    yield {"sleeping": (sleeping.pid, ticks[sleeping.pid]),
           "stopped": (stopped.pid, ticks[stopped.pid]),
           "zombie": (zombie.pid, ticks[zombie.pid]),
           "reaped": (reaped.pid, None)}
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.wait()


def test_psutil_agrees_on_process_facts(processes):
    boot = psutil.boot_time()
    for label, (pid, _ticks) in sorted(processes.items()):
        exists = procinfo.pid_probe(pid) != procinfo.PROBE_NO_SUCH
        assert psutil.pid_exists(pid) == exists, label
        if not exists:
            assert procinfo.process_stat(pid) is None, label
            with pytest.raises(psutil.NoSuchProcess):
                psutil.Process(pid)
            continue
        st = procinfo.process_stat(pid)
        proc = psutil.Process(pid)
        assert PSUTIL_STATUS[st.state] == proc.status(), label
        # the start time our verdicts compare (PID reuse), in psutil's terms:
        # boot time + start ticks / USER_HZ
        assert proc.create_time() == pytest.approx(
            boot + st.start_ticks / procinfo.clock_ticks(), abs=1.0 / procinfo.clock_ticks())
        assert proc.uids().real == procinfo.process_uid(pid), label
        assert proc.name() == st.comm.decode(), label


def test_psutil_agrees_with_the_verdicts(processes):
    """What each liveness verdict rests on is what psutil sees: dead = no process or a
    zombie; suspect-hung = stopped; alive = running or sleeping."""
    expected = {"sleeping": liveness.ALIVE, "stopped": liveness.SUSPECT_HUNG,
                "zombie": liveness.DEAD, "reaped": liveness.DEAD}
    for label, (pid, ticks) in sorted(processes.items()):
        verdict = liveness.judge(pid, recorded_start_ticks=ticks,
                                 heartbeat_ns=time.monotonic_ns())
        assert verdict.state == expected[label], (label, verdict)
        if verdict.state == liveness.DEAD:
            assert (not psutil.pid_exists(pid)
                    or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE), label
        elif verdict.state == liveness.SUSPECT_HUNG:
            assert psutil.Process(pid).status() == psutil.STATUS_STOPPED, label
        else:
            assert psutil.Process(pid).status() in (psutil.STATUS_RUNNING,
                                                    psutil.STATUS_SLEEPING), label


# ----------------------------------------------------------------------- posix_ipc

STUCK_SLOT = 3                                   # b_stuck_writer.bin: slot 3 WRITING
SLOT_WRITE_LOCK = 4096                           # + 64 * slot (README of the fixtures)
PID_OFFSETS = [4096 + 64 * i for i in range(4)] + [496 + 128 * k for k in range(8)] + [2624]


def reaped_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def cli(*args):
    """``datablock-admin --json ARGS`` (this checkout): (exit code, document)."""
    proc = subprocess.run([sys.executable, "-m", "pylabhub.recovery", "--json"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120, check=False)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def c_style_block(fixtures_dir):
    """A segment made with shm_open (posix_ipc), holding a real C++ block whose writer
    died in slot 3; its foreign PIDs replaced by one certainly dead here."""
    name = "plhwitness_%d" % os.getpid()
    image = bytearray((fixtures_dir / "b_stuck_writer.bin").read_bytes())
    dead = reaped_pid()
    for off in PID_OFFSETS:
        if int.from_bytes(image[off:off + 8], "little"):
            image[off:off + 8] = dead.to_bytes(8, "little")
    shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=0o600, size=len(image))
    try:
        with mmap.mmap(shm.fd, shm.size) as m:
            m[:] = bytes(image)
        yield name, bytes(image), dead
    finally:
        shm.close_fd()
        posix_ipc.unlink_shared_memory("/" + name)


def mapped(name):
    """The segment's bytes as posix_ipc maps them (not through our code)."""
    shm = posix_ipc.SharedMemory("/" + name)
    try:
        with mmap.mmap(shm.fd, shm.size, prot=mmap.PROT_READ) as m:
            return bytes(m[:])
    finally:
        shm.close_fd()


def word(data, off):
    return int.from_bytes(data[off:off + 8], "little")


def test_block_made_with_shm_open_is_found_diagnosed_and_healed(c_style_block):
    name, image, dead = c_style_block
    lock = SLOT_WRITE_LOCK + 64 * STUCK_SLOT
    assert word(mapped(name), lock) == dead

    rc, listing = cli("list", name)
    assert rc == 0 and [(b["address"], b["kind"]) for b in listing["blocks"]] == [(name, "shm")]

    rc, diagnosis = cli("diagnose", name)
    assert rc == 1 and diagnosis["healthy"] is False
    assert diagnosis["stuck_slots"] == [STUCK_SLOT]

    rc, dry = cli("heal", name, "--dry-run")
    assert rc == 0 and dry["dry_run"] is True and dry["changed"] is True
    assert mapped(name) == image, "a dry run wrote to the segment"

    rc, healed = cli("heal", name)
    assert rc == 0 and healed["healthy"] is True, healed
    after = mapped(name)
    assert word(after, lock) == 0                  # the dead writer's lock is gone
    data_start = 8192                              # slots 0-2: committed data untouched
    assert after[data_start:data_start + 3 * 4096] == image[data_start:data_start + 3 * 4096]

    rc, again = cli("diagnose", name)
    assert rc == 0 and again["healthy"] is True
