"""Fuzzing: damaged blocks never crash, escape, write or go unflagged (issue 7).

The campaign itself is ``fuzz_blocks.py`` (hypothesis); it runs in a child process so a
read outside the mapping (SIGSEGV/SIGBUS) is a test failure, not a dead test run.
Bounded for CI (300 random images plus the directed sweep, a few seconds); longer runs:
``PLH_FUZZ_EXAMPLES=20000 pytest tests/reliability/test_fuzz.py`` or
``python benchmarks/fuzz_long.py --examples 20000``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_fuzzed_blocks_never_crash_write_or_go_unflagged(fixtures_dir, figures):
    examples = int(os.environ.get("PLH_FUZZ_EXAMPLES", "300"))
    timeout = max(120, examples)                       # ~25 ms per image
    cmd = [sys.executable, str(HERE / "fuzz_blocks.py"), "--examples", str(examples),
           "--fixtures", str(fixtures_dir), "--json"]
    if os.environ.get("PLH_FUZZ_SEED"):
        cmd += ["--seed", os.environ["PLH_FUZZ_SEED"]]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail("fuzz campaign did not finish in %d s:\n%s" % (timeout, exc.stderr))
    if proc.returncode < 0:
        pytest.fail("fuzz child died of %s (a read/write outside the mapped file?):\n%s"
                    % (signal.Signals(-proc.returncode).name, proc.stderr[-6000:]))
    assert proc.returncode == 0, "fuzz campaign failed:\n%s" % proc.stderr[-8000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["random_images"] >= examples
    assert summary["directed_images"] >= 100
    assert {"a_fixture", "b_fixture", "f_fixture", "flex_sync"} <= set(summary["bases"])
    flagged = summary["findings_expected_and_flagged"]
    for code in ("checksum-mismatch", "unsupported-layout", "invalid-slot-state",
                 "reader-count-underflow", "consumer-count-mismatch", "index-inconsistent",
                 "flexzone-checksum-mismatch", "truncated"):
        assert flagged.get(code), "no image exercised %s" % code
    assert set(summary["verdicts"]) == {"not-a-datablock", "not-ready", "truncated"}
    figures["images fuzzed"] = "%d (%d random, %d directed; %d engine calls; %.1f s)" % (
        summary["images_fuzzed"], summary["random_images"], summary["directed_images"],
        summary["engine_calls"], summary["seconds"])
    # geometry and sparseness: huge claims, a few islands, nothing allocated or changed
    assert summary["sparse_images"] >= 20
    assert summary["sparse_allocated_bytes_added"] == 0
    figures["sparse images fuzzed"] = (
        "%d (%d engine calls, %d over-budget refusals, %.1f TB claimed, %d bytes allocated, "
        "%.1f s)" % (summary["sparse_images"], summary["sparse_engine_calls"],
                     summary["sparse_over_budget_refusals"],
                     summary["sparse_claimed_bytes"] / 1e12,
                     summary["sparse_allocated_bytes_added"], summary["sparse_seconds"]))
