"""The core's records (plain ``__slots__`` classes in place of dataclasses, issue 14) keep
what the dataclasses gave: equality and hashing over the compared fields, a readable repr
without the hidden fields, ``replace``, and no stray attributes."""

from __future__ import annotations

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _kernel, _layout, _plan
from ansible_collections.pylabhub.recovery.plugins.module_utils._liveness import Snapshot, Verdict
from ansible_collections.pylabhub.recovery.plugins.module_utils._observe import SlotView


def test_block_id_compares_and_hashes_without_its_fd():
    a = _kernel.BlockId(1, 2, 0, "shm", "/dev/shm/x", fd=5)
    b = _kernel.BlockId(1, 2, 0, "shm", "/dev/shm/x")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != _kernel.BlockId(1, 3, 0, "shm", "/dev/shm/x", fd=5)
    assert a.replace(fd=7).fd == 7 and a.replace(fd=7) == a
    assert a != (1, 2, 0, "shm", "/dev/shm/x", 5)          # another type never equals


def test_repr_names_the_fields_and_hides_the_hidden_ones():
    ch = _plan.Change("write_lock", 5, 0, offset=4096, size=8)
    assert repr(ch) == "Change(target='write_lock', before=5, after=0)"
    assert repr(_layout.Geometry(4, 4096, 0)) == "Geometry(capacity=4, stride=4096, flex_size=0)"


def test_mutable_records_are_unhashable_and_have_own_lists():
    a = SlotView(0, 0, 0, 0, 0, 0, None, None)
    b = SlotView(0, 0, 0, 0, 0, 0, None, None)
    assert a == b
    a.readers_in.append("x")
    assert a != b and b.readers_in == []
    with pytest.raises(TypeError):
        hash(a)


def test_no_stray_attributes_and_no_unknown_fields():
    v = Verdict(1, "dead")
    with pytest.raises(AttributeError):
        v.typo = 1  # type: ignore[attr-defined]  # pylint: disable=assigning-non-slot
    with pytest.raises(TypeError):
        v.replace(nope=1)
    assert v.replace(state="alive") == Verdict(1, "alive")


def test_a_live_snapshot_refreshes_its_clocks_only():
    s = Snapshot(1, 2, b"b" * 16, 100, True, 7)
    r = s.refreshed()
    assert (r.boot_id, r.clk_tck, r.live, r.pidns) == (b"b" * 16, 100, True, 7)
    assert r.monotonic_ns > 1
    fixed = Snapshot(1, 2, None)
    assert fixed.refreshed() is fixed
