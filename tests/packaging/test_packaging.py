# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as the Ansible ecosystem meets it: the Galaxy artifact's file list
(only what runs from an installed collection), galaxy.yml's metadata, the minimum
ansible-core the roles and meta/runtime.yml claim, and the execution environment
definition turned into a build context by ansible-builder.

These read the repository checkout (galaxy.yml, execution-environment.yml), so they are
left out of the artifact (galaxy.yml build_ignore) like the other checkout-only suites.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

from ansible_collections.pylabhub.recovery.plugins.module_utils._contract import SCHEMA
from ansible_collections.pylabhub.recovery.tests.conftest import REPO_ROOT

BIN = os.path.dirname(sys.executable)
GALAXY = yaml.safe_load((REPO_ROOT / "galaxy.yml").read_text())
VERSION = str(GALAXY["version"])
TARBALL = "pylabhub-recovery-%s.tar.gz" % VERSION

#: What an installed collection runs or reads: exact files, and folders (with "/").
SHIPPED = (
    "MANIFEST.json", "FILES.json", "README.md", "LICENSE", "CHANGELOG.rst",
    "meta/", "plugins/", "roles/", "playbooks/",
    "changelogs/changelog.yaml", "changelogs/config.yaml",
    "docs/schema.md", "docs/schema-v1.json", "docs/reliability.md", "docs/configurations.md",
    "docs/performance.md",
    "docs/audit-and-undo.md", "docs/watch.md",
    # the EDA event source and its example rulebook (ansible-rulebook finds them there)
    "extensions/eda/",
    # the tests ansible-test runs from an installed collection, and what they import
    "tests/conftest.py", "tests/crashed_blocks.py", "tests/support.py", "tests/fixtures/",
    "tests/unit/", "tests/integration/targets/",
)
#: Inside a shipped folder, what cannot run from the artifact (needs src/, the lab or
#: the checkout).
NOT_SHIPPED = ("tests/unit/cli/", "tests/unit/api/")
#: Folders that must arrive whole: every file of the checkout under them is shipped.
RUNTIME = ("meta", "plugins", "roles", "playbooks", "extensions/eda")


def _shipped(name):
    if any(name == n.rstrip("/") or name.startswith(n) for n in NOT_SHIPPED):
        return False
    return any(name == s.rstrip("/") or (s.endswith("/") and name.startswith(s))
               for s in SHIPPED)


def _parents(name):
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("galaxy")
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build",
                           str(REPO_ROOT), "--output-path", str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout
    assert "[WARNING]" not in proc.stdout, proc.stdout
    return out / TARBALL


def test_artifact_holds_only_what_runs_from_it(artifact):
    with tarfile.open(str(artifact)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    files = sorted(n for n, m in members.items() if not m.isdir())
    stray = [n for n in files if not _shipped(n)]
    assert not stray, "files the artifact should not carry (galaxy.yml build_ignore): %s" % stray
    # folders appear only as parents of shipped files
    dirs = {n for n, m in members.items() if m.isdir()}
    assert dirs <= {p for n in files for p in _parents(n)}, sorted(
        dirs - {p for n in files for p in _parents(n)})
    # everything that runs arrived whole
    missing = []
    for top in RUNTIME:
        for root, subdirs, names in os.walk(str(REPO_ROOT / top)):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            for n in names:
                rel = os.path.relpath(os.path.join(root, n), str(REPO_ROOT))
                if not n.endswith((".pyc", ".pyo")) and rel not in members:
                    missing.append(rel)
    assert not missing, missing
    for needed in ("CHANGELOG.rst", "changelogs/changelog.yaml", "meta/runtime.yml",
                   "tests/unit/plugins/modules/test_datablock_recover.py",
                   "tests/integration/targets/datablock_recover/tasks/main.yml"):
        assert needed in members, needed


def test_galaxy_metadata_is_real():
    text = (REPO_ROOT / "galaxy.yml").read_text()
    assert "example." not in text and ".invalid" not in text
    assert GALAXY["authors"] and all("@" not in a for a in GALAXY["authors"])
    # no public URL exists yet: the optional URL keys are absent, not invented
    for key in ("repository", "documentation", "homepage", "issues"):
        value = GALAXY.get(key)
        assert value is None or (value.startswith("https://") and "invalid" not in value), key


def test_the_schema_file_states_the_one_schema_id():
    """docs/schema-v1.json names the schema id of _contract.SCHEMA (its title, the const
    of every document's ``schema``) and an ``$id`` from galaxy.yml's URL - none exists
    yet, so a URN made of the same id (a name, locating nothing; no host invented)."""
    schema = json.loads((REPO_ROOT / "docs" / "schema-v1.json").read_text())
    assert schema["title"] == SCHEMA
    assert schema["$defs"]["schema_id"] == {"const": SCHEMA}
    name, version = SCHEMA.split("/")
    assert (name, version) == ("pylabhub.recovery", "v1")
    url = GALAXY.get("repository") or GALAXY.get("homepage")
    if url:
        assert schema["$id"].startswith(url.rstrip("/") + "/"), schema["$id"]
        assert schema["$id"].endswith("/schema-%s.json" % version), schema["$id"]
    else:
        assert schema["$id"] == "urn:%s:schema:%s" % (name.replace(".", "-"), version)


def test_roles_claim_the_collections_minimum_ansible():
    runtime = yaml.safe_load((REPO_ROOT / "meta" / "runtime.yml").read_text())
    minimum = runtime["requires_ansible"]
    assert minimum.startswith(">=")
    major_minor = ".".join(minimum[2:].split(".")[:2])
    roles = sorted(p.name for p in (REPO_ROOT / "roles").iterdir() if p.is_dir())
    assert roles
    for role in roles:
        meta = yaml.safe_load((REPO_ROOT / "roles" / role / "meta" / "main.yml").read_text())
        assert str(meta["galaxy_info"]["min_ansible_version"]) == major_minor, role


def test_execution_environment_builds_its_context(artifact, tmp_path):
    """ansible-builder writes the build context (no container engine needed), and the
    galaxy stage's own install command works on that context."""
    ee = tmp_path / "execution-environment.yml"
    ee.write_text((REPO_ROOT / "execution-environment.yml").read_text())
    (tmp_path / TARBALL).write_bytes(artifact.read_bytes())
    context = tmp_path / "context"
    proc = subprocess.run([os.path.join(BIN, "ansible-builder"), "create", "-f", str(ee),
                           "--context", str(context)], cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False)
    assert proc.returncode == 0 and "WARNING" not in proc.stdout, proc.stdout
    build = context / "_build"
    assert (build / "collections" / TARBALL).is_file(), (
        "execution-environment.yml names another version than galaxy.yml (%s)" % VERSION)
    containerfile = next(p for p in (context / "Containerfile", context / "Dockerfile")
                         if p.exists()).read_text()
    assert "ansible-galaxy collection install" in containerfile
    # the galaxy stage runs `ansible-galaxy collection install -r requirements.yml` in
    # /build (the context's _build); do the same here, where no other copy is in sight
    target = tmp_path / "collections"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(target)
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install",
                           "-r", "requirements.yml", "--collections-path", str(target)],
                          cwd=str(build), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, proc.stdout
    assert (target / "ansible_collections" / "pylabhub" / "recovery" / "MANIFEST.json").is_file()
