"""The README's walkthrough ("Your first recovery in five minutes"), run verbatim.

Every ``$ `` line of the section's ``console`` blocks is run exactly as written, in
order, by bash, with ``datablock-admin`` on PATH, inside private mount and PID namespaces
(the kernel scan is complete there, as for root on an ordinary host) whose /dev/shm is a
fresh tmpfs (the walkthrough's block is ``my_datablock``: nothing of this
machine's, nor of a parallel test run, can be touched or seen). Each step must exit with
the code its ``# exit N`` comment names (0 without one), and its key output line as the
README shows it -- the ``result:`` line, else the first line -- must be in the real
output (numbers of three digits or more, pids and times, are wildcards).

After a wording change, ``python tests/unit/cli/test_readme_walkthrough.py`` prints the
section's console blocks with fresh real output (``--write`` puts them in the README).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, NamedTuple, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
SECTION = "## Your first recovery in five minutes"


class Step(NamedTuple):
    command: str            # verbatim, as the README writes it
    rc: int                 # from its "# exit N" comment, 0 without one
    shown: List[str]        # the output the README shows under it


def section(text: str) -> str:
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end >= 0 else len(text)]


def blocks(text: str) -> List[List[str]]:
    """The lines of each ``console`` block of the walkthrough section."""
    return [b.split("\n") for b in re.findall(r"```console\n(.*?)```", section(text), re.S)]


def steps(text: str) -> List[Step]:
    out = []  # type: List[Step]
    for block in blocks(text):
        for line in block:
            if line.startswith("$ "):
                command = line[2:]
                m = re.search(r"#\s*exit (\d+)", command)
                out.append(Step(command, int(m.group(1)) if m else 0, []))
            elif out and line.strip():
                out[-1].shown.append(line)
    return out


def key_line(shown: List[str]) -> str:
    results = [line for line in shown if line.strip().startswith("result:")]
    return (results or shown or [""])[0].strip()


def pattern(line: str) -> "re.Pattern[str]":
    """The key line with every number of 3+ digits (pids, ids) as a wildcard."""
    parts = re.split(r"\d{3,}", line)
    return re.compile(r"\d{3,}".join(re.escape(p) for p in parts))


def run(commands: List[str], workdir: Path) -> List[Tuple[int, str]]:
    """Run ``commands`` verbatim, in order, in one private mount namespace whose /dev/shm
    is a fresh tmpfs; each one's exit code and output (stdout then stderr)."""
    bindir = workdir / "bin"
    bindir.mkdir()
    shim = bindir / "datablock-admin"
    shim.write_text("#!/bin/sh\nexec %s -m pylabhub.recovery.cli \"$@\"\n" % sys.executable)
    shim.chmod(0o755)
    # /dev/shm mounted a moment after the namespace's PID 1 began: provably private to it
    # (the fleet lab's hosts do the same), so the scan's scope is "namespace", complete.
    # Pids from 4000 on, as on a real host (and wildcards in the key lines, see pattern).
    script = ["set -u", "echo 4000 >/proc/sys/kernel/ns_last_pid", "sleep 0.1",
              "mount -t tmpfs -o mode=1777,size=64m plh-walkthrough /dev/shm"]
    for i, command in enumerate(commands):
        script += ["{ %s\n} >%s/out.%d 2>%s/err.%d </dev/null" % (command, workdir, i, workdir, i),
                   "echo $? >%s/rc.%d" % (workdir, i)]
    script.append("datablock-admin practice --stop >/dev/null 2>&1 || true")
    (workdir / "walk.sh").write_text("\n".join(script) + "\n")
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ.get("PATH", "")),
               NO_COLOR="1", COLUMNS="100")
    # A private PID namespace too: its /proc shows every process that could have the
    # fresh /dev/shm open, so the kernel scan is complete (scope "namespace") -- what a
    # root user sees on an ordinary host (scope "host"), whatever this machine hides.
    subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                    "--mount-proc", "bash", str(workdir / "walk.sh")],
                   env=env, check=True, timeout=600)
    results = []
    for i in range(len(commands)):
        rc = int((workdir / ("rc.%d" % i)).read_text())
        text = (workdir / ("out.%d" % i)).read_text() + (workdir / ("err.%d" % i)).read_text()
        results.append((rc, text))
    return results


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a private /dev/shm")
def test_walkthrough_runs_verbatim(tmp_path):
    text = README.read_text()
    walk = steps(text)
    commands = [s.command for s in walk]
    # the seed procedure's four scenarios, each on a practice block, as the table has them
    for wanted in ("datablock-admin practice stuck_writer",
                   "datablock-admin diagnose my_datablock --slot 0",
                   "datablock-admin recover my_datablock --slot 0 --action release_writer",
                   "datablock-admin practice stuck_readers",
                   "datablock-admin recover my_datablock --slot 0 --action release_readers",
                   "datablock-admin practice dead_consumers",
                   "datablock-admin cleanup my_datablock",
                   "datablock-admin practice corruption",
                   "datablock-admin validate my_datablock",
                   "datablock-admin validate my_datablock --repair",
                   "datablock-admin practice --stop"):
        assert any(c.split("#")[0].strip() == wanted for c in commands), wanted
    assert all(s.shown for s in walk), "every step shows its output"
    results = run(commands, tmp_path)
    for step, (rc, out) in zip(walk, results):
        assert "Traceback" not in out, (step.command, out)
        assert rc == step.rc, "%s: exit %d, README says %d\n%s" % (step.command, rc, step.rc,
                                                                   out)
        key = key_line(step.shown)
        assert pattern(key).search(out), "%s: %r not in\n%s" % (step.command, key, out)


def main(argv: List[str]) -> int:
    """Print the walkthrough's console blocks with fresh real output (--write: into the
    README). Run from the repository with PYTHONPATH as the tests set it."""
    text = README.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        walk = steps(text)
        results = iter(run([s.command for s in walk], Path(tmp)))
    new_blocks = []
    for block in blocks(text):
        lines = []
        for line in block:
            if line.startswith("$ "):
                rc, out = next(results)
                lines.append(line)
                lines += [o.rstrip() for o in out.rstrip("\n").split("\n")]
        new_blocks.append("\n".join(lines) + "\n")
    old = section(text)
    new = old
    for block, fresh in zip(re.findall(r"```console\n(.*?)```", old, re.S), new_blocks):
        new = new.replace("```console\n" + block + "```", "```console\n" + fresh + "```", 1)
    if "--write" in argv:
        README.write_text(text.replace(old, new))
    else:
        print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
