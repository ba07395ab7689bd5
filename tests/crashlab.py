# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real crashed DataBlocks for the module and playbook tests.

Every block is created by a forked child using the collection's own runtime
(``plugins/module_utils/_runtime.py``); the child reports over a pipe when it has reached
the protocol point and is then SIGKILLed there (or kept alive, for refusal tests). The
test process itself never appears in a block (it never creates, produces or consumes),
so liveness verdicts see only the children.

    with CrashLab() as lab:
        slot = lab.stuck_writer("plhmod_x")     # producer SIGKILLed mid-write
        ...
    # every child killed and reaped, every block unlinked
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _block as B, _layout as L, _runtime as R)

SHM_DIR = "/dev/shm"
_COUNTER = [0]


def unique_name(prefix="plhmod"):
    """A shm name unique to this process and call."""
    _COUNTER[0] += 1
    return "%s_%d_%d_%d" % (prefix, os.getpid(), _COUNTER[0], int(time.time() * 1000) % 100000)


def path_of(name):
    return os.path.join(SHM_DIR, name)


def snapshot(name):
    """Every byte of the block file."""
    with open(path_of(name), "rb") as f:
        return f.read()


def _hold():
    while True:
        signal.pause()


class Child(object):
    """A forked process running ``fn(reached)``; ``reached(label)`` reports a point."""

    def __init__(self, fn):
        up_r, up_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child
            os.close(up_r)
            code = 0
            try:
                fn(lambda label: os.write(up_w, (label + "\n").encode()))
            except BaseException:  # pylint: disable=broad-except
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)  # pylint: disable=protected-access
        os.close(up_w)
        self.pid, self._fd, self._buf, self.alive = pid, up_r, b"", True

    def wait_point(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError("child %d did not reach its point" % self.pid)
            ready = select.select([self._fd], [], [], left)[0]
            if ready:
                chunk = os.read(self._fd, 256)
                if not chunk:
                    self.join()
                    raise RuntimeError("child %d ended before its point" % self.pid)
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def kill(self):
        if self.alive:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.join()

    def join(self):
        if self.alive:
            os.waitpid(self.pid, 0)
            self.alive = False
            os.close(self._fd)


def payload(i, stride):
    return ("crashlab slot-id %d" % i).encode().ljust(min(64, stride), b".")


class CrashLab(object):
    """Creates crashed blocks; on exit kills every child and unlinks every block."""

    def __init__(self):
        self.children = []
        self.names = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for child in self.children:
            child.kill()
        for name in self.names:
            try:
                os.unlink(path_of(name))
            except OSError:
                pass

    def child(self, fn):
        c = Child(fn)
        self.children.append(c)
        return c

    def _producer(self, name, capacity, stride, commits, then=None):
        """A child that creates ``name``, publishes ``commits`` slots, reports
        ``committed`` and then runs ``then(producer, reached)`` (or exits cleanly)."""
        self.names.append(name)

        def run(reached):
            blk = R.create(name, capacity=capacity, stride=stride)
            prod = R.Producer(blk)
            for i in range(commits):
                prod.publish(payload(i, stride))
            reached("committed")
            if then is not None:
                then(prod, reached)
            blk.close()
        return self.child(run)

    # -- scenarios --------------------------------------------------------------------
    def healthy(self, name, capacity=4, stride=4096):
        """A block with ``capacity`` commits; its producer exited cleanly."""
        p = self._producer(name, capacity, stride, capacity)
        p.wait_point()
        p.join()

    def stuck_writer(self, name, capacity=4, stride=4096):
        """The producer is SIGKILLed holding slot 0's write lock in WRITING, half written,
        after a full ring of commits. Returns (slot, dead pid)."""
        def write_half(prod, reached):
            ws = prod.acquire()
            prod.write(ws, b"\xab" * (stride // 2))
            reached("writing %d" % ws.index)
            _hold()
        p = self._producer(name, capacity, stride, capacity, write_half)
        p.wait_point()
        slot = int(p.wait_point().split()[1])
        p.kill()
        return slot, p.pid

    def live_writer(self, name, capacity=4, stride=4096):
        """Like :meth:`stuck_writer` but the producer stays alive holding the lock.
        Returns (slot, live pid); the child is killed when the lab closes."""
        def write_half(prod, reached):
            ws = prod.acquire()
            reached("writing %d" % ws.index)
            _hold()
        p = self._producer(name, capacity, stride, capacity, write_half)
        p.wait_point()
        slot = int(p.wait_point().split()[1])
        return slot, p.pid

    def stuck_reader(self, name, capacity=4, stride=4096, slot=1):
        """A consumer is SIGKILLed inside committed ``slot`` (reader_count 1); the producer
        exited cleanly. Returns (slot, dead consumer pid)."""
        p = self._producer(name, capacity, stride, capacity)
        p.wait_point()
        p.join()

        def read(reached):
            cons = R.Consumer(R.attach(name), name="crashlab-reader")
            rs = cons.acquire(index=slot)
            if rs is None:
                raise RuntimeError("slot %d is not readable" % slot)
            reached("reading")
            _hold()
        c = self.child(read)
        c.wait_point()
        c.kill()
        return slot, c.pid

    def dead_consumers(self, name, dead=2, capacity=4, stride=4096):
        """``dead`` registered consumers SIGKILLed (not inside a slot); the producer exited
        cleanly. Returns their pids."""
        p = self._producer(name, capacity, stride, capacity)
        p.wait_point()
        p.join()
        pids = []
        for k in range(dead):
            def run(reached, k=k):
                cons = R.Consumer(R.attach(name), name="crashlab-dead-%d" % k)
                rs = cons.acquire()
                if rs is not None:
                    cons.read(rs)
                    cons.release(rs)
                reached("registered")
                _hold()
            c = self.child(run)
            c.wait_point()
            pids.append(c.pid)
        for c in self.children[-dead:]:
            c.kill()
        return pids

    def corrupt(self, name, slot=1, capacity=4, stride=4096):
        """A healthy block whose committed ``slot`` has 16 data bytes inverted."""
        self.healthy(name, capacity, stride)
        with B.open_block(name, writable=True) as blk:
            off = blk.geo.slot_data(slot)
            blk.write(off, bytes(b ^ 0xFF for b in blk.read(off, 16)))
        return slot

    # -- reading words back -----------------------------------------------------------
    @staticmethod
    def slot_words(name, slot):
        with B.open_block(name) as blk:
            base = blk.slot_base(slot)
            return {k: blk.get(L.SLOT[k], base) for k in
                    ("write_lock", "reader_count", "slot_state", "writer_waiting")}

    @staticmethod
    def consumer_pids(name):
        with B.open_block(name) as blk:
            return [blk.consumer(k, "consumer_pid") for k in range(L.MAX_CONSUMERS)
                    if blk.consumer(k, "consumer_pid")]
