# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""datablock_info: discovery plus a health summary per block; never changes anything."""

from __future__ import annotations

import os

from ansible_collections.pylabhub.recovery.plugins.modules import datablock_info
from ansible_collections.pylabhub.recovery.tests.crashed_blocks import path_of, snapshot


def _by_address(out):
    return {b["address"]: b for b in out["blocks"]}


def test_lists_blocks_with_health(run, lab, name):
    stuck, healthy, corrupt = name + "_a", name + "_b", name + "_c"
    slot, _dead = lab.stuck_writer(stuck)
    lab.healthy(healthy)
    lab.corrupt(corrupt)
    before = [snapshot(n) for n in (stuck, healthy, corrupt)]
    out = run(datablock_info, {"pattern": name + "_*"})
    assert not out.failed and out["changed"] is False
    blocks = _by_address(out)
    assert sorted(blocks) == sorted([stuck, healthy, corrupt])
    assert blocks[stuck]["health"]["healthy"] is False
    assert blocks[stuck]["health"]["stuck_slots"] == [slot]
    assert blocks[stuck]["health"]["status"] == "stuck"
    assert blocks[healthy]["health"]["healthy"] is True
    assert blocks[healthy]["health"]["status"] == "healthy"
    # without validate the checksum corruption is not seen, and valid is unknown
    assert blocks[corrupt]["health"]["healthy"] is True
    assert blocks[corrupt]["health"]["valid"] is None
    assert out["atomics"]["available"] is True

    out = run(datablock_info, {"pattern": name + "_*", "validate": True}, check_mode=True)
    blocks = _by_address(out)
    assert blocks[corrupt]["health"]["valid"] is False
    assert blocks[corrupt]["health"]["healthy"] is False
    assert blocks[corrupt]["health"]["status"] == "corrupt"
    assert blocks[stuck]["health"]["status"] == "stuck"
    assert blocks[healthy]["health"]["valid"] is True
    assert [snapshot(n) for n in (stuck, healthy, corrupt)] == before


def test_per_block_error_lands_in_the_entry(run, lab, name):
    lab.healthy(name)
    with open(path_of(name), "r+b") as f:      # version 9.0: magic stays, layout refused
        f.seek(4)
        f.write(b"\x09\x00")
    out = run(datablock_info, {"pattern": name})
    assert not out.failed
    (entry,) = out["blocks"]
    assert entry["status"] != "ok"
    assert entry["health"]["healthy"] is None
    assert entry["health"]["error"]["code"] == entry["status"]


def test_no_diagnosis(run, lab, name):
    lab.stuck_writer(name)
    out = run(datablock_info, {"pattern": name, "diagnose": False})
    (entry,) = out["blocks"]
    assert entry["health"]["healthy"] is None and entry["producer_alive"] is False


def test_nothing_found_and_no_pattern(run, name):
    out = run(datablock_info, {"pattern": name + "_nothing*"})
    assert not out.failed and out["blocks"] == []
    out = run(datablock_info, {"diagnose": False})
    assert not out.failed and isinstance(out["blocks"], list)
    assert all(os.path.basename(b["path"]) for b in out["blocks"])
