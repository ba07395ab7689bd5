"""Heal of several blocks in one call (``each_block``): the consumer-count settle.

A count out of step is reconciled only when every look over the settle span reads the
same pids and count (``_cleanup``). ``each_block`` looks at every block's consumer table
before healing the first (``_observe.preobserve``); a block whose table still reads the
same is not made to wait the whole span again, so a host's blocks share one wait. These
tests check that the shortcut never lets a moving table through: a consumer that
registers after that first look, consumers registering and unregistering all the time,
and that the counts still end right. Real processes (crash actors SIGKILLed while
registered, consumers of our runtime) on real shared memory."""

from __future__ import annotations

import os
import time
import types

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _cleanup, _engine as E, _layout as L, _runtime as R, _validate)

from .test_consumer_count import HEARTBEATER, beating  # noqa: F401 pylint: disable=unused-import
from .test_race import churn_consumer

SETTLE = (0.002, 0.01, 0.02)


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch):
    monkeypatch.setattr(_validate, "_SETTLE_S", SETTLE)
    monkeypatch.setattr(_cleanup, "_SETTLE_S", SETTLE)


@pytest.fixture
def blocks():
    """``blocks(n)``: n fresh blocks of our runtime, names sharing a prefix (the pattern
    ``each_block`` is given); unlinked afterwards."""
    made = []
    prefix = "plhsettle_%d_%d_" % (os.getpid(), time.monotonic_ns())

    def make(n):
        names = [prefix + str(k) for k in range(n)]
        for name in names:
            R.create(name, capacity=4, stride=4096).close()
            made.append(name)
        return names, prefix + "*"
    yield make
    for name in made:
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except FileNotFoundError:
            pass


def table(name):
    """(registered entries, active_consumer_count)."""
    with R.attach(name, writable=False) as b:
        return (sum(1 for k in range(L.MAX_CONSUMERS)
                    if b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k))),
                b.get("active_consumer_count"))


def dead_counted(actors, name, n):
    """n consumers that registered, counted themselves and were SIGKILLed."""
    for k in range(n):
        a = actors(name, [("consumer", "dead-%d" % k)], style="cpp")
        a.wait_point()
        a.kill()


def test_several_blocks_share_one_settle_and_end_counted(blocks, actors, beating,
                                                         monkeypatch):
    """Three blocks, each with two dead consumers that had counted themselves and a count
    wrapped by an old underflow (raised back to the entries whatever the scan's scope).
    In the second a live consumer registers after each_block's first look at the tables:
    its table moved, so it gets every pause of its own; the others' did not. Every count
    ends equal to the live entries, and the pauses asked for add up to the short looks of
    each block plus at most one whole span (not one span a block)."""
    names, pattern = blocks(3)
    wrapped = (1 << 32) - 10
    for name in names:
        dead_counted(actors, name, 2)
        with R.attach(name) as b:
            b.set("active_consumer_count", wrapped)
        assert table(name) == (2, wrapped)
    live = []
    real_preobserve = E.preobserve

    def preobserve_then_register(scans, address, budget=None):
        real_preobserve(scans, address, budget)
        if address.endswith(names[1]) and not live:
            live.append(beating(names[1]))      # registered and counted after the look
    monkeypatch.setattr(E, "preobserve", preobserve_then_register)
    asked = []

    def sleep(seconds):                     # the settle's pauses (_cleanup's only use)
        asked.append(seconds)
        time.sleep(seconds)
    monkeypatch.setattr(_cleanup, "time", types.SimpleNamespace(sleep=sleep))
    out = E.each_block("heal", pattern=pattern)
    monkeypatch.undo()
    assert live, "the consumer was never started"
    assert [e["error"] for e in out["blocks"]] == [None] * 3, out["blocks"]
    assert table(names[0]) == (0, 0)
    assert table(names[1]) == (1, 1), out["blocks"][1]["result"]["cleanup"]
    assert table(names[2]) == (0, 0)
    short = sum(SETTLE[:-1])
    assert sum(asked) <= 3 * short + sum(SETTLE) + 1e-9, asked
    # the block whose table moved after the first look waited the whole span itself
    assert SETTLE[-1] in asked, asked
    beating.stop(live[0])
    assert table(names[1]) == (0, 0)
    again = E.each_block("heal", pattern=pattern)
    assert not again["changed"], [e["result"]["changes"] for e in again["blocks"]]


def test_churning_consumers_in_several_blocks_are_never_miscounted(blocks, actors, lab,
                                                                   tmp_path):
    """Consumers registering and unregistering all the time in two of three blocks (the
    count moves a moment after the entry), the third with a dead consumer to reconcile,
    while each_block heals and cleans up every block in a loop: the dead one's count is
    reconciled once; the churning blocks' counts are never changed by recovery, never
    above the two churners, and 0 once they stop."""
    names, pattern = blocks(3)
    stop = str(tmp_path / "stop")
    churners = [lab.child(churn_consumer, name, stop, linger=False) for name in names[:2]
                for dummy in range(2)]
    for c in churners:
        c.recv()
    dead_counted(actors, names[2], 1)
    assert table(names[2]) == (1, 1)
    seen = {n: set() for n in names[:2]}
    runs = 0
    deadline = time.monotonic() + 2.0
    while runs < 8 or time.monotonic() < deadline:
        for op in ("heal", "cleanup"):
            out = E.each_block(op, pattern=pattern)
            runs += 1
            for entry in out["blocks"]:
                if entry["address"].endswith(names[2]):
                    continue
                assert entry["error"] is None, entry
                assert not entry["result"]["changed"], entry["result"]["changes"]
        for n in names[:2]:
            seen[n].add(table(n)[1])
    open(stop, "w").close()
    for c in churners:
        c.recv(60)
    assert all(c.reap() == 0 for c in churners)
    for n in names[:2]:
        assert max(seen[n]) <= 2, sorted(seen[n])
        assert table(n) == (0, 0)
    assert table(names[2]) == (0, 0)
