# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real crashed DataBlocks for the module and playbook tests.

Every block is created and filled by a crash actor (``plugins/module_utils/_actors.py``,
forked: a real process running the collection's own runtime) that stops at a protocol
point and is SIGKILLed there (or kept alive, for refusal tests). The test process
itself never appears in a block (it never creates, produces or consumes), so liveness
verdicts see only the actors.

    with CrashedBlocks() as blocks:
        slot, pid = blocks.stuck_writer("plhmod_x")     # producer SIGKILLed mid-write
        ...
    # every actor killed and reaped, every block unlinked
"""

from __future__ import annotations

import os
import time

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _actors as A, _block as B, _layout as L)

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


class CrashedBlocks(object):
    """Creates crashed blocks; on exit kills every actor and unlinks every block."""

    def __init__(self):
        self.actors = []
        self.names = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for actor in self.actors:
            actor.close()
        for name in self.names:
            try:
                os.unlink(path_of(name))
            except OSError:
                pass

    def actor(self, name, steps, pause=None, nth=1):
        """A forked actor on ``name`` at its point (``pause``) or after its last step."""
        a = A.Actor(name, steps, pause=pause, nth=nth, fork=True, label="crashed-blocks")
        self.actors.append(a)
        a.start()
        a.wait_point()
        return a

    def _producer(self, name, capacity, stride, commits, then=(), pause=None, nth=1):
        """An actor that creates ``name``, publishes ``commits`` slots and then runs the
        steps ``then``, stopping at ``pause``."""
        self.names.append(name)
        return self.actor(name, [("create", {"capacity": capacity, "stride": stride}),
                                 ("producer",), ("publish", commits)] + list(then),
                          pause=pause, nth=nth)

    @staticmethod
    def _exit(actor):
        actor.resume()
        actor.wait_exit()

    # -- scenarios --------------------------------------------------------------------
    def healthy(self, name, capacity=4, stride=4096):
        """A block with ``capacity`` commits; its producer exited cleanly."""
        self._exit(self._producer(name, capacity, stride, capacity))

    def stuck_writer(self, name, capacity=4, stride=4096):
        """The producer is SIGKILLed holding slot 0's write lock in WRITING, half written,
        after a full ring of commits. Returns (slot, dead pid)."""
        p = self._producer(name, capacity, stride, capacity, [("acquire",), ("write",)],
                           pause="half-written", nth=capacity + 1)
        slot = p.reports[-1]["slot"]
        p.kill()
        return slot, p.pid

    def live_writer(self, name, capacity=4, stride=4096):
        """Like :meth:`stuck_writer` but the producer stays alive holding the lock.
        Returns (slot, live pid); the actor is killed when the blocks are closed."""
        p = self._producer(name, capacity, stride, capacity, [("acquire",)],
                           pause="writing", nth=capacity + 1)
        return p.reports[-1]["slot"], p.pid

    def stuck_reader(self, name, capacity=4, stride=4096, slot=1):
        """A consumer is SIGKILLed inside committed ``slot`` (reader_count 1); the producer
        exited cleanly. Returns (slot, dead consumer pid)."""
        self.healthy(name, capacity, stride)
        c = self.actor(name, [("consumer", "crashlab-reader"), ("read", slot)])
        c.kill()
        return slot, c.pid

    def dead_consumers(self, name, dead=2, capacity=4, stride=4096):
        """``dead`` registered consumers SIGKILLed (not inside a slot); the producer exited
        cleanly. Returns their pids."""
        self.healthy(name, capacity, stride)
        consumers = [self.actor(name, [("consumer", "crashlab-dead-%d" % k), ("read", None),
                                       ("release",)]) for k in range(dead)]
        for c in consumers:
            c.kill()
        return [c.pid for c in consumers]

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
