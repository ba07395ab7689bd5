"""The never-steal campaign, bounded for CI (the driver and its rules:
``tests/reliability/never_steal.py``).

Two runs of random scenarios, each from a seed printed on failure:

* **here**, in this machine's PID namespace: the scope of the kernel scan may be partial
  (in a container PID 1 is often unreadable even to root); every unforced operation is
  checked for steals, and a dead holder left held must have a verdict that is not
  ``dead`` in a partial scope;
* **in a namespace host** (new PID and mount namespaces, a private /dev/shm: the fleet
  lab's kind of host), where the scope is complete: every dead holder must be released.

``PLH_NEVER_STEAL_SCENARIOS`` sets the scenarios of each run (default 10),
``PLH_NEVER_STEAL_SEED`` the seed (default: the time).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import never_steal as N  # noqa: E402

from ansible_collections.pylabhub.recovery.tests.support import in_namespace_host  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                       reason="needs root (chosen pids, namespaces) and unshare(1)"),
]

SCENARIOS = int(os.environ.get("PLH_NEVER_STEAL_SCENARIOS", "10"))
SEED = int(os.environ.get("PLH_NEVER_STEAL_SEED", str(int(time.time()))))


def test_never_steal_here(figures):
    fig = N.campaign(SCENARIOS, SEED)
    assert fig.scenarios == SCENARIOS and fig.steals == 0
    assert fig.operations == 6 * SCENARIOS
    figures["never-steal (this PID namespace, seed %d)" % SEED] = fig.line()


NAMESPACE_CAMPAIGN = textwrap.dedent("""
    import dataclasses
    sys.path.insert(0, %r)
    import never_steal as N
    fig = N.campaign(%d, %d)
    print(json.dumps(dataclasses.asdict(fig)))
""")


def test_never_steal_in_a_namespace_host_releases_every_dead_holder(figures):
    out = in_namespace_host(NAMESPACE_CAMPAIGN % (str(HERE), SCENARIOS, SEED + 1),
                            timeout=120 + 20 * SCENARIOS)
    fig = N.Figures(**out)
    assert fig.scenarios == SCENARIOS and fig.steals == 0, json.dumps(out)
    # the scope is complete here: no dead holder kept for want of evidence
    assert fig.dead_partial == 0 and fig.dead_released == fig.dead > 0, json.dumps(out)
    assert fig.readers_kept_partial == 0, json.dumps(out)
    figures["never-steal (namespace host, seed %d)" % (SEED + 1)] = fig.line()
