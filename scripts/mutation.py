"""Mutation testing of the safety rules with cosmic-ray (not part of scripts/test: slow).

    scripts/mutation                      # every target, one after another
    scripts/mutation liveness             # one target (see TARGETS, or --list)
    scripts/mutation liveness --keep DIR  # keep the session (cosmic-ray dump/cr-report)
    scripts/mutation cleanup --workers 6  # six mutants at once (http workers, a tree each)
    scripts/mutation cleanup --keep DIR --rerun-survivors   # the kept session's survivors
                                          # and timeouts (and any not run yet), against today's tests

What it does, for each target: copies the working tree's files (tracked and untracked,
not ignored) to a scratch directory -- cosmic-ray writes each mutant to disk there, so a
run interrupted at any point never leaves a mutant in this tree -- makes one mutation
session of the target's module, keeps only the mutants inside the target's decision
functions and of the operators that change a decision (comparisons, and/or, not, True/
False, numbers, exceptions, loops, break/continue: the arithmetic swaps are left out),
runs the target's focused tests against each (``pytest -x``: the first failure kills it),
then prints the score and every survivor's diff. A mutant whose tests outlast
``--timeout`` is counted killed by cosmic-ray: the summary says how many were.

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
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PLH_MUTATION_VENV", "/tmp/plh-mutation-venv"))
COSMIC_RAY = "cosmic-ray==8.7.0"
MU = "plugins/module_utils/"

# name: (module, decision functions (None = the whole module), focused tests: the quick
# ones on the target's rules first, since ``pytest -x`` stops a mutant's run at the first
# failure and only a survivor pays for the whole list)
TARGETS = {
    "liveness": (MU + "_liveness.py", ("judge", "_from_scan", "_matched", "_partial"),
                 ("tests/unit/test_liveness.py", "tests/unit/test_liveness_pinned.py")),
    "kernel": (MU + "_kernel.py",
               ("exclusive", "_shared_maps", "_candidate_fds", "_live_thread",
                "process_hold", "direct_holder", "_scope", "after", "first_seen", "holders",
                "with_pid", "has_pid", "stopped", "recovery_for"),
               # the liveness tests judge holders on real scans (namespaces, stopped,
               # zombies, unreadable /proc): the kernel's rules under its callers
               ("tests/unit/test_kernel_pinned.py", "tests/unit/test_kernel_races.py",
                "tests/unit/test_kernel.py",
                "tests/unit/test_liveness_pinned.py",
                "tests/unit/test_liveness.py", "tests/unit/engine/test_readers_pinned.py")),
    "cleanup": (MU + "_cleanup.py", ("cleanup", "_clear_entry", "_complete", "_uncounted_openers",
                                     "_count_target", "_read_index_target", "_reconcile"),
                ("tests/unit/engine/test_cleanup_pinned.py", "tests/unit/engine/test_settle_once.py",
                 "tests/unit/engine/test_consumer_count.py", "tests/unit/engine/test_read_positions.py",
                 "tests/unit/engine/test_never_steal.py", "tests/unit/engine/test_crash_recovery.py")),
    "readers": (MU + "_observe.py", ("_attribute", "_candidate", "_unaccounted", "openers"),
                ("tests/unit/engine/test_readers_pinned.py", "tests/unit/engine/test_readers.py",
                 "tests/unit/engine/test_refusals.py")),
    "plan": (MU + "_plan.py", ("cas", "put", "scrub", "rollback", "commit"),
             ("tests/unit/engine/test_plan_pinned.py", "tests/unit/engine/test_concurrent_change.py",
              "tests/unit/engine/test_kill_safety.py")),
    # issue 10's "release" and "repair" code: _recover's release decisions and
    # _validate's repair (re-bless) decisions
    "release": (MU + "_recover.py", ("_after_writer", "_refusal", "plan_slot", "_apply",
                                     "roll_back_write_index", "torn", "scrub_slot"),
                ("tests/unit/engine/test_release_pinned.py", "tests/unit/engine/test_refusals.py",
                 "tests/unit/engine/test_pinned_rules.py", "tests/unit/engine/test_crash_recovery.py",
                 "tests/unit/engine/test_kill_safety.py", "tests/unit/engine/test_upstream_agrees.py",
                 "tests/unit/engine/test_concurrent_change.py")),
    "repair": (MU + "_validate.py", ("index_step", "_settle_slot", "_settle_flex", "_rebless",
                                     "_rebless_slots", "_flex_writer_alive", "_rebless_flex"),
               ("tests/unit/engine/test_repair_pinned.py", "tests/unit/engine/test_pinned_rules.py",
                "tests/unit/engine/test_corruption.py", "tests/unit/engine/test_checksum_policies.py",
                "tests/unit/engine/test_concurrent_change.py")),
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
out = {"total": 0, "killed": 0, "timeouts": 0, "survived": [], "incompetent": 0,
       "errors": 0, "pending": 0}
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
        elif result.test_outcome == TestOutcome.KILLED:
            out["killed"] += 1
            # cosmic-ray counts a test run past --timeout as killed: said apart
            out["timeouts"] += (result.output or "").strip() == "timeout"
        else:  # the worker itself failed (an http worker lost, ...): nothing was tested
            out["errors"] += 1
    out["pending"] = len(list(db.pending_work_items))
print(json.dumps(out))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_workers(bin_dir: Path, work: Path, count: int) -> list:
    """Start ``count`` cosmic-ray http workers, each in a tree copy of its own (a worker
    writes its mutant to disk: two workers may not share a tree). Returns (url, process)."""
    workers: list = []
    try:
        _start_workers(bin_dir, work, count, workers)
    except BaseException:
        stop_workers(workers)
        raise
    return workers


def _start_workers(bin_dir: Path, work: Path, count: int, workers: list) -> None:
    for i in range(count):
        tree = work / ("tree-w%d" % i)
        port = free_port()
        proc = subprocess.Popen([str(bin_dir / "cosmic-ray"), "http-worker", "--port", str(port)],
                                cwd=str(tree), stdout=subprocess.DEVNULL,
                                stderr=open(str(work / ("worker-%d.log" % i)), "ab"))
        workers.append(("http://127.0.0.1:%d" % port, proc))
    deadline = time.monotonic() + 600   # importing cosmic-ray takes minutes on a loaded host
    for url, proc in workers:  # wait until each listens
        port = int(url.rsplit(":", 1)[1])
        while True:
            if proc.poll() is not None:
                raise SystemExit("mutation: http worker %s exited (%s)" % (url, proc.returncode))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("mutation: http worker %s does not listen" % url)
                time.sleep(0.2)


def stop_workers(workers: list) -> None:
    for _url, proc in workers:
        proc.terminate()
    for _url, proc in workers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_target(name: str, bin_dir: Path, work: Path, timeout: float, urls=(),
               rerun: bool = False) -> dict:
    module, functions, tests = TARGETS[name]
    py = str(REPO / ".venv" / "bin" / "python")
    test_cmd = "%s -m pytest -x -q -p no:cacheprovider %s" % (py, " ".join(tests))
    config = work / ("%s.toml" % name)
    session = work / ("%s.sqlite" % name)
    distributor = ("[cosmic-ray.distributor]\nname = \"http\"\n\n"
                   "[cosmic-ray.distributor.http]\nworker-urls = %s\n" % json.dumps(list(urls))
                   if urls else "[cosmic-ray.distributor]\nname = \"local\"\n")
    config.write_text(
        "[cosmic-ray]\nmodule-path = %s\ntimeout = %s\nexcluded-modules = []\n"
        "test-command = %s\n\n%s"
        % (json.dumps(module), timeout, json.dumps(test_cmd), distributor))
    tree = work / "tree"
    log("%s: baseline (%s)" % (name, test_cmd))
    if subprocess.run(test_cmd, shell=True, cwd=str(tree), stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL, check=False).returncode != 0:
        raise SystemExit("mutation: %s: the focused tests fail without any mutant" % name)
    if rerun and session.exists():
        # The same session's mutants: only the survivors (and any a lost worker left
        # untested) are run again, against the tests as they are now.
        with sqlite3.connect(str(session)) as db:
            # a run past --timeout on a loaded host proves nothing: run it again too
            reset = db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED' OR "
                               "(test_outcome IS NULL AND worker_outcome != 'SKIPPED') OR "
                               "(test_outcome = 'KILLED' AND trim(output) = 'timeout')").rowcount
        log("%s: re-running %d survivors and timeouts of %s" % (name, reset, session))
    else:
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
    ap.add_argument("--workers", type=int, default=1,
                    help="mutants tested at once (cosmic-ray http workers, a tree copy each)")
    ap.add_argument("--rerun-survivors", action="store_true",
                    help="with --keep: run the kept session's survivors (and timeouts) again")
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
    workers = []
    # a SIGTERM stops the http workers too (the finally below), never leaves them behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        copy_tree(work / "tree")  # again on every run: a re-run sees the tests as they are now
        if args.workers > 1:
            if args.timeout > 280:  # the http distributor's client gives up after 300 s
                log("--timeout %g lowered to 280 s with http workers" % args.timeout)
                args.timeout = 280.0
            for i in range(args.workers):
                copy_tree(work / ("tree-w%d" % i))
            workers = start_workers(bin_dir, work, args.workers)
        for name in args.targets or list(TARGETS):
            out = run_target(name, bin_dir, work, args.timeout, [u for u, _p in workers],
                             args.rerun_survivors)
            scored = out["killed"] + len(out["survived"])
            score = 100.0 * out["killed"] / scored if scored else 100.0
            ok = ok and score >= args.min_score and not out["pending"]
            ok = ok and not out["errors"]
            log("%s: %d mutants, %d killed (%d of them by the timeout), %d survived, "
                "%d incompetent, %d worker errors, %d not run: score %.1f %%"
                % (name, out["total"], out["killed"], out["timeouts"], len(out["survived"]),
                   out["incompetent"], out["errors"], out["pending"], score))
            for s in out["survived"]:
                print("--- survivor: %s line %d, %s\n%s"
                      % (s["function"], s["line"], s["operator"], s["diff"]))
    finally:
        stop_workers(workers)
        if not args.keep:
            shutil.rmtree(str(work), ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
