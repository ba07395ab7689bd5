"""Make the working tree importable as ``ansible_collections.pylabhub.recovery`` (the same
trick as tests/conftest.py): a temporary ``<tmp>/ansible_collections/pylabhub/recovery``
symlink to the repository root goes first on sys.path. Removed at exit."""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def setup() -> None:
    if REPO_ROOT.parts[-3:] == ("ansible_collections", "pylabhub", "recovery"):
        sys.path.insert(0, str(REPO_ROOT.parents[2]))
        return
    tmp = Path(tempfile.mkdtemp(prefix="plh-bench-"))
    ns = tmp / "ansible_collections" / "pylabhub"
    ns.mkdir(parents=True)
    (ns / "recovery").symlink_to(REPO_ROOT, target_is_directory=True)
    sys.path.insert(0, str(tmp))
    atexit.register(shutil.rmtree, str(tmp), True)
