"""One rule for "healthy": diagnose, validate and heal agree (same block, same moment, same
word), over every crash state real processes leave (``ScratchBlocks.crashed``), before heal and
after it, with the exit code the CLI derives from each."""

from __future__ import annotations

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E

from .helpers import complete_scope, SCENARIOS

# the CLI's exit-code mapping is checked too; the collection artifact ships this file
# without the CLI package, and there the module is skipped (it runs in the repository)
exit_code = pytest.importorskip("pylabhub.recovery.cli").exit_code


def verdict(result):
    return (result["health"], result["healthy"], result["stuck_slots"],
            result["suspect_slots"])


def same_moment(name):
    d, v = E.diagnose(name), E.validate(name)
    assert verdict(d) == verdict(v), (d["findings"], v["findings"])
    assert d["next_steps"] == v["next_steps"]
    assert exit_code("diagnose", d) == exit_code("validate", v) == (0 if d["healthy"] else 1)
    return d


@pytest.mark.parametrize("evidence", [True, False], ids=["evidence", "plain"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_diagnose_validate_heal_agree(lab, scenario, evidence):
    crash = lab.crashed(scenario, evidence)
    complete = complete_scope(crash.name)
    before = same_moment(crash.name)
    assert not before["healthy"]                       # every crash state is noticed
    if scenario == "consumer":
        assert before["health"] == "degraded"          # a dead consumer's entry: a warning
    elif scenario == "draining_live_writer" and not (evidence and complete):
        assert before["health"] == "suspect"           # nothing proves the reader gone
    else:
        assert before["health"] == "stuck" and before["stuck_slots"] == [crash.slot]

    predicted = E.heal(crash.name, dry_run=True)
    healed = E.heal(crash.name)
    assert verdict(predicted["after"]) == verdict(healed["after"])
    assert predicted["health"] == healed["health"] == healed["after"]["health"]
    if crash.writer is not None and evidence and complete:
        crash.writer.recv()                            # the freed writer finishes first
    after = same_moment(crash.name)
    assert verdict(after) == verdict(healed["after"])
    assert healed["healthy"] == after["healthy"] == (not healed["refused"])
    if scenario == "draining_live_writer" and not (evidence and complete):
        assert exit_code("heal", healed) == 3 and after["health"] == "suspect"
    else:
        assert exit_code("heal", healed) == 0 and after["health"] == "healthy"
