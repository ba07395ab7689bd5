"""The never-steal campaign (issue 10, "How it is proven"): random scenarios of live and
dead holders, then every unforced recovery operation in loops, each checked against the
ground truth the campaign itself knows.

A scenario is one fresh block and a few real holders (crash actors,
``plugins/module_utils/_actors.py``):

* a **writer** holding a slot, paused at a protocol point of its acquire (``locked``,
  ``evidence``, ``writing``) or after it;
* **consumers**: registered, **registering** (paused at ``pid-cased``, ``counted`` or
  ``heartbeat``), **reading** (registered and inside the latest committed slot: a share
  of its reader_count), **recorded** (paused inside a read between recording where it
  reads and counting itself in, the D3 point) or **leaving** (paused between clearing
  its entry's pid and uncounting itself: no entry, still in active_consumer_count);

each one **live** (waiting), **stopped** (SIGSTOP) or **killed** (SIGKILL), each started
plain, in a child **PID namespace** (``unshare --pid --fork``), in a **time namespace**
(``unshare --time --boottime/--monotonic``), or with a **reused pid**: inside the
scenario's :class:`_actors.ActorNamespace` an earlier process got the same pid through
``ns_last_pid``, left its records in the block and exited. The C++ style (no evidence) is
drawn for blocks without evidence. The block's consumer sync policy is drawn too
(Latest_only, Sequential, Sequential_sync; apart from the other draws, so older seeds
replay the same holders). Before the operations a committed past keeps readers
possible; between the two rounds a live holder may be killed (the truth changes).

Then ``recover all release_writer``, ``cleanup`` and ``heal`` (never forced, never dry)
run in random order, twice, and after **each** the block is read back through the
spec's own offsets (``tests/unit/plh_spec.py``, independent of the core) and checked:

* **never steal**: every live (running or stopped) writer still holds its lock word, every
  live consumer its entry, every live reader its place in its slot's reader_count, and
  active_consumer_count is never below the live consumers that counted themselves in
  (registered past ``counted``, reading, recorded, leaving) nor wrapped; under
  Sequential_sync read_index is never lowered and never raised past a live consumer's
  read position (for one still joining, past the latest commit it will join at);
* **dead released**: after the last round (root in the initial PID namespace: the scan's
  scope is complete) a killed writer's lock and a killed consumer's entry are gone --
  unless a live holder shows the same number at some PID-namespace level, when refusing
  is the right answer (ambiguity is never resolved by guessing).

* **dead readers**: after the last round a killed reader's share of its slot's
  reader_count is gone, or the slot's diagnosis says why not: a live process of the
  scenario that could be inside (a candidate with ``may_hold`` not 0), or a scope that
  is not complete (counted apart: the namespace host run must have none). With every
  holder dead, nobody else has the block open: every dead reader must be released and
  the count must be 0 (the exclusive lease proves it in any scope), unless another
  process had the block open at that instant (heal then says so: counted apart).

Run ``python tests/reliability/never_steal.py --scenarios 2000 [--seed S]`` for a long
campaign (root, unshare(1)); pytest runs a bounded one
(``tests/reliability/test_never_steal.py``, ``PLH_NEVER_STEAL_SCENARIOS``).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "tests" / "unit"

if __name__ == "__main__":                      # standalone: this working tree, importable
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import _path  # noqa: E402

    _path.setup()
if str(UNIT) not in sys.path:
    sys.path.insert(0, str(UNIT))

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _actors as A, _engine as E, _layout as L, _runtime as R)

import plh_spec as spec  # noqa: E402

SHM = "/dev/shm"
KINDS = ("consumer", "registering", "reader", "recorded", "leaving")
#: kinds (and registering points) that have counted themselves in active_consumer_count
COUNTED = ("consumer", "reader", "recorded", "leaving")
UNDERFLOW = 1 << 31
WRAPS = ("plain", "pidns", "timens", "reuse")
FATES = ("live", "stopped", "killed")
WRITER_POINTS = ("locked", "evidence", "writing", None)
REGISTER_POINTS = ("pid-cased", "counted", "heartbeat")
TIME_SHIFTS = (("--boottime", "-100"), ("--monotonic", "500"), ("--boottime", "86400"))
#: consumer sync policies drawn (Sequential_sync's read_index follows the positions)
SYNCS = (L.ConsumerSync.LATEST_ONLY,) * 3 + (L.ConsumerSync.SEQUENTIAL_SYNC,) * 2 + (
    L.ConsumerSync.SEQUENTIAL,)


class Steal(AssertionError):
    """An unforced operation took something a live process holds."""


@dataclass
class Holder:
    kind: str                       # writer, consumer, registering, reader
    wrap: str
    fate: str
    actor: A.Actor
    value: int = 0                  # the pid it recorded in the block (its own namespace's)
    slot: Optional[int] = None      # writer: its locked slot; reader: the slot it is in
    entry: Optional[int] = None     # consumers: their heartbeat entry
    point: Optional[str] = None     # registering: where it is paused

    @property
    def counted(self) -> bool:
        """It counted itself in active_consumer_count (and has not uncounted)."""
        return self.kind in COUNTED or (self.kind == "registering"
                                        and self.point in ("counted", "heartbeat"))

    @property
    def live(self) -> bool:
        return self.fate != "killed"

    def describe(self) -> str:
        return "%s[%s,%s,pid %d/%d]" % (self.kind, self.wrap, self.fate, self.actor.pid,
                                        self.value)


@dataclass
class Figures:
    scenarios: int = 0
    operations: int = 0
    steals: int = 0
    dead: int = 0
    dead_released: int = 0
    dead_ambiguous: int = 0
    dead_partial: int = 0
    readers_dead: int = 0           # readers killed inside a slot
    readers_released: int = 0       # ... whose share of reader_count is gone
    readers_kept_live: int = 0      # kept: a live process of the scenario could be inside
    readers_kept_partial: int = 0   # kept: the scope is not complete
    count_checks: int = 0           # scenarios whose holders all died: count must be 0
    count_zeroed: int = 0
    count_kept_other: int = 0       # ... kept: another process had the block open
    holders: Dict[str, int] = field(default_factory=dict)
    syncs: Dict[str, int] = field(default_factory=dict)     # scenarios per sync policy
    read_index_raised: int = 0      # Sequential_sync: operations that raised read_index

    def line(self) -> str:
        kinds = ", ".join("%s %d" % kv for kv in sorted(self.holders.items()))
        return ("scenarios %d, unforced operations checked %d, steals %d, dead holders "
                "released %d/%d (%d kept: scope partial, verdict not dead; %d kept: a live "
                "process shows the same pid); dead readers released %d/%d (%d kept: a live "
                "process could be inside; %d kept: scope partial); count back to 0 with "
                "every holder dead %d/%d (%d kept: another process had the block open); "
                "holders: %s; sync policies: %s (read_index raised %d times, never past a "
                "live consumer's position)"
                % (self.scenarios, self.operations, self.steals, self.dead_released,
                   self.dead, self.dead_partial, self.dead_ambiguous, self.readers_released,
                   self.readers_dead, self.readers_kept_live, self.readers_kept_partial,
                   self.count_zeroed, self.count_checks, self.count_kept_other, kinds,
                   ", ".join("%s %d" % kv for kv in sorted(self.syncs.items())),
                   self.read_index_raised))


def _nspids(pid: int) -> List[int]:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


class Scenario:
    """One block, its holders and the truth about them (module doc)."""

    def __init__(self, rng: random.Random, index: int) -> None:
        self.rng = rng
        self.name = "plhsteal_%d_%d" % (os.getpid(), index)
        self.evidence = rng.random() < 0.7
        self.style = "ours" if self.evidence else rng.choice(("ours", "cpp"))
        # drawn apart, so that the main draws (and every older seed's scenario) stay
        self.sync = random.Random(repr(rng.getstate())).choice(SYNCS)
        self.holders = []  # type: List[Holder]
        self.actors = []  # type: List[A.Actor]
        self.ns = None  # type: Optional[A.ActorNamespace]
        self.next_pid = 300
        self.log = []  # type: List[str]
        self.last_heal = {}  # type: Dict[str, object]   # the last heal's or cleanup's

    # -- building --------------------------------------------------------------------------
    def _start(self, steps, wrap: str, **kw) -> A.Actor:
        kw.setdefault("style", self.style)
        if wrap == "pidns":
            kw["wrap"] = ["unshare", "--pid", "--fork", "--kill-child"]
        elif wrap == "timens":
            kw["wrap"] = (["unshare", "--time"] + list(self.rng.choice(TIME_SHIFTS))
                          + ["--fork", "--kill-child"])
        elif wrap == "reuse":
            kw["namespace"], kw["pid"] = self._namespace(), self.next_pid
        actor = A.Actor(self.name, steps, **kw)
        self.actors.append(actor)
        return actor.start()

    def _namespace(self) -> A.ActorNamespace:
        if self.ns is None:
            self.ns = A.ActorNamespace(("unshare", "--pid", "--fork", "--mount-proc",
                                        "--kill-child"))
        return self.ns

    def _predecessor(self, kind: str) -> None:
        """An earlier process with the pid the next reuse holder gets: it leaves its
        records (producer evidence, or a C++-style unregistered entry, with the read
        position past the latest commit it read) and exits."""
        pid = self.next_pid
        steps = ([("producer",), ("publish", 1), ("exit", 0)] if kind == "writer" else
                 [("consumer", "predecessor"), ("read", None), ("release",),
                  ("unregister", "cpp"), ("exit", 0)])
        old = self._start(steps, "reuse", label="predecessor-%d" % pid)
        if old.wait_exit() != 0:
            raise A.ActorError("predecessor with pid %d failed" % pid)
        time.sleep(0.02)            # the next process with this pid starts ticks later

    def build(self) -> None:
        R.create(self.name, capacity=4, evidence=self.evidence, sync=self.sync).close()
        past = self._start([("producer",), ("publish", 2), ("exit", 0)], "plain",
                           label="past")
        if past.wait_exit() != 0:
            raise A.ActorError("the past producer failed")
        kinds = (["writer"] if self.rng.random() < 0.75 else [])
        kinds += [self.rng.choice(KINDS + ("reader",)) for dummy in range(self.rng.randint(0, 3))]
        if not kinds:
            kinds = [self.rng.choice(("writer",) + KINDS)]
        for kind in kinds:
            wrap = self.rng.choice(WRAPS)
            fate = self.rng.choice(FATES)
            if wrap == "reuse":
                self._predecessor(kind)
            holder = self._holder(kind, wrap, fate)
            if wrap == "reuse":
                self.next_pid += 10
            self.holders.append(holder)
        for h in self.holders:      # fates after everyone is in place
            self._apply(h)

    def _holder(self, kind: str, wrap: str, fate: str) -> Holder:
        label = "%s-%s" % (kind, wrap)
        if kind == "writer":
            point = self.rng.choice(WRITER_POINTS)
            a = self._start([("producer",), ("publish", 1), ("acquire",)], wrap,
                            pause=point, nth=2, label=label)
        elif kind == "registering":
            a = self._start([("consumer", "registering")], wrap,
                            pause=self.rng.choice(REGISTER_POINTS), label=label)
        elif kind == "reader":
            a = self._start([("consumer", "reader"), ("read", None)], wrap, label=label)
        elif kind == "recorded":
            a = self._start([("consumer", "recorded"), ("read", None)], wrap,
                            pause="reading-recorded", label=label)
        elif kind == "leaving":
            a = self._start([("consumer", "leaving"), ("unregister", self.style)], wrap,
                            pause="unregister-pid-cleared", label=label)
        else:
            a = self._start([("consumer", "idle")], wrap, label=label)
        at = a.wait_point(30.0)
        h = Holder(kind, wrap, fate, a, value=a.ns_pid, point=at.get("point"))
        if kind == "writer":
            h.slot = at["slot"]
            if h.slot is None:
                raise A.ActorError("%s: no slot at %r" % (label, at))
        elif kind != "leaving":             # a leaving consumer's entry is free already
            h.entry = at["consumer"]
            if kind == "reader":
                (h.slot,) = at["reading"]
        return h

    def _apply(self, h: Holder) -> None:
        if h.fate == "stopped":
            h.actor.stop()
            deadline = time.monotonic() + 15
            while A._status(h.actor.pid).get("State", "?")[:1] not in ("T", "t"):
                if time.monotonic() > deadline:
                    raise A.ActorError("%s never stopped" % h.describe())
                time.sleep(0.002)
        elif h.fate == "killed":
            h.actor.kill()

    # -- checking --------------------------------------------------------------------------
    def image(self) -> "spec.Image":
        return spec.Image.read(os.path.join(SHM, self.name))

    def joined(self, h: Holder) -> bool:
        """Its entry's read position is its own (stored at join: ours before counting
        itself, pylabhub's after its first heartbeat); until then the entry shows the
        previous occupant's."""
        return h.kind in ("consumer", "reader", "recorded") or (
            h.kind == "registering" and self.style == "ours"
            and h.point in ("counted", "heartbeat"))

    def check_read_index(self, after: str, img: "spec.Image", before: int) -> bool:
        """Sequential_sync: an operation never lowers read_index and never raises it past
        a live consumer's position -- a joined one's own, or for one still joining the
        latest commit, the least it will store (no commit is made during the operations:
        every producer is paused or dead). Returns whether it was raised."""
        if self.sync != L.ConsumerSync.SEQUENTIAL_SYNC or img.read_index == before:
            return False
        if img.read_index < before:
            raise Steal("%s: read_index lowered %d -> %d" % (after, before, img.read_index))
        for h in self.holders:
            if h.live and h.entry is not None:
                bound = (img.read_position(h.entry) if self.joined(h) else img.commit_index)
                if img.read_index > bound:
                    raise Steal("%s: read_index raised %d -> %d past %s's %s %d"
                                % (after, before, img.read_index, h.describe(),
                                   "position" if self.joined(h) else "join position",
                                   bound))
        return True

    def check_live(self, after: str, img: "spec.Image") -> None:
        """Never steal: every live holder still holds what it took (``img``: the block
        read after the operation)."""
        inside = {}  # type: Dict[int, int]
        for h in self.holders:
            if not h.live:
                continue
            if h.kind == "writer" and img.slot(h.slot)["lock"] != h.value:
                raise Steal("%s: %s lost slot %d's lock (now %d)"
                            % (after, h.describe(), h.slot, img.slot(h.slot)["lock"]))
            if h.entry is not None and img.consumer(h.entry)["pid"] != h.value:
                raise Steal("%s: %s lost consumer entry %d (now pid %d)"
                            % (after, h.describe(), h.entry, img.consumer(h.entry)["pid"]))
            if h.kind == "reader":
                inside[h.slot] = inside.get(h.slot, 0) + 1
        for slot, count in inside.items():
            if img.slot(slot)["readers"] < count:
                raise Steal("%s: slot %d has %d live reader(s), reader_count %d"
                            % (after, slot, count, img.slot(slot)["readers"]))
        counted = sum(1 for h in self.holders if h.live and h.counted)
        if img.active_consumers >= UNDERFLOW or img.active_consumers < counted:
            raise Steal("%s: active_consumer_count %d with %d live consumer(s) counted in"
                        % (after, img.active_consumers, counted))

    def ambiguous(self) -> set:
        """Every number a live holder has at some PID-namespace level."""
        seen = set()
        for h in self.holders:
            if h.live:
                seen.update(_nspids(h.actor.pid))
        return seen

    def check_dead(self, fig: Figures) -> None:
        """Dead released: a killed writer's lock, a killed consumer's entry are gone once
        every unforced operation ran twice -- when the verdict's scope was complete. In a
        partial scope (this machine's PID 1 unreadable, say) the per-pid rules may rightly
        stay ``unknown``: counted, and the namespace host run proves the complete case."""
        img, taken = self.image(), self.ambiguous()
        diagnosis = None
        for h in self.holders:
            if h.live or h.kind == "reader" or (h.kind != "writer" and h.entry is None):
                continue                        # readers: check_dead_readers; leaving: no entry
            if h.value in taken:
                fig.dead_ambiguous += 1
                continue
            fig.dead += 1
            still = (img.slot(h.slot)["lock"] == h.value if h.kind == "writer" else
                     img.consumer(h.entry)["pid"] == h.value)
            if not still:
                fig.dead_released += 1
                continue
            if h.kind == "writer":
                verdict = E.diagnose(self.name, h.slot)["slots"][0]["writer"] or {}
            else:
                diagnosis = diagnosis or E.diagnose(self.name)
                verdict = next(c["verdict"] for c in diagnosis["consumers"]
                               if c["index"] == h.entry)
            scope = verdict.get("scope") or {}
            if scope.get("complete") or verdict.get("state") == "dead":
                raise AssertionError("%s: dead holder not released after every unforced "
                                     "operation ran twice; verdict %r"
                                     % (h.describe(), verdict))
            fig.dead_partial += 1
        self.check_dead_readers(fig, img)
        self.check_count(fig, img)

    def check_dead_readers(self, fig: Figures, img: "spec.Image") -> None:
        """A killed reader's share of reader_count is gone, or the slot's diagnosis names
        a live process of this scenario that could be inside, or a scope not complete."""
        live_pids = set()
        for h in self.holders:
            if h.live:
                live_pids.update(_nspids(h.actor.pid) or [h.actor.pid])
        for slot in sorted({h.slot for h in self.holders if h.kind == "reader"}):
            dead = sum(1 for h in self.holders
                       if h.kind == "reader" and not h.live and h.slot == slot)
            if not dead:
                continue
            live = sum(1 for h in self.holders
                       if h.kind == "reader" and h.live and h.slot == slot)
            left = max(0, min(dead, img.slot(slot)["readers"] - live))
            fig.readers_dead += dead
            fig.readers_released += dead - left
            if not left:
                continue
            readers = E.diagnose(self.name, slot)["slots"][0]["readers"]
            inside = [c for c in readers["could_be_inside"] if c["may_hold"] != 0]
            if readers["scope"] not in ("host", "namespace", "exclusive"):
                fig.readers_kept_partial += left
            elif inside and all(c["pid"] in live_pids for c in inside):
                fig.readers_kept_live += left
            else:
                raise AssertionError(
                    "slot %d: %d dead reader(s) kept in a complete scope (%s) with no live "
                    "process of the scenario that could be inside: %r"
                    % (slot, left, readers["scope"], readers))

    def check_count(self, fig: Figures, img: "spec.Image") -> None:
        """Every holder dead: nobody else has the block open, so the count must be back
        to 0 (the exclusive lease proves it whatever the scope), unless another process
        had the block open when heal looked -- heal must then have said why."""
        if any(h.live for h in self.holders):
            return
        fig.count_checks += 1
        if img.active_consumers == 0:
            fig.count_zeroed += 1
            return
        last = self.last_heal.get("cleanup") or self.last_heal     # heal's, or cleanup's
        kept = [r for r in last.get("reconciled") or []  # type: ignore[union-attr]
                if r.get("field") == "active_consumer_count" and r.get("result") == "KEPT"
                and "another process has the block open" in str(r.get("message"))]
        if not kept:
            raise AssertionError("every holder dead, active_consumer_count %d after the "
                                 "last heal: %r" % (img.active_consumers,
                                                    last.get("reconciled")))
        fig.count_kept_other += 1

    # -- running ---------------------------------------------------------------------------
    def operations(self, fig: Figures) -> None:
        ops = [("recover all release_writer",
                lambda: E.recover(self.name, "all", "release_writer")),
               ("cleanup", lambda: E.cleanup(self.name)),
               ("heal", lambda: E.heal(self.name))]
        for round_ in (1, 2):
            self.rng.shuffle(ops)
            for label, run in ops:
                before = self.image().read_index
                result = run()
                fig.operations += 1
                if label in ("heal", "cleanup"):    # the last count reconciliation
                    self.last_heal = result
                self.log.append("%s: %s changed=%s" % (label, result.get("result"),
                                                       result.get("changed")))
                after, img = "round %d, after %s" % (round_, label), self.image()
                try:
                    self.check_live(after, img)
                    fig.read_index_raised += self.check_read_index(after, img, before)
                except Steal:
                    fig.steals += 1
                    raise
            live = [h for h in self.holders if h.live]
            if round_ == 1 and live and self.rng.random() < 0.3:
                victim = self.rng.choice(live)      # the truth changes between rounds
                if victim.fate == "stopped":
                    os.kill(victim.actor.pid, signal.SIGCONT)
                victim.fate = "killed"
                victim.actor.kill()

    def close(self) -> None:
        for a in reversed(self.actors):
            try:
                a.close()
            except A.ActorError:
                pass
        if self.ns is not None:
            self.ns.close()
        try:
            os.unlink(os.path.join(SHM, self.name))
        except FileNotFoundError:
            pass


def campaign(scenarios: int, seed: int, fig: Optional[Figures] = None,
             out=None) -> Figures:
    """Run ``scenarios`` scenarios from ``seed``; raise on the first steal or unreleased
    dead holder (the message names the scenario's seed to replay it)."""
    fig = fig if fig is not None else Figures()
    for i in range(scenarios):
        rng = random.Random("%d-%d" % (seed, i))
        sc = Scenario(rng, i)
        try:
            sc.build()
            for h in sc.holders:
                fig.holders[h.kind] = fig.holders.get(h.kind, 0) + 1
            sync = L.ConsumerSync(sc.sync).name
            fig.syncs[sync] = fig.syncs.get(sync, 0) + 1
            sc.operations(fig)
            sc.check_dead(fig)
        except AssertionError as exc:
            raise AssertionError("scenario %d of seed %d (%s; evidence %s, style %s, sync %s): "
                                 "%s\noperations: %s" % (i, seed, ", ".join(
                                     h.describe() for h in sc.holders), sc.evidence,
                                     sc.style, L.ConsumerSync(sc.sync).name, exc,
                                     "; ".join(sc.log)))
        finally:
            sc.close()
        fig.scenarios += 1
        if out is not None and (i + 1) % 25 == 0:
            out.write("never-steal: %s\n" % fig.line())
            out.flush()
    return fig


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--scenarios", type=int,
                    default=int(os.environ.get("PLH_NEVER_STEAL_SCENARIOS", "200")))
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("never_steal: needs root (chosen pids, namespaces, a complete scan)",
              file=sys.stderr)
        return 2
    print("never-steal: seed %d, %d scenarios" % (args.seed, args.scenarios), flush=True)
    started = time.monotonic()
    fig = campaign(args.scenarios, args.seed, out=sys.stdout)
    print("never-steal: %s (%.0f s)" % (fig.line(), time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
