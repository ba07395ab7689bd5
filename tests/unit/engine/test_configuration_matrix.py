"""Every configuration (issue 12): the 54 cells of ``_layout.CONFIGURATIONS`` (buffer policy
x consumer sync x flexible zone x checksum policy), each with our own producer and
consumers SIGKILLed at protocol points (mid-write, inside a read, idle holding a read
position) next to a live consumer heartbeating every 3 ms while heal runs, one heal
without force, then the checks of ``matrix_cells`` (read its docstring for the scenario).

pylabhub's creator accepts every cell (it refuses only an Unset policy or sync, a page
size left unset and a capacity of 0; the buffer policy does not constrain the sync, the
flexible zone or the checksum policy), so no cell is refused here.

All cells run in one private mount + PID namespace with a fresh /dev/shm (as the README
walkthrough test does): there the kernel scan is complete, as for root on an ordinary
host, whatever this machine's own scope. One program runs them all (one interpreter and
one namespace; three programs share the cells, which spend most of their time in heal's
settle looks), printing one result per cell; each cell is then one test here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _layout as L

CELLS = Path(__file__).with_name("matrix_cells.py")
NEEDS = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                           reason="needs root and unshare for a private /dev/shm")
pytestmark = [pytest.mark.slow, NEEDS]


@pytest.fixture(scope="module")
def results():
    """Run every cell once, in the namespace; {cell: result}."""
    script = ("sleep 0.1 && mount -t tmpfs -o mode=1777,size=64m plh-matrix /dev/shm && "
              '"$0" "$@"')
    # /dev/shm mounted a moment after the namespace's PID 1 (this shell) began: provably
    # private to it, so the scan's scope is "namespace", complete.
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
         "sh", "-c", script, sys.executable, str(CELLS), "--workers", "3"]
        + [str(i) for i in range(len(L.CONFIGURATIONS))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900, check=False)
    out = {}
    for line in proc.stdout.decode().splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            out[r["cell"]] = r
    out["_stderr"] = proc.stderr.decode()[-3000:]
    return out


@pytest.mark.parametrize("cell", [c.cell for c in L.CONFIGURATIONS])
def test_cell_survives_kills_and_heals_to_a_usable_block(results, cell):
    r = results.get(cell)
    assert r is not None, "cell never reported: %s" % results["_stderr"]
    assert r["problems"] == [], "\n".join(r["problems"])
    cfg = {c.cell: c for c in L.CONFIGURATIONS}[cell]
    assert r["kills"] == 3 and r["committed_checked"] >= 1, r
    assert r["valid"] and r["health"] == "healthy", r
    if cfg.checksum == L.ChecksumPolicy.MANUAL:
        # the producer left slots unstamped and validate called them information
        assert r["unverified_slots"] and "checksum-unstamped" in r["finding_codes"], r
    if cfg.checksum == L.ChecksumPolicy.ENFORCED:
        assert r["unverified_slots"] == [], r
    if cfg.sync == L.ConsumerSync.SEQUENTIAL_SYNC:
        # the dead consumers' positions held read_index before heal; heal never lowers it
        # (matrix_cells checks the value: the live consumer's position, at most the latest
        # commit -- here the dead ones' own, so it stays -- and in a one-slot ring raised)
        assert r["pinned_before_heal"] and r["read_index"][1] >= r["read_index"][0], r
        if cfg.policy == L.Policy.SINGLE:
            assert r["read_index"][1] > r["read_index"][0], r
    else:
        assert r["read_index"][0] == r["read_index"][1], r


def test_matrix_is_every_combination_once():
    cells = [c.cell for c in L.CONFIGURATIONS]
    assert len(cells) == len(set(cells)) == 3 * 3 * 2 * 3 == 54
    assert {c.capacity(4) for c in L.CONFIGURATIONS if c.policy == L.Policy.SINGLE} == {1}
    assert {c.capacity(4) for c in L.CONFIGURATIONS
            if c.policy == L.Policy.DOUBLE_BUFFER} == {2}
    counts = L.matrix_counts(L.CONFIGURATIONS)
    assert counts["consumer_sync"] == {"LATEST_ONLY": 18, "SEQUENTIAL": 18,
                                       "SEQUENTIAL_SYNC": 18}
    assert counts["flex_size"] == {"0": 27, "4096": 27} and len(counts["cells"]) == 54
