"""Benchmark: the long crash campaign (issue 7). Real producer/consumer processes are
SIGKILLed at seeded protocol points, the block is healed and checked (the crash drill,
``_drill.drill``), over several seeds; each iteration's block configuration is drawn
from the 54-cell matrix (``_layout.CONFIGURATIONS``). Prints kills survived / kills,
committed slots checked and lost (must be 0), iterations per value of each configuration
dimension and failures per cell, seconds and kills/s; exits 1 if anything was lost, an
iteration failed or a dimension value was never exercised. Run from anywhere:

    python benchmarks/bench_crash_campaign.py [--seeds 1 2 3 4] [--iterations 250]

Defaults: 4 seeds x 250 iterations (about 1,400 SIGKILLs, about a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _path  # noqa: E402

_path.setup()

from ansible_collections.pylabhub.recovery.plugins.module_utils import (  # noqa: E402
    _drill, _layout as L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--iterations", type=int, default=250, help="per seed")
    ap.add_argument("--min-kills", type=int, default=1000,
                    help="fail unless at least this many SIGKILLs were delivered")
    args = ap.parse_args()
    totals = dict(iterations=0, survived=0, kills=0, kills_survived=0, checked=0, lost=0)
    points = {}
    failures = []
    used = []
    t0 = time.monotonic()
    for seed in args.seeds:
        r = _drill.drill(iterations=args.iterations, seed=seed)
        failed_kills = sum(int(f["killed"]) for f in r["failures"])
        totals["iterations"] += r["iterations"]
        totals["survived"] += r["survived"]
        totals["kills"] += r["kills"]
        totals["kills_survived"] += r["kills"] - failed_kills
        totals["checked"] += r["committed_checked"]
        totals["lost"] += r["committed_lost"]
        for p, n in r["points"].items():
            points[p] = points.get(p, 0) + n
        used += [s["configuration"] for s in r["schedule"]]
        failures += [(seed, f["iteration"], "%s, %s" % (f["point"], f["configuration"]),
                      f["problems"]) for f in r["failures"]]
        print("seed %d: %d/%d iterations survived, %d kills, %d committed checked, %d lost, "
              "%.1f s" % (seed, r["survived"], r["iterations"], r["kills"],
                          r["committed_checked"], r["committed_lost"], r["seconds"]))
    secs = time.monotonic() - t0
    print("protocol points: %s" % ", ".join("%s %d" % kv for kv in sorted(points.items())))
    cells = {c.cell: c for c in L.CONFIGURATIONS}
    counts = L.matrix_counts(cells[u] for u in used)
    unused = []
    for dim, dummy, labels in L.MATRIX_DIMENSIONS:
        print("%s: %s" % (dim, ", ".join("%s %d" % (v, counts[dim][v]) for v in labels)))
        unused += ["%s=%s" % (dim, v) for v in labels if not counts[dim][v]]
    print("configuration cells used: %d of %d" % (len(counts["cells"]), len(cells)))
    failed_cells = {}
    for seed, i, where, problems in failures:
        cell = where.split(", ", 1)[1]
        failed_cells[cell] = failed_cells.get(cell, 0) + 1
    for cell, n in sorted(failed_cells.items()):
        print("failed in %s: %d of %d" % (cell, n, counts["cells"][cell]))
    print("kills survived / kills: %d / %d" % (totals["kills_survived"], totals["kills"]))
    print("iterations survived / iterations: %d / %d" % (totals["survived"],
                                                         totals["iterations"]))
    print("committed slots checked: %d" % totals["checked"])
    print("committed slots lost: %d" % totals["lost"])
    print("seconds: %.1f  (%.1f kills/s)" % (secs, totals["kills"] / secs))
    for seed, i, point, problems in failures[:20]:
        print("FAILED seed %d iteration %d (%s): %s" % (seed, i, point, "; ".join(problems)))
    ok = (not failures and totals["lost"] == 0 and totals["kills"] >= args.min_kills
          and not unused)
    if unused:
        print("configuration values never exercised: %s" % ", ".join(unused))
    if totals["kills"] < args.min_kills:
        print("only %d kills (< --min-kills %d)" % (totals["kills"], args.min_kills))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
