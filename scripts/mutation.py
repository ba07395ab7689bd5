"""Mutation testing of the safety rules with cosmic-ray (not part of scripts/test: slow).

    scripts/mutation                      # every target, one after another
    scripts/mutation liveness             # one target (see TARGETS, or --list)
    scripts/mutation liveness --keep DIR  # keep the session (cosmic-ray dump/cr-report)

What it does, for each target: copies the working tree's files (tracked and untracked,
not ignored) to a scratch directory -- cosmic-ray writes each mutant to disk there, so a
run interrupted at any point never leaves a mutant in this tree -- makes one mutation
session of the target's module, keeps only the mutants inside the target's decision
functions and of the operators that change a decision (comparisons, and/or, not, True/
False, numbers, exceptions, loops, break/continue: the arithmetic swaps are left out),
runs the target's focused tests against each (``pytest -x``: the first failure kills it),
then prints the score and every survivor's diff.

Needs: this tree's ``.venv`` (scripts/bootstrap) for the tests, and cosmic-ray, installed
on first use into ``$PLH_MUTATION_VENV`` (default /tmp/plh-mutation-venv) from PyPI --
never into the CI venv. Root for the tests that use namespaces. Exit status: 0 when
every target reached ``--min-score`` (default 95), 1 otherwise, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PLH_MUTATION_VENV", "/tmp/plh-mutation-venv"))
COSMIC_RAY = "cosmic-ray==8.7.0"
MU = "plugins/module_utils/"

# name: (module, decision functions (None = the whole module), focused tests)
TARGETS = {
    "liveness": (MU + "_liveness.py", ("judge", "_from_scan", "_matched", "_partial"),
                 ("tests/unit/test_liveness.py", "tests/unit/test_liveness_pinned.py")),
    "kernel": (MU + "_kernel.py",
               ("exclusive", "_shared_maps", "_candidate_fds", "_live_thread",
                "process_hold", "direct_holder", "_scope", "after", "first_seen", "holders",
                "with_pid", "has_pid", "stopped", "recovery_for"),
               ("tests/unit/test_kernel.py",)),
    "cleanup": (MU + "_cleanup.py", ("cleanup", "_clear_entry", "_complete", "_uncounted_openers",
                                     "_count_target", "_read_index_target", "_reconcile"),
                ("tests/unit/engine/test_never_steal.py", "tests/unit/engine/test_crash_recovery.py",
                 "tests/unit/engine/test_consumer_count.py", "tests/unit/engine/test_read_positions.py")),
    "readers": (MU + "_observe.py", ("_attribute", "_candidate", "_unaccounted", "openers"),
                ("tests/unit/engine/test_readers.py", "tests/unit/engine/test_refusals.py")),
    "plan": (MU + "_plan.py", ("cas", "put", "scrub", "rollback", "commit"),
             ("tests/unit/engine/test_concurrent_change.py", "tests/unit/engine/test_kill_safety.py")),
}
# Operators that change a decision; the arithmetic replacements (x + y -> x ** y ...) are
# left out: they multiply the mutants by eleven and the decision code has little arithmetic.
OPERATORS = re.compile(r"^core/(ReplaceComparisonOperator_|ReplaceAndWithOr|ReplaceOrWithAnd|"
                       r"ReplaceTrueWithFalse|ReplaceFalseWithTrue|AddNot|ReplaceUnaryOperator_"
                       r"|NumberReplacer|ExceptionReplacer|ZeroIterationForLoop|"
                       r"ReplaceBreakWithContinue|ReplaceContinueWithBreak|RemoveDecorator)")


def log(msg: str) -> None:
    print("mutation: %s" % msg, flush=True)


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if not (VENV / "bin" / "cosmic-ray").exists():
        log("installing %s into %s" % (COSMIC_RAY, VENV))
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", COSMIC_RAY], check=True)
    return VENV / "bin"


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard",
                            "-z"], stdout=subprocess.PIPE, check=True).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = REPO / rel
        if not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(src), str(dest / rel), follow_symlinks=False)


FILTER = r'''
import json, re, sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkResult, WorkerOutcome
db_path, functions, operators = sys.argv[1], json.loads(sys.argv[2]), re.compile(sys.argv[3])
kept = skipped = 0
with use_db(db_path, WorkDB.Mode.open) as db:
    for item in list(db.work_items):
        m = item.mutations[0]
        if ((functions is None or m.definition_name in functions)
                and operators.match(m.operator_name)):
            kept += 1
            continue
        skipped += 1
        db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
print(json.dumps({"kept": kept, "skipped": skipped}))
'''

SUMMARY = r'''
import json, sys
from cosmic_ray.work_db import use_db, WorkDB
from cosmic_ray.work_item import WorkerOutcome, TestOutcome
out = {"total": 0, "killed": 0, "survived": [], "incompetent": 0, "pending": 0}
with use_db(sys.argv[1], WorkDB.Mode.open) as db:
    for item, result in db.completed_work_items:
        if result.worker_outcome == WorkerOutcome.SKIPPED:
            continue
        out["total"] += 1
        m = item.mutations[0]
        if result.test_outcome == TestOutcome.SURVIVED:
            out["survived"].append({"function": m.definition_name, "operator": m.operator_name,
                                    "line": m.start_pos[0], "diff": result.diff})
        elif result.test_outcome == TestOutcome.INCOMPETENT:
            out["incompetent"] += 1
        else:
            out["killed"] += 1
    out["pending"] = len(list(db.pending_work_items))
print(json.dumps(out))
'''


def run_target(name: str, bin_dir: Path, work: Path, timeout: float) -> dict:
    module, functions, tests = TARGETS[name]
    py = str(REPO / ".venv" / "bin" / "python")
    test_cmd = "%s -m pytest -x -q -p no:cacheprovider %s" % (py, " ".join(tests))
    config = work / ("%s.toml" % name)
    session = work / ("%s.sqlite" % name)
    config.write_text(
        "[cosmic-ray]\nmodule-path = %s\ntimeout = %s\nexcluded-modules = []\n"
        "test-command = %s\n\n[cosmic-ray.distributor]\nname = \"local\"\n"
        % (json.dumps(module), timeout, json.dumps(test_cmd)))
    tree = work / "tree"
    log("%s: baseline (%s)" % (name, test_cmd))
    if subprocess.run(test_cmd, shell=True, cwd=str(tree), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, check=False).returncode != 0:
        raise SystemExit("mutation: %s: the focused tests fail without any mutant" % name)
    subprocess.run([str(bin_dir / "cosmic-ray"), "init", str(config), str(session)],
                   cwd=str(tree), check=True)
    kept = json.loads(subprocess.run(
        [str(bin_dir / "python"), "-c", FILTER, str(session),
         json.dumps(list(functions) if functions else None), OPERATORS.pattern],
        stdout=subprocess.PIPE, check=True).stdout)
    log("%s: %d mutants in %s of %s (%d others skipped)"
        % (name, kept["kept"], ", ".join(functions or ("every function",)), module,
           kept["skipped"]))
    subprocess.run([str(bin_dir / "cosmic-ray"), "exec", str(config), str(session)],
                   cwd=str(tree), check=True)
    return json.loads(subprocess.run([str(bin_dir / "python"), "-c", SUMMARY, str(session)],
                                     stdout=subprocess.PIPE, check=True).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("targets", nargs="*", help="targets to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("--keep", help="keep the scratch tree and sessions in this directory")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    ap.add_argument("--min-score", type=float, default=95.0)
    args = ap.parse_args()
    if args.list:
        for name, (module, functions, tests) in TARGETS.items():
            print("%-9s %s: %s\n          tests: %s"
                  % (name, module, ", ".join(functions), " ".join(tests)))
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        print("mutation: unknown target(s) %s (--list)" % ", ".join(unknown), file=sys.stderr)
        return 2
    if not (REPO / ".venv" / "bin" / "python").exists():
        print("mutation: no .venv here: run scripts/bootstrap first", file=sys.stderr)
        return 2
    bin_dir = ensure_venv()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="plh-mutation-"))
    work.mkdir(parents=True, exist_ok=True)
    ok = True
    try:
        if not (work / "tree").exists():
            copy_tree(work / "tree")
        for name in args.targets or list(TARGETS):
            out = run_target(name, bin_dir, work, args.timeout)
            scored = out["killed"] + len(out["survived"])
            score = 100.0 * out["killed"] / scored if scored else 100.0
            ok = ok and score >= args.min_score and not out["pending"]
            log("%s: %d mutants, %d killed, %d survived, %d incompetent, %d not run: "
                "score %.1f %%" % (name, out["total"], out["killed"], len(out["survived"]),
                                   out["incompetent"], out["pending"], score))
            for s in out["survived"]:
                print("--- survivor: %s line %d, %s\n%s"
                      % (s["function"], s["line"], s["operator"], s["diff"]))
    finally:
        if not args.keep:
            shutil.rmtree(str(work), ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
