"""active_consumer_count on what is true (issue 10 item 3: D4, D7).

The count rule (docs/architecture.md): after dead entries are cleared, the count is
never left below the registered consumers nor wrapped, is lowered only where a complete
scan (or an exclusive lease) proves no unseen consumer may still uncount itself, and
heartbeat stores do not stop reconciliation. Real processes: crash actors paused or
killed at protocol points, and consumers of our runtime heartbeating every 2 ms."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _layout as L, _runtime as R, _validate)

HEARTBEATER = textwrap.dedent("""
    import sys, threading, time
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R
    b = R.attach(sys.argv[1])
    c = R.Consumer(b, name="beating", style=sys.argv[2])
    print(c.index, flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    while not stop.is_set():
        c.pulse()
        time.sleep(0.002)
    c.unregister()
    print("unregistered", flush=True)
""")


@pytest.fixture
def beating():
    """Start live consumers that heartbeat every 2 ms; stop them (unregistering) later."""
    procs = []

    def start(name, style="ours"):
        p = subprocess.Popen([sys.executable, "-c", HEARTBEATER, name, style],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        procs.append(p)
        line = p.stdout.readline()
        assert line.strip().isdigit(), line
        return p

    def stop(p):
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"unregistered\n"
        assert p.wait(30) == 0
    start.stop = stop
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch):
    monkeypatch.setattr(_validate, "_SETTLE_S", (0.002, 0.01, 0.02))


def count(name):
    with R.attach(name, writable=False) as b:
        return b.get("active_consumer_count")


def registered(name):
    with R.attach(name, writable=False) as b:
        return sum(1 for k in range(L.MAX_CONSUMERS)
                   if b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k)))


def test_d7_killed_before_counting_itself_with_the_previous_heartbeat(
        block_name, actors, beating):
    """D7: a consumer SIGKILLed between its pid CAS and ``count += 1``, in an entry whose
    heartbeat is still the previous occupant's, next to two live consumers heartbeating
    every 2 ms, and a dead consumer that had counted itself (count 3). cleanup and heal
    never take the count below 2; once the live ones unregister it is never wrapped, and
    a cleanup with nobody else left makes it 0. (The previous rule took the nonzero
    heartbeat for "had counted itself" and uncounted both: 3 -> 1, then 4294967295.)"""
    name = block_name
    prev = actors(name, [("consumer", "prev"), ("unregister", "cpp")], style="cpp")
    prev.wait_point()                       # unregistered the C++ way: heartbeat left
    prev.resume()
    prev.wait_exit()
    x = actors(name, [("consumer", "x")], pause="pid-cased", style="cpp")
    assert x.wait_point()["consumer"] == 0
    x.kill()
    with R.attach(name, writable=False) as b:
        assert b.get(L.CONSUMER["last_heartbeat_ns"], L.consumer_entry(0)) != 0
    counted = actors(name, [("consumer", "counted")], style="cpp")
    counted.wait_point()                    # registered and counted, then killed
    counted.kill()
    live = [beating(name), beating(name)]
    assert count(name) == 3 and registered(name) == 4
    out = E.cleanup(name)
    assert out["cleaned"] == 2, out
    assert count(name) >= 2, out["reconciled"]
    assert registered(name) == 2
    heal = E.heal(name)
    assert count(name) >= 2, heal["cleanup"]
    for p in live:
        beating.stop(p)
    assert count(name) < 1 << 31, count(name)      # never wrapped
    E.cleanup(name)                                 # nobody else has it open: recounted
    assert count(name) == 0 and registered(name) == 0


def test_d4_count_side_a_consumer_paused_after_its_pid_cas(block_name, actors, beating):
    """D4, the count side: a live consumer paused right after its pid CAS (not counted
    yet) is never cleared, and its missing count is left for it to add (raising the count
    for it would end one too high once it counts itself in: the race test's producer saw
    9 with 8 entries); when it resumes the count equals the entries, and when everyone
    unregisters it is never wrapped, and a cleanup with nobody else left brings it to 0."""
    name = block_name
    prev = actors(name, [("consumer", "prev"), ("unregister", "cpp")], style="cpp")
    prev.wait_point()
    prev.resume()
    prev.wait_exit()
    other = beating(name, "cpp")
    paused = actors(name, [("consumer", "paused")], pause="pid-cased", mode="stop",
                    style="cpp")
    paused.wait_point()
    assert count(name) == 1 and registered(name) == 2
    out = E.cleanup(name)
    assert out["cleaned"] == 0, out
    assert registered(name) == 2 and count(name) == 1, out["reconciled"]
    paused.cont()
    paused.wait_point()                     # done: it counted itself in (and stopped)
    assert registered(name) == 2 and count(name) == 2
    beating.stop(other)
    paused.kill()                           # dies registered: a dead entry
    assert count(name) < 1 << 31
    E.cleanup(name)
    assert registered(name) == 0 and count(name) == 0


def test_a_wrapped_count_is_raised_to_the_registered_consumers(block_name, beating):
    """A count already wrapped (an earlier cleanup's underflow) is put back to the
    registered consumers, by CAS, whatever the heartbeat traffic."""
    name = block_name
    live = beating(name)
    with R.attach(name) as b:
        b.set("active_consumer_count", (1 << 32) - 1)
    out = E.cleanup(name)
    assert {"field": "active_consumer_count", "before": (1 << 32) - 1, "after": 1} in \
        out["reconciled"], out
    beating.stop(live)
    assert count(name) == 0
