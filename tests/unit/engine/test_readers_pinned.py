"""The reader rule's attribution pinned where mutation testing found it unpinned
(docs/reliability.md section 8, target ``readers``).

On a fleet-lab-like host (new PID and mount namespaces, private /dev/shm: scope
``namespace``, complete), real consumers of our runtime killed or paused inside reads.
A live consumer of ours with trusted evidence accounts for exactly the reads its
evidence names -- in its own slot, not in a lower one -- so the dead readers beside it
are released and its own read is kept."""

from __future__ import annotations

import os
import shutil

import pytest

from ansible_collections.pylabhub.recovery.tests.support import in_namespace_host

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare(1)")

CODE = """
from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _actors as A, _engine as E, _layout as L, _runtime as R)
from ansible_collections.pylabhub.recovery.plugins.module_utils import _validate
_validate._SETTLE_S = (0.002, 0.01, 0.02)
name = "plhattrib"
R.create(name, capacity=4).close()
b = R.attach(name, writable=False)  # a read-only look: no opener that could read

def readers():
    return [b.get(R.SLOT["reader_count"], b.geo.slot_entry(i)) for i in range(4)]

def entries():
    return [k for k in range(L.MAX_CONSUMERS)
            if b.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k))]

out = {}
p = A.Actor(name, [("producer",), ("publish", 3)]).start()
p.wait_point()                        # slots 0, 1, 2 committed
p.resume()
p.wait_exit()
d1 = A.Actor(name, [("consumer", "d1"), ("read", 1)], pause="inside").start()
d1.wait_point()
d1.kill()                             # entry 0: dead inside slot 1
if BIG_PID:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write("1000")               # the live one's pid: no small (cached) int
live = A.Actor(name, [("consumer", "live"), ("read", 2)], pause="inside").start()
live.wait_point()                     # entry 1: alive inside slot 2
d2 = A.Actor(name, [("consumer", "d2"), ("read", 2)], pause="inside").start()
d2.wait_point()
d2.kill()                             # entry 2: dead inside slot 2
out["live_pid"] = live.pid
out["before"] = {"readers": readers(), "entries": entries(),
                 "count": b.get("active_consumer_count")}
out["provably_dead"] = {i: E.diagnose(name, i)["slots"][0]["readers"]["provably_dead"]
                        for i in (1, 2)}
out["cleanup"] = E.cleanup(name)
out["after"] = {"readers": readers(), "entries": entries(),
                "count": b.get("active_consumer_count")}
print(json.dumps(out, default=str))
"""


@pytest.mark.parametrize("big_pid", [False, True], ids=["small-pid", "pid-above-256"])
def test_a_live_consumer_accounts_for_its_own_read_only(big_pid):
    """Slot 1: one dead reader, and a live consumer of ours (pid > 256, in entry 1 after
    a dead entry 0) whose evidence says it reads slot 2: it accounts for none of slot
    1's readers, so slot 1's reader is provably dead and released. Slot 2: the live
    consumer and a dead one inside: one reader is released, the live one's is kept
    (count 2 -> 1, never 0). The dead entries are cleared, the live one's is kept. Its
    pid both small (CPython caches ints up to 256: equal pids are one object) and not
    (equal pids are two objects): pids are compared by value."""
    out = in_namespace_host("BIG_PID = %r\n" % big_pid + CODE)
    assert (out["live_pid"] > 256) == big_pid, out
    assert out["before"] == {"readers": [0, 1, 2, 0], "entries": [0, 1, 2], "count": 3}, out
    assert out["provably_dead"] == {"1": 1, "2": 1}, out
    assert out["cleanup"]["cleaned"] == 2, out["cleanup"]
    assert out["after"]["readers"] == [0, 0, 1, 0], out
    assert out["after"]["entries"] == [1], out
