"""Crash campaign (issue 7): real producer/consumer processes SIGKILLed at seeded protocol
points, healed, checked. A bounded run here; the long one is
``python benchmarks/bench_crash_campaign.py``. Rerun this with another seed or length:
``PLH_DRILL_SEED=7 PLH_DRILL_ITERATIONS=1000 pytest tests/reliability/test_crash_campaign.py``.
"""

from __future__ import annotations

import glob
import os

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _drill, _layout as L, _recover, _validate)

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
    counts = result["configurations"]
    unused = ["%s=%s" % (dim, value) for dim, dummy, labels in L.MATRIX_DIMENSIONS
              for value in labels if not counts[dim].get(value)]
    assert not unused, "configuration values never exercised: %s" % unused
    assert sum(counts["cells"].values()) == ITERATIONS == len(result["schedule"])
    assert not _leftovers(), "the drill left scratch blocks behind"
    figures["crash campaign (CI)"] = (
        "%d/%d iterations survived, %d SIGKILLs, %d committed slots checked, %d lost, "
        "%d forced drains, %d re-heals (a count kept for want of proof), seed %d, %.1f s, "
        "%d of %d configuration cells"
        % (result["survived"], ITERATIONS, result["kills"], result["committed_checked"],
           result["committed_lost"], result["forced"], result["reheals"], SEED,
           result["seconds"], len(counts["cells"]), len(L.CONFIGURATIONS)))


def test_same_seed_same_points_and_configurations():
    """A rerun with the seed replays each iteration's kill point and configuration."""
    def plan(seed):
        r = _drill.drill(iterations=4, seed=seed)
        assert r["ok"], r["failures"]
        return [(s["iteration"], s["point"], s["configuration"]) for s in r["schedule"]]
    first = plan(SEED + 1)
    assert plan(SEED + 1) == first
    assert len({c for i, p, c in first}) > 1 or len({p for i, p, c in first}) > 1, first
    assert not _leftovers()


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


def test_drill_detects_a_validate_that_judges_manual_as_enforced(monkeypatch):
    """Sabotage: validate judges the Manual policy as Enforced, so a slot the producer
    chose not to stamp reads as corruption. Only Manual iterations may fail, and some must."""
    monkeypatch.setattr(_validate.ChecksumCheck, "enforced", property(
        lambda self: self.policy in (L.ChecksumPolicy.ENFORCED, L.ChecksumPolicy.MANUAL)))
    result = _drill.drill(iterations=16, seed=SEED)
    assert result["configurations"]["checksum_policy"]["MANUAL"], result["configurations"]
    failed = {f["configuration"].rsplit("/", 1)[1] for f in result["failures"]}
    assert failed == {"MANUAL"}, result["failures"]
    assert not _leftovers()
