"""Crash campaign (issue 7): real producer/consumer processes SIGKILLed at seeded protocol
points, healed, checked. A bounded run here; the long one is
``python benchmarks/bench_crash_campaign.py``. Rerun this with another seed or length:
``PLH_DRILL_SEED=7 PLH_DRILL_ITERATIONS=1000 pytest tests/reliability/test_crash_campaign.py``.
"""

from __future__ import annotations

import glob
import os

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _drill, _layout as L, _recover)

SEED = int(os.environ.get("PLH_DRILL_SEED", "20261126"))
ITERATIONS = int(os.environ.get("PLH_DRILL_ITERATIONS", "200"))


def _leftovers():
    return set(glob.glob("/dev/shm/plh_drill_%d_*" % os.getpid()))


def test_campaign_every_kill_survived_no_committed_data_lost(figures):
    result = _drill.drill(iterations=ITERATIONS, seed=SEED)
    failures = ["#%s %s: %s" % (f["iteration"], f["point"], f["problems"])
                for f in result["failures"]]
    assert result["survived"] == ITERATIONS, "\n".join(failures)
    assert result["ok"] and not failures
    assert result["committed_lost"] == 0
    assert result["kills"] >= ITERATIONS
    assert result["committed_checked"] >= ITERATIONS
    missing = [p for p in _drill.POINTS if not result["points"].get(p)]
    assert not missing, "protocol points never exercised: %s" % missing
    assert not _leftovers(), "the drill left scratch blocks behind"
    figures["crash campaign (CI)"] = (
        "%d/%d iterations survived, %d SIGKILLs, %d committed slots checked, %d lost, "
        "%d forced drains, %d re-heals (a count kept for want of proof), seed %d, %.1f s"
        % (result["survived"], ITERATIONS, result["kills"], result["committed_checked"],
           result["committed_lost"], result["forced"], result["reheals"], SEED,
           result["seconds"]))


def test_drill_detects_an_engine_that_loses_committed_data(monkeypatch):
    """Sabotage: releasing a dead writer turns DRAINING (data untouched, last commit still
    valid) into FREE, i.e. throws the commit away. The drill must notice."""
    real = _recover._after_writer

    def lossy(state):
        return int(L.SlotState.FREE) if state == L.SlotState.DRAINING else real(state)
    monkeypatch.setattr(_recover, "_after_writer", lossy)
    result = _drill.drill(iterations=30, seed=SEED)
    assert result["committed_lost"] > 0, result["points"]
    assert not result["ok"] and result["survived"] < 30
    assert any("changed or lost" in p for f in result["failures"] for p in f["problems"])
    assert not _leftovers()


def test_drill_detects_a_heal_that_does_nothing(monkeypatch):
    """Sabotage: heal changes nothing. Stuck slots and dead consumers must be reported."""
    monkeypatch.setattr(_drill, "heal", lambda name, **record: {"changed": False})
    result = _drill.drill(iterations=12, seed=SEED)
    assert not result["ok"] and result["survived"] < 12
    assert any("not healthy" in p or "never finished" in p or "not usable" in p
               for f in result["failures"] for p in f["problems"])
    assert not _leftovers()
