"""Root conftest: every test exercises the working tree, never an installed copy.

At session start a temporary ``<tmp>/ansible_collections/pylabhub/recovery`` symlink
to the repository root is created (unless the repository already sits at such a path,
as under scripts/ansible-test); ``<tmp>`` and ``<repo>/src`` go first on
``sys.path`` and, for subprocesses (CLI, ansible-playbook, helpers), into
``PYTHONPATH`` and ``ANSIBLE_COLLECTIONS_PATH``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = REPO_ROOT / "src"

_STATE = {}
_SHM_COUNTER = itertools.count(1)


def _prepend_env_path(name, *entries):
    old = os.environ.get(name)
    _STATE.setdefault("env", {}).setdefault(name, old)
    parts = [str(e) for e in entries]
    if old:
        parts.extend(p for p in old.split(os.pathsep) if p and p not in parts)
    os.environ[name] = os.pathsep.join(parts)


MARKERS = (  # also in pyproject.toml; repeated here for ansible-test units (own ini)
    "slow: long-running test (real processes, timeouts); deselect with -m 'not slow'",
    "fleet: needs the multi-host demo fleet (ssh to containers/namespaces)",
)


def pytest_configure(config):
    """Create the collection symlink tree and point sys.path/env at the working tree."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    if "tmp" in _STATE:  # configure may run more than once (pytester); set up once
        return
    if REPO_ROOT.parts[-3:] == ("ansible_collections", "pylabhub", "recovery"):
        # Already laid out as a collection (e.g. under scripts/ansible-test): use it
        # as is; ansible-test's pytest plugin insists on its own collection path.
        tmp = REPO_ROOT.parents[2]
    else:
        tmp = Path(tempfile.mkdtemp(prefix="plh-collections-"))
        ns_dir = tmp / "ansible_collections" / "pylabhub"
        ns_dir.mkdir(parents=True)
        (ns_dir / "recovery").symlink_to(REPO_ROOT, target_is_directory=True)
        _STATE["cleanup"] = tmp
    _STATE["tmp"] = tmp

    for entry in (str(SRC_DIR), str(tmp)):  # final order: <tmp>, <repo>/src, ...
        while entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    _prepend_env_path("PYTHONPATH", tmp, SRC_DIR)
    _STATE.setdefault("env", {}).setdefault(
        "ANSIBLE_COLLECTIONS_PATH", os.environ.get("ANSIBLE_COLLECTIONS_PATH"))
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = str(tmp)
    # Before-images and audit lines of the tests' real runs go to a scratch directory,
    # not to the machine's /var/lib and /var/log (tests that check them set their own).
    record = Path(tempfile.mkdtemp(prefix="plh-record-"))
    _STATE["record"] = record
    for name, value in (("PYLABHUB_RECOVERY_SNAPSHOT_DIR", record / "snapshots"),
                        ("PYLABHUB_RECOVERY_AUDIT_LOG", record / "audit.jsonl"),
                        ("PYLABHUB_RECOVERY_SYSLOG", "off")):
        _STATE["env"].setdefault(name, os.environ.get(name))
        os.environ[name] = str(value)


def pytest_unconfigure(config):
    """Restore the environment and remove the symlink tree."""
    _STATE.pop("tmp", None)
    tmp = _STATE.pop("cleanup", None)
    for name, old in _STATE.pop("env", {}).items():
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
    if tmp is not None:
        shutil.rmtree(str(tmp), ignore_errors=True)
    record = _STATE.pop("record", None)
    if record is not None:
        shutil.rmtree(str(record), ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root():
    """The repository root (= the collection root)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def collections_dir():
    """The temporary directory holding ``ansible_collections/pylabhub/recovery``."""
    return _STATE["tmp"]


FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "pylabhub-1.0"


@pytest.fixture(scope="session")
def fixtures_dir():
    """Real pylabhub 1.0 segments, kept in the repository (tests/fixtures/pylabhub-1.0,
    see its README for where they come from)."""
    return FIXTURES_DIR


@pytest.fixture
def shm_name():
    """A unique POSIX shm name (no leading slash), unlinked from /dev/shm afterwards."""
    name = "plhtest_%d_%d" % (os.getpid(), next(_SHM_COUNTER))
    yield name
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:
        pass


@pytest.fixture
def actors():
    """Start crash actors (plugins/module_utils/_actors.py): ``actors(block, steps, ...)``
    returns a started Actor; every one still running is killed afterwards."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _actors
    started = []

    def start(*args, **kw):
        actor = _actors.Actor(*args, **kw).start()
        started.append(actor)
        return actor
    yield start
    for actor in reversed(started):
        actor.close()


@pytest.fixture
def block_name(request):
    """A fresh block in /dev/shm made by our runtime (``capacity``/``stride`` from the
    test module's ``BLOCK_GEOMETRY``, default 4 x 4096), unlinked afterwards."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime
    capacity, stride = getattr(request.module, "BLOCK_GEOMETRY", (4, 4096))
    name = "plhblk_%d_%d" % (os.getpid(), next(_SHM_COUNTER))
    _runtime.create(name, capacity=capacity, stride=stride).close()
    yield name
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:
        pass
