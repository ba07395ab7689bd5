"""Long fuzzing campaign (issue 7): tests/reliability/fuzz_blocks.py with many more
hypothesis examples, in a child process (a read outside a mapping would kill it: that is
reported, not hidden). Prints the campaign summary; exits non-zero on any failure.

    python benchmarks/fuzz_long.py [--examples 5000] [--sparse-examples 1000] [--seed S]

About 25 ms per image: 5,000 examples take 2 to 3 minutes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.join(os.path.dirname(HERE), "tests", "reliability", "fuzz_blocks.py")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--sparse-examples", type=int, default=1000,
                    help="sparse/huge-geometry images (0 bytes may be allocated)")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    cmd = [sys.executable, FUZZ, "--examples", str(args.examples),
           "--sparse-examples", str(args.sparse_examples)]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    t0 = time.monotonic()
    rc = subprocess.call(cmd)
    if rc < 0:
        died = signal.Signals(-rc).name
        print("fuzz child died of %s after %.0f s" % (died, time.monotonic() - t0))
        return 2
    print("exit %d after %.1f s" % (rc, time.monotonic() - t0))
    return rc


if __name__ == "__main__":
    sys.exit(main())
