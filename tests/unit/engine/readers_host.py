"""The namespace host the reader scenarios run on (test_readers, test_readers_pinned):
a block ``name`` of ``CAPACITY`` slots, a read-only look at it ``b`` (no opener that
could read) and the helpers the scenarios share."""

from __future__ import annotations

import textwrap

from ansible_collections.pylabhub.recovery.tests.support import in_namespace_host

PRELUDE = textwrap.dedent("""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import (
        _actors as A, _engine as E, _layout as L, _runtime as R)
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _validate
    _validate._SETTLE_S = (0.002, 0.01, 0.02)
    name = "plhreaders"
    R.create(name, capacity=CAPACITY).close()
    b = R.attach(name, writable=False)  # a read-only look: no opener that could read
    S = R.SLOT

    def words(i):
        base = b.geo.slot_entry(i)
        return {n: b.get(S[n], base) for n in ("write_lock", "reader_count", "slot_state",
                                                 "writer_waiting")}

    def until(what, pred, timeout=30.0):
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise SystemExit("timed out waiting for " + what)
            time.sleep(0.005)

    def blocked_draining(i):
        until("a writer waiting on slot %d" % i, lambda: words(i)["slot_state"] ==
              L.SlotState.DRAINING and words(i)["writer_waiting"] == 1)

    def brief(h):
        return {"health": h["health"], "outcomes": [
            {k: o.get(k) for k in ("slot", "result", "message", "next")}
            for o in h["outcomes"]], "suspect": h["after"]["suspect_slots"],
            "stuck": h["after"]["stuck_slots"], "next": h["after"]["next_steps"]}

    def killed_inside(label, i, **how):
        # a consumer SIGKILLed inside slot i (paused at how's "pause", else where its
        # style pauses): the point it reported
        a = A.Actor(name, [("consumer", label), ("read", i)], **how).start()
        point = a.wait_point()
        a.kill()
        return point
    out = {}
""")


def run(code: str, capacity: int = 2) -> dict:
    """Run ``code`` after :data:`PRELUDE` on a new namespace host: its ``out``, printed
    as JSON, returned."""
    return in_namespace_host("CAPACITY = %d\n" % capacity + PRELUDE + textwrap.dedent(code))
