"""Shared machinery of the engine tests: real blocks, real child processes, real SIGKILL.

Every process is a crash actor (``plugins/module_utils/_actors.py``, forked):

* ``ScratchBlocks.crashed(scenario)`` leaves a block in one crash state -- a writer
  actor stopped at the protocol point the scenario names (``_runtime.PRODUCER_POINTS``)
  and SIGKILLed there, a reader or consumer killed inside, a writer left draining --
  with a snapshot of every committed slot taken *before* the crash, so a test can prove
  recovery did not touch them.
* :class:`Child` is a function actor (``_actors.Actor(call=...)``): a test's own program
  ``fn(report, *args)``, which reports, then waits to be killed (SIGKILL) or stopped
  (SIGSTOP).
* :class:`ScratchBlocks` (the ``lab`` fixture) owns every shm name and process of a test
  and removes them even when the test fails.
* :class:`InterruptedPlan` is a real Plan paused at a chosen touch of the block (a step
  begins, a read at an offset, a CAS of a target) while another real process
  (:func:`store_program`) changes the block: a scheduler's pause, made deterministic.

Assertions read the block back through ``plh_spec`` (the spec's offsets, independent of
the core's ``_layout``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Tuple

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _actors, _block as B, _engine as E, _layout as L, _plan as P, _procinfo, _runtime as R)

import plh_spec as spec

DEAD_PID = 2147483647        # spec section 7: "dead PID"
SHM = "/dev/shm"
FREE, WRITING, COMMITTED, DRAINING = 0, 1, 2, 3
_COUNTER = itertools.count(1)


# -- data ----------------------------------------------------------------------------------
def payload(slot_id: int, stride: int) -> bytes:
    """Deterministic slot contents for a slot id; the first 8 bytes name the id (what
    the actors write: ``_actors.payload(..., "digest")``)."""
    return _actors.payload(slot_id, stride, "digest")


def payload_ok(data: bytes) -> bool:
    return data == payload(int.from_bytes(data[:8], "little"), len(data))


def image(name: str) -> spec.Image:
    return spec.Image.read(os.path.join(SHM, name))


def poke(name: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of /dev/shm/<name> (a test's own corruption)."""
    fd = os.open(os.path.join(SHM, name), os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def slot_store(index: int, word: str, value: int) -> Tuple[int, bytes]:
    """The (offset, bytes) store of ``value`` into slot ``index``'s ``word`` (a name of
    ``plh_spec.SLOT_WORDS``: lock, readers, state, waiting, generation)."""
    off, size = spec.SLOT_WORDS[word]
    return spec.slot_entry(index) + off, value.to_bytes(size, "little")


def poke_slot(name: str, index: int, **words: Optional[int]) -> None:
    """Write slot ``index``'s words (``lock=``, ``readers=``, ``state=``, ``waiting=``,
    ``generation=``; None: left as it is) in the order given, as a killed process
    leaves them."""
    for word, value in words.items():
        if value is not None:
            poke(name, *slot_store(index, word, value))


def poke_header(name: str, **words: int) -> None:
    """Write header words (names of ``_layout.HEADER``), in the order given."""
    for word, value in words.items():
        fld = L.HEADER[word]
        poke(name, fld.offset, value.to_bytes(fld.size, "little"))


def stored(before: bytes, stores) -> bytes:
    """``before`` with each (offset, bytes) of ``stores`` applied in order: what a file
    holds after another process made them."""
    data = bytearray(before)
    for offset, value in stores:
        data[offset:offset + len(value)] = value
    return bytes(data)


def file_bytes(name: str) -> bytes:
    with open(os.path.join(SHM, name), "rb") as f:
        return f.read()


def committed_snapshot(name: str) -> Dict[int, tuple]:
    """{slot: (generation, data, checksum)} of every slot holding committed data
    (COMMITTED, or DRAINING: a draining writer has not touched the data yet)."""
    img = image(name)
    return {i: (img.slot(i)["generation"], img.slot_data(i), img.checksum(i)[0])
            for i in range(img.capacity) if img.slot(i)["state"] in (COMMITTED, DRAINING)}


def assert_untouched(name: str, before: Dict[int, tuple], skip=()) -> None:
    """Every slot committed in ``before`` still holds the same generation, data, checksum."""
    img = image(name)
    for i, (gen, data, digest) in before.items():
        if i in skip:
            continue
        assert img.slot(i)["state"] == COMMITTED, "slot %d no longer COMMITTED" % i
        assert img.slot(i)["generation"] == gen, "slot %d generation changed" % i
        assert img.slot_data(i) == data, "slot %d data changed" % i
        assert img.checksum(i)[0] == digest, "slot %d checksum changed" % i
        assert img.checksum_valid(i), "slot %d checksum no longer valid" % i


def codes(result: dict) -> set:
    """(code, field-or-slot) of every finding of a validate result."""
    return {(f["code"], f.get("field") if f.get("slot") is None else f["slot"])
            for f in result["findings"]}


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(0.002)


# -- processes -----------------------------------------------------------------------------
class ChildFailed(AssertionError):
    pass


class Child:
    """A process of the test: a forked function actor running ``fn(report, *args)``
    (``report(obj)`` sends one message), or a step actor (``steps``, ``pause``: see
    :mod:`_actors`) on block ``name``.

    The first report is the readiness signal. After ``fn`` returns the child waits to be
    killed, keeping what ``fn`` returned (its block and producer or consumer: a process
    holds a block's words only while it has the block mapped, and an unreferenced Block
    unmaps itself); an exception fails :meth:`recv` with its traceback. The child never
    returns into pytest and dies with its parent.
    """

    def __init__(self, fn: Optional[Callable], *args, linger: bool = True, name: str = "",
                 steps=(), pause: Optional[str] = None) -> None:
        if fn is not None:
            self.actor = _actors.Actor(name, [], call=(fn, args), linger=linger, fork=True,
                                       label="engine-test")
        else:
            self.actor = _actors.Actor(name, steps, pause=pause, fork=True,
                                       payload="digest", label="engine-test")
        try:
            self.actor.start()
        except _actors.ActorError as exc:
            raise ChildFailed(str(exc))
        self.pid = self.actor.pid

    @property
    def status(self) -> Optional[int]:
        return self.actor.exit_status

    def recv(self, timeout: float = 10.0) -> dict:
        """The next report; raises if the child failed, died or took too long."""
        try:
            msg = self.actor.wait_point(timeout)
        except _actors.ActorError as exc:
            raise ChildFailed("child %d: %s" % (self.pid, exc))
        return msg["report"] if msg.get("event") == "report" else msg

    def reap(self, timeout: float = 10.0) -> Optional[int]:
        try:
            return self.actor.wait_exit(timeout)
        except _actors.ActorError:
            return None

    def kill(self) -> None:
        """SIGKILL and reap: afterwards the pid is certainly dead (ESRCH)."""
        self.actor.kill()
        assert _procinfo.pid_probe(self.pid) == _procinfo.PROBE_NO_SUCH

    def stop(self) -> None:
        self.actor.stop()
        wait_for(lambda: _procinfo.process_state(self.pid) in ("T", "t"), 5, "SIGSTOP")

    def close(self) -> None:
        try:
            self.kill()
        finally:
            self.actor.close()


def complete_scope(name: str) -> bool:
    """Whether the kernel scan is complete for this block here: the reader and count
    rules act without force only then (or once nobody else has the block open)."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _kernel as K
    with R.attach(name, writable=False) as b:
        return K.HostScan.take().scope(K.BlockId.of(b)).complete


def reaped_pid() -> int:
    """The pid of a child that exited and was reaped: certainly dead on this machine."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# -- child programs (run inside Child) -------------------------------------------------------
def _commit_n(p: R.Producer, n: int) -> List[int]:
    ids = []
    for dummy in range(n):
        ws = p.acquire()
        p.write(ws, payload(ws.slot_id, p.block.geo.stride))
        p.commit(ws)
        ids.append(ws.slot_id)
    return ids


WRITER_POINTS = ("locked", "acquired", "mid_write", "before_commit", "mid_commit")
#: Where each writer point stops a writer actor (after ``("producer",), ("acquire",)``
#: and, for the later points, ``("write",)`` and ``("commit",)``): the protocol point
#: (None: after its last step). "locked" is "evidence" on a block that carries evidence.
_WRITER_STOPS = {"locked": (2, "locked"), "acquired": (2, "writing"),
                 "mid_write": (3, "half-written"), "before_commit": (3, None),
                 "mid_commit": (4, "generation")}


def writer_steps(point: str, evidence: bool = True) -> tuple:
    """(steps, pause) of a writer actor stopped at ``point`` (see writer_program)."""
    count, pause = _WRITER_STOPS[point]
    if point == "locked" and evidence:
        pause = "evidence"
    return [("producer",), ("acquire",), ("write",), ("commit",)][:count], pause


def writer_program(report, name: str, commits: int, point: str) -> None:
    """A producer that commits ``commits`` slots, then stops at a protocol point.

    locked: write_index claimed and the lock CASed, state not yet WRITING;
    acquired: WRITING, nothing written; mid_write: half the payload written;
    before_commit: all written; mid_commit: checksum and generation done, state still
    WRITING (the next store of commit). idle: nothing held.
    """
    b = R.attach(name)
    p = R.Producer(b)
    _commit_n(p, commits)
    stride = b.geo.stride
    ws = None
    if point == "locked":
        slot_id = b.add("write_index", 1)
        ws = R.WriteSlot(slot_id, slot_id % b.geo.capacity)
        p._lock(b.geo.slot_entry(ws.index), 5.0)
    elif point in ("acquired", "mid_write", "before_commit", "mid_commit"):
        ws = p.acquire()
        if point == "mid_write":
            p.write(ws, payload(ws.slot_id, stride)[:stride // 2])
        elif point in ("before_commit", "mid_commit"):
            p.write(ws, payload(ws.slot_id, stride))
        if point == "mid_commit":
            geo, base = b.geo, b.geo.slot_entry(ws.index)
            b.write(geo.checksum_entry(ws.index),
                    L.blake2b256(b.view(geo.slot_data(ws.index), stride)) + b"\0")
            b.add(L.SLOT["write_generation"], 1, base)
    elif point != "idle":
        raise ValueError(point)
    report({"pid": os.getpid(), "slot_id": ws.slot_id if ws else None,
            "index": ws.index if ws else None})
    return b, p, ws


def publisher_program(report, name: str, first: int, then: int) -> None:
    """Commit ``first`` slots, report, then commit ``then`` more (may block in DRAINING)
    and report again."""
    b = R.attach(name)
    p = R.Producer(b)
    ids = _commit_n(p, first)
    report({"pid": os.getpid(), "ids": ids})
    ids = _commit_n(p, then)
    report({"ids": ids})
    return b, p


def reader_program(report, name: str, index: Optional[int] = None) -> None:
    """Register a consumer, enter a committed slot (the latest, or ``index``), read it."""
    b = R.attach(name)
    c = R.Consumer(b, name="reader-%d" % os.getpid())
    rs = c.acquire(index)
    if rs is None:
        raise RuntimeError("no readable slot")
    data = c.read(rs)
    report({"pid": os.getpid(), "consumer": c.index, "index": rs.index,
            "slot_id": rs.slot_id, "ok": payload_ok(data)})
    return b, c, rs


def consumer_program(report, name: str) -> None:
    """Register only."""
    b = R.attach(name)
    c = R.Consumer(b, name="consumer-%d" % os.getpid())
    report({"pid": os.getpid(), "consumer": c.index})
    return b, c


def creator_program(report, name: str, capacity: int, stride: int, evidence: bool,
                    commits: int, flex_size: int) -> None:
    """Create a block, commit ``commits`` slots, exit: a block its dead producer left."""
    b = R.create(name, capacity=capacity, stride=stride, flex_size=flex_size,
                 evidence=evidence)
    p = R.Producer(b)
    _commit_n(p, commits)
    report({"pid": os.getpid()})


def store_program(report, name: str, stores) -> None:
    """Another process: each (offset, bytes) of ``stores`` stored in order through a
    shared mapping of the block; a 1-, 2-, 4- or 8-byte store aligned to its size is an
    atomic store (as a live peer stores a word), any other plain bytes."""
    with B.open_block(name, writable=True, strict=False) as block:
        for offset, data in stores:
            size = len(data)
            if size in (1, 2, 4, 8) and offset % size == 0:
                block.set(L.Field("store", 0, size, "u", True), int.from_bytes(data, "little"),
                          offset)
            else:
                block.write(offset, data)
    report({"pid": os.getpid()})


# -- a test's blocks and processes -----------------------------------------------------------
SCENARIOS = WRITER_POINTS + ("reader", "consumer", "draining_live_writer", "deadlock")


class Crash:
    """A block left in one crash state."""

    def __init__(self, name: str, scenario: str, slot: Optional[int], before: dict,
                 victims: List[Child], writer: Optional[Child] = None,
                 last_good: Optional[int] = None) -> None:
        self.name = name
        self.scenario = scenario
        self.slot = slot                  # the slot the crash left stuck (None: consumer)
        self.before = before              # committed slots just before the crash
        self.victims = victims            # killed children
        self.writer = writer              # a live writer (draining_live_writer)
        self.last_good = last_good        # slot id of the last good commit


class ScratchBlocks:
    """The scratch blocks (shm names) of one test and the processes it started on them;
    ``close`` kills every process and removes every block."""

    def __init__(self, fixtures_dir=None) -> None:
        self.names: List[str] = []
        self.children: List[Child] = []
        self.fixtures_dir = fixtures_dir

    def name(self) -> str:
        n = "plhtest_eng_%d_%d" % (os.getpid(), next(_COUNTER))
        self.names.append(n)
        return n

    def child(self, fn: Callable, *args, linger: bool = True) -> Child:
        """A function actor: the test's own program ``fn(report, *args)``."""
        c = Child(fn, *args, linger=linger)
        self.children.append(c)
        return c

    def actor(self, name: str, steps, pause: Optional[str] = None) -> Child:
        """A step actor on block ``name`` (:mod:`_actors`), stopped at ``pause``."""
        c = Child(None, name=name, steps=steps, pause=pause)
        self.children.append(c)
        return c

    def close(self) -> None:
        errors = []
        for c in self.children:
            try:
                c.close()
            except Exception as exc:  # keep cleaning
                errors.append(exc)
        for n in self.names:
            try:
                os.unlink(os.path.join(SHM, n))
            except FileNotFoundError:
                pass
        if errors:
            raise errors[0]

    # -- blocks ------------------------------------------------------------------------
    def create(self, capacity: int = 2, stride: int = 4096, evidence: bool = True,
               commits: int = 0, flex_size: int = 0) -> str:
        """A block created and filled by a producer that then exited (dead, reaped)."""
        name = self.name()
        c = self.child(creator_program, name, capacity, stride, evidence, commits, flex_size,
                       linger=False)
        c.recv()
        assert c.reap() == 0
        return name

    def fixture(self, filename: str, dead_pid: Optional[int] = None) -> str:
        """Copy a fixture into /dev/shm; its foreign PIDs become a certainly dead PID."""
        name = self.name()
        path = os.path.join(SHM, name)
        shutil.copyfile(str(self.fixtures_dir() / filename), path)
        os.chmod(path, 0o600)
        dead = dead_pid or reaped_pid()
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            offsets = [spec.slot_entry(i) for i in range(4)] + [spec.consumer_entry(k) for k in range(8)]
            for off in offsets + [2624]:
                if int.from_bytes(data[off:off + 8], "little"):
                    data[off:off + 8] = dead.to_bytes(8, "little")
            f.seek(0)
            f.write(data)
        return name

    # -- crash states --------------------------------------------------------------------
    def crashed(self, scenario: str, evidence: bool = True, capacity: int = 4,
                stride: int = 4096) -> Crash:
        """Leave a new block in the crash state ``scenario`` (see SCENARIOS)."""
        if scenario in WRITER_POINTS:
            name = self.create(capacity, stride, evidence, commits=capacity + 1)
            before = committed_snapshot(name)           # just before the crash point
            last_good = image(name).commit_index
            steps, pause = writer_steps(scenario, evidence)
            w = self.actor(name, steps, pause)
            msg = w.recv()
            w.kill()
            return Crash(name, scenario, msg["slot"], before, [w], last_good=last_good)
        if scenario in ("reader", "consumer"):
            name = self.create(capacity, stride, evidence, commits=capacity + 1)
            before = committed_snapshot(name)
            victim = self.child(reader_program if scenario == "reader" else consumer_program,
                                name)
            msg = victim.recv()
            victim.kill()
            return Crash(name, scenario, msg.get("index"), before, [victim],
                         last_good=image(name).commit_index)
        if scenario in ("draining_live_writer", "deadlock"):
            name = self.create(capacity, stride, evidence, commits=capacity)
            reader = self.child(reader_program, name)          # inside the newest slot
            stuck = reader.recv()["index"]
            reader.kill()
            # the writer commits until the ring wraps onto the reader's slot, then drains
            w = self.child(publisher_program, name, capacity - 1, 1)
            w.recv()
            wait_for(lambda: image(name).slot(stuck)["state"] == DRAINING
                     and image(name).slot(stuck)["lock"] == w.pid
                     and image(name).slot(stuck)["waiting"] == 1, 10, "writer in DRAINING")
            before = committed_snapshot(name)           # DRAINING data is still committed
            last_good = image(name).commit_index
            if scenario == "deadlock":
                w.kill()
                return Crash(name, scenario, stuck, before, [reader, w], last_good=last_good)
            return Crash(name, scenario, stuck, before, [reader], writer=w,
                         last_good=last_good)
        raise ValueError(scenario)


def stores_in_child(lab: ScratchBlocks, name: str, stores) -> None:
    """Another real process makes ``stores`` (see store_program); returns once it exited."""
    c = lab.child(store_program, name, list(stores), linger=False)
    c.recv()
    assert c.reap() == 0


class InterruptedPlan(P.Plan):
    """A real Plan that is paused at a chosen touch of the block while another process
    changes it: the scheduler pausing us there, made deterministic.

    ``at`` names the touch: ``"begin"`` (a step begins), ``("read", offset)`` (a word or
    bytes read there, through the overlay or not), or ``("cas", target, "before")`` /
    ``("cas", target, "after")`` (our CAS of ``target``; "after" only when it succeeded).
    From the ``nth`` such touch on, each one first runs the next of ``turns`` and waits
    for it, until ``turns`` runs out; ``fired`` counts the turns run. A turn is a
    callable, or a list of (offset, bytes) stores that another real process makes into
    the block (:func:`stores_in_child`).
    """

    def __init__(self, block, lab: ScratchBlocks, at, turns, nth: int = 1,
                 dry_run: bool = False, journal=None) -> None:
        super().__init__(block, dry_run, journal)
        self.lab, self.at, self.nth = lab, at, nth
        self.turns = list(turns)
        self.seen = self.fired = 0

    def _touch(self, what) -> None:
        if what != self.at:
            return
        self.seen += 1
        if self.seen >= self.nth and self.turns:
            turn = self.turns.pop(0)
            if callable(turn):
                turn()
            else:
                stores_in_child(self.lab, self.block.address, turn)
            self.fired += 1

    def begin(self) -> None:
        self._touch("begin")
        super().begin()

    def get(self, fld, base=0):
        self._touch(("read", base + fld.offset))
        return super().get(fld, base)

    def read(self, offset, size):
        self._touch(("read", offset))
        return super().read(offset, size)

    def cas(self, target, fld, base, expected, new):
        self._touch(("cas", target, "before"))
        super().cas(target, fld, base, expected, new)
        self._touch(("cas", target, "after"))


# -- hand-made crash states (bytes a dead process leaves; no process needed) -------------------
def torn_free(lab: ScratchBlocks) -> str:
    """Wrapped ring, a FREE unlocked slot (2) holding torn bytes under its old checksum."""
    name = lab.create(capacity=4, commits=5)
    img = image(name)
    poke_slot(name, 2, state=FREE)
    poke(name, img.data_offset(2) + 100, b"torn bytes of a dead writer")
    return name


def index_ahead(lab: ScratchBlocks) -> str:
    """A producer killed between its write_index += 1 and its lock CAS: one claimed id
    no writer holds, the producer dead."""
    name = lab.create(capacity=4, commits=3)
    poke(name, 184, (image(name).write_index + 1).to_bytes(8, "little"))
    return name


def corrupt(lab: ScratchBlocks, slots=(1,)) -> str:
    """Committed ``slots`` whose data no longer matches their checksum."""
    name = lab.create(capacity=4, commits=4)
    img = image(name)
    for s in slots:
        off = img.data_offset(s) + 77
        poke(name, off, bytes([img.data[off] ^ 0x5A]))
    return name


def wrapped_count(lab: ScratchBlocks) -> str:
    """active_consumer_count wrapped (4294967295) with no consumer registered: cleanup
    sets it to the registered consumers (0) by CAS, in any scope."""
    name = lab.create(capacity=4, commits=2)
    poke(name, L.HEADER["active_consumer_count"].offset, b"\xff\xff\xff\xff")
    return name


# -- proving a block works again ------------------------------------------------------------
def read_latest(name: str) -> tuple:
    """(slot id, data) of the latest commit, read by a consumer of ours with checksum check;
    the consumer unregisters afterwards."""
    b = R.attach(name)
    try:
        c = R.Consumer(b, name="verifier")
        try:
            rs = c.acquire()
            assert rs is not None, "no readable committed slot"
            data = c.read(rs)          # raises on a checksum mismatch
            c.release(rs)
            return rs.slot_id, data
        finally:
            c.unregister()
    finally:
        b.close()


def publish_in_child(lab: ScratchBlocks, name: str, count: int = 1, timeout: float = 10.0) -> List[int]:
    """A new producer process commits ``count`` slots (a hang fails instead of blocking)."""
    c = lab.child(publisher_program, name, count, 0, linger=False)
    ids = c.recv(timeout)["ids"]
    c.recv(timeout)
    assert c.reap() == 0
    return ids


def prove_works(lab: ScratchBlocks, name: str, last_good: Optional[int]) -> None:
    """A consumer reads the last good commit, a new producer commits, a consumer reads
    that, and validate passes."""
    stride = image(name).stride
    if last_good is not None and last_good != spec.NO_COMMIT:
        slot_id, data = read_latest(name)
        assert slot_id == last_good
        assert data == payload(last_good, stride)
    ids = publish_in_child(lab, name, 2)
    slot_id, data = read_latest(name)
    assert slot_id == ids[-1]
    assert data == payload(ids[-1], stride)
    result = E.validate(name)
    assert result["ok"], result["findings"]
    assert not [f for f in result["findings"] if f["severity"] == "error"]
