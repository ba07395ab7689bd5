"""The before-image's lines are flushed to disk only where that buys something.

Every journal line is written before the store it announces, so a SIGKILL anywhere
leaves a journal naming every store made (the kernel's page cache outlives the process:
the kill tests check that). A flush (fsync) per line only matters for a machine crash,
which a shared-memory block does not survive: fsynced for a block file (kind ``path``),
not for a block in /dev/shm. Real blocks, a real writer SIGKILLed mid-write, real heals;
``os.fsync`` of the journal is counted on its way to the kernel."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine as E, _snapshot as S)


@pytest.fixture
def flushed(monkeypatch):
    """The file descriptors ``_snapshot`` asked to fsync, in order."""
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        real(fd)
    monkeypatch.setattr(S.os, "fsync", fsync)
    return calls


def journal(path):
    with open(str(path)) as f:
        return [json.loads(line) for line in f]


def test_shared_memory_block_journal_written_but_not_flushed(lab, tmp_path, flushed):
    crash = lab.crashed("mid_write")
    out = E.heal(crash.name, snapshot_dir=str(tmp_path / "snaps"))
    assert out["changed"] and out["snapshot"]["id"], out
    lines = journal(out["snapshot"]["path"])
    stores = [x for x in lines if "seq" in x]
    assert stores and "end" in lines[-1], lines
    assert flushed == [], "a shared-memory block's journal was fsynced"


def test_block_file_journal_flushed_before_every_store(lab, tmp_path, flushed):
    crash = lab.crashed("mid_write")
    path = tmp_path / "block.file"
    shutil.copyfile(os.path.join("/dev/shm", crash.name), str(path))
    os.chmod(str(path), 0o600)
    out = E.heal(str(path), snapshot_dir=str(tmp_path / "snaps"))
    assert out["block"]["kind"] == "path" and out["changed"], out
    lines = journal(out["snapshot"]["path"])
    # the head, the directory, every store's line and the end line: each flushed
    assert len(flushed) >= len(lines) + 1, (len(flushed), lines)
