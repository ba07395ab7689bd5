# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fresh clone is self-sufficient (issue 13): the tests once read the real pylabhub
segments from a folder beside the checkout, which a clone does not have.

The checkout's committed HEAD is cloned into an empty folder (no siblings, nothing of
this checkout's ignored or untracked files), and the suites that read those segments run
there, with no PYTHONPATH, collections path or PLH_* variable from outside.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.pylabhub.recovery.tests.conftest import REPO_ROOT

#: The suites that read tests/fixtures/pylabhub-1.0 (the segments the C++ library wrote).
FIXTURE_SUITES = ("tests/unit/test_layout_format.py", "tests/unit/test_upstream_oracle.py")


def test_the_fixture_suites_pass_in_a_fresh_clone(tmp_path):
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    empty = tmp_path / "empty"
    empty.mkdir()
    clone = empty / "pylabhub-recovery"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO_ROOT), str(clone)],
                   check=True)
    assert sorted(p.name for p in empty.iterdir()) == ["pylabhub-recovery"]
    assert any((clone / "tests" / "fixtures" / "pylabhub-1.0").glob("*.bin"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ANSIBLE_COLLECTIONS_PATH") and not k.startswith("PLH_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
                          + list(FIXTURE_SUITES), cwd=str(clone), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout and " skipped" not in proc.stdout, proc.stdout[-2000:]
