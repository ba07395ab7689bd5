"""Real crash states for the CLI and API tests: crash actors of our runtime, SIGKILLed.

Each actor is a separate Python process (``plugins/module_utils/_actors.py``: a fresh
interpreter running the collection's runtime, ``_runtime``: the spec's protocol) that
reports when it has reached its protocol point, and then holds still until it is killed
(or, for "exit" actors, exits cleanly). The scenario functions below leave a named block
in a known state and return what they did, so a test can check the bytes before and
after.

Every scenario uses 2 slots of 4096 bytes (the upstream tests' geometry, spec section 7)
and leaves its interesting state in **slot 0**, the slot the documented commands name.
"""

from __future__ import annotations

import itertools
import os

import pytest

CAPACITY, STRIDE = 2, 4096
DEAD_PID = 2147483647            # spec section 7: a PID no process can have

#: The actors' scripts: (steps, pause, nth) by role. A producer creates the block and
#: commits ``commits`` slot ids, then holds (then=0), acquires and writes half a slot and
#: holds there (then=1), or exits (then=2); a reader registers and enters slot N; a
#: consumer only registers.


def _producer_script(commits, then):
    steps = [("create", {"capacity": CAPACITY, "stride": STRIDE}), ("producer",),
             ("publish", commits)]
    if then == 1:
        return steps + [("acquire",), ("write",)], "half-written", commits + 1
    return steps, None, 1


class Actor:
    """One crash actor of ours; ``info`` is what it reported at its point."""

    def __init__(self, role, name, *args, timeout=15.0):
        # imported here: this module is loaded by conftests before the collection's path
        from ansible_collections.pylabhub.recovery.plugins.module_utils import _actors
        self.role = role
        if role == "producer":
            steps, pause, nth = _producer_script(args[0], args[1])
        elif role == "reader":
            steps, pause, nth = [("consumer", "reader"), ("read", args[0])], None, 1
        elif role == "consumer":
            steps, pause, nth = [("consumer", "consumer")], None, 1
        else:
            raise ValueError("unknown role " + role)
        self.actor = _actors.Actor(name, steps, pause=pause, nth=nth, label="plh-crash")
        try:
            self.actor.start(timeout)
            self.info = self.actor.wait_point(timeout)
        except _actors.ActorError as exc:
            self.actor.close()
            raise RuntimeError("%s actor did not reach its point: %s" % (role, exc))
        self.pid = self.actor.pid
        if role == "producer" and args[1] == 2:
            self.actor.resume()          # then=2: exit cleanly

    @property
    def alive(self):
        return self.actor.running()

    def kill(self):
        """SIGKILL and reap: the PID is then positively dead."""
        self.actor.close()

    def join(self, timeout=15.0):
        self.actor.wait_exit(timeout)
        self.actor.close()


class Crashes:
    """The scenarios; every actor still alive is killed at teardown (:meth:`close`)."""

    def __init__(self):
        self.actors = []

    def actor(self, role, name, *args):
        a = Actor(role, name, *args)
        self.actors.append(a)
        return a

    def close(self):
        for a in self.actors:
            try:
                a.kill()
            except Exception:
                pass

    # -- scenarios (each returns a dict describing the state it left) ---------------------
    def producer(self, name, commits, then=0):
        return self.actor("producer", name, commits, then, CAPACITY, STRIDE)

    def stuck_writer(self, name):
        """Slot 0 WRITING, write lock = a SIGKILLed producer (spec scenario 1, for real):
        the producer committed slot ids 0 and 1, acquired id 2 (slot 0), wrote half, died."""
        p = self.producer(name, 2, then=1)
        assert p.info["slot"] == 0, p.info
        p.kill()
        return {"writer": p.pid, "slot": 0}

    def live_writer(self, name):
        """As stuck_writer, but the producer stays alive holding slot 0's write lock."""
        p = self.producer(name, 2, then=1)
        assert p.info["slot"] == 0, p.info
        return {"writer": p.pid, "slot": 0, "actor": p}

    def zombie_readers(self, name, readers=3):
        """Slot 0 COMMITTED with ``readers`` readers, all SIGKILLed inside it (spec scenario
        2, for real); the producer was killed after committing (no writer holds anything)."""
        p = self.producer(name, 1)
        p.kill()
        pids = []
        for unused in range(readers):
            r = self.actor("reader", name, 0)
            pids.append(r.pid)
            r.kill()
        return {"readers": pids, "slot": 0, "producer": p.pid}

    def live_reader(self, name):
        """Slot 0 COMMITTED, one reader alive inside it; the producer was killed."""
        p = self.producer(name, 1)
        p.kill()
        r = self.actor("reader", name, 0)
        return {"reader": r.pid, "slot": 0, "actor": r}

    def dead_consumers(self, name, dead=2):
        """``dead`` registered consumers SIGKILLed (reading nothing), one live consumer;
        the producer committed both slots and was killed (spec scenario 4, for real)."""
        p = self.producer(name, 2)
        p.kill()
        pids = []
        for unused in range(dead):
            c = self.actor("consumer", name)
            pids.append(c.pid)
            c.kill()
        live = self.actor("consumer", name)
        return {"dead": pids, "live": live.pid, "actor": live}

    def committed(self, name, commits=2):
        """A healthy block: ``commits`` slot ids committed, producer exited cleanly."""
        p = self.producer(name, commits, then=2)
        p.join()
        return {"producer": p.pid}

    def corrupt(self, name, slot=1):
        """Both slots committed (producer killed), then 16 data bytes of ``slot`` inverted
        after the commit: its stored BLAKE2b checksum no longer matches."""
        p = self.producer(name, 2)
        p.kill()
        path = os.path.join("/dev/shm", name)
        ring = 4096 * ((4096 + 97 * CAPACITY + 4095) // 4096)
        off = ring + STRIDE * slot
        fd = os.open(path, os.O_RDWR)
        try:
            data = os.pread(fd, 16, off)
            os.pwrite(fd, bytes(b ^ 0xFF for b in data), off)
        finally:
            os.close(fd)
        return {"slot": slot}


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def poke(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- fixtures
# Imported by the conftests of tests/unit/cli and tests/unit/api.
_NAMES = itertools.count(1)


@pytest.fixture
def crashes():
    """Scenario maker; kills every actor still alive at teardown."""
    owner = Crashes()
    yield owner
    owner.close()


@pytest.fixture
def names(shm_name):
    """Unique block names: ``names()`` -> a fresh name (``names.prefix`` is common to all
    names of this test, for ``--match``); every /dev/shm entry of them is removed after."""
    made = []

    def make(suffix=None):
        name = "%s_%s" % (shm_name, suffix if suffix is not None else next(_NAMES))
        made.append(name)
        return name
    make.prefix = shm_name + "_"
    make.made = made
    yield make
    for name in made:
        path = os.path.join("/dev/shm", name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:
            pass


def install_fixture(fixtures_dir, filename, name):
    """Copy a real pylabhub segment into /dev/shm/<name> (0600) and overwrite its foreign
    PIDs with DEAD_PID, as the fixtures' README says; returns the path."""
    path = os.path.join("/dev/shm", name)
    data = bytearray(read_bytes(os.path.join(str(fixtures_dir), filename)))
    offsets = [4096, 4160, 4224, 4288] + [496 + 128 * k for k in range(8)] + [2624]
    for off in offsets:
        if int.from_bytes(data[off:off + 8], "little"):
            data[off:off + 8] = DEAD_PID.to_bytes(8, "little")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, bytes(data))
    finally:
        os.close(fd)
    return path
