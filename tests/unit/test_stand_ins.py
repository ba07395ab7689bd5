"""What replaced a standard module on the diagnose path (issue 14: ``re``, ``enum``,
``shlex``, ``contextlib``, ``functools`` and ``collections`` were a sixth of a small
command's start-up) behaves as the module did: each stand-in of the core against the
original, on the cases that matter and on many random ones (the CLI's:
tests/unit/cli/test_cli_stand_ins.py)."""

from __future__ import annotations

import enum
import json
import os
import pickle
import random
import re

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import (
    _engine, _kernel, _layout as L, _mounts, _registry, _runtime as R, _scan)


class SlotState(enum.IntEnum):         # what L.SlotState was
    FREE = 0
    WRITING = 1
    COMMITTED = 2
    DRAINING = 3


def test_named_values_behave_as_the_int_enums_they_replace():
    for ours, theirs in zip(L.SlotState, SlotState):
        assert (ours.name, ours.value, int(ours)) == (theirs.name, theirs.value, int(theirs))
        assert (str(ours), "%s %d" % (ours, ours), format(ours), "%5s" % ours) \
            == (str(theirs), "%s %d" % (theirs, theirs), format(theirs), "%5s" % theirs)
        assert json.dumps({"s": ours}) == json.dumps({"s": theirs})
        assert L.SlotState(int(theirs)) is ours and ours == theirs and hash(ours) == hash(theirs)
        assert pickle.loads(pickle.dumps(ours)) is ours
        assert repr(ours) == repr(theirs)
    assert [s.name for s in L.SlotState] == [s.name for s in SlotState]
    assert len(L.SlotState) == 4 and sorted(L.SlotState) == list(L.SlotState)
    for bad in (7, -1, "COMMITTED", None, 2.5):
        with pytest.raises(ValueError):
            L.SlotState(bad)
        with pytest.raises(ValueError):
            SlotState(bad)
    assert L.enum_name(L.SlotState, 9) == "UNKNOWN(9)"
    assert L.enum_name(L.ChecksumPolicy, 2) == "ENFORCED"
    with pytest.raises(AttributeError):
        L.SlotState.FREE = 5
    assert L.SlotState.FREE == 0 and isinstance(L.SlotState.COMMITTED + 1, int)


def test_positions_not_finds_what_a_regular_expression_found():
    rng = random.Random(14)
    for size in (0, 1, 7, 64, 4096, 65536):
        for density in (0.0, 0.001, 0.5, 1.0):
            data = bytes(rng.randrange(1, 256) if rng.random() < density else 0
                         for dummy in range(size))
            for value in (0, 1):
                expected = [m.start() for m in re.finditer(b"[^%c]" % value, data, re.S)]
                assert _scan.positions_not(data, value) == expected, (size, density, value)


def test_mount_unescaping_is_what_re_sub_did():
    def by_re(text):
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
    cases = ["/dev/shm", "/a\\040b", "\\134", "a\\\\040", "\\0401", "\\04", "\\", "x\\",
             "\\999", "\\011\\012\\134\\040end", "\\\\\\", "\\08"]
    rng = random.Random(40)
    alphabet = "\\0123456789ab "
    cases += ["".join(rng.choice(alphabet) for dummy in range(rng.randrange(12)))
              for dummy in range(20000)]
    for text in cases:
        assert _mounts._unescape(text) == by_re(text), text


def test_attaching_undoes_itself_when_the_body_fails(tmp_path):
    """The engine's attachment (a class since contextlib went): after the body raises,
    the block is closed, its mapping and fd are no longer the engine's own, and the
    recovery-run registration is gone; nested registrations keep the outer entry."""
    name = "plh_standin_%d" % os.getpid()
    R.create(name, capacity=2, stride=4096).close()
    try:
        before = (list(_kernel._OWN_BLOCKS), set(_kernel._OWN_FDS))
        with pytest.raises(ZeroDivisionError):
            with _engine._Attached(name, True) as block:
                assert block in _kernel._OWN_BLOCKS and _registry._REG["depth"] == 1
                fd = block.mapping()[1]
                assert fd in _kernel._OWN_FDS
                with _registry.registration() as inner:
                    assert _registry._REG["depth"] == 2 and inner == _registry._REG["path"]
                assert _registry._REG["depth"] == 1
                path = _registry._REG["path"]
                1 / 0  # pylint: disable=pointless-statement
        assert (list(_kernel._OWN_BLOCKS), set(_kernel._OWN_FDS)) == before
        assert _registry._REG == {"depth": 0, "path": None}
        assert path is None or not os.path.exists(path)
        assert block._fd is None and block._addr is None
        with _registry.registration(active=False) as nothing:
            assert nothing is None and _registry._REG["depth"] == 0
    finally:
        os.unlink("/dev/shm/" + name)
