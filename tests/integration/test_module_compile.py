# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real ``ansible`` module call compiles each of the engine's modules once on the host.

The module runs from the AnsiballZ zip, where CPython's zipimport compiles a module twice
(python/cpython#141276); ``_zipload`` (called by the adapter before the engine is
imported) takes the second compile away for the engine's modules. The host's Python here
is a small wrapper that counts every ``compile`` by file name and then runs what ansible
sent it, so the count is of the real payload, on the real connection, healing a real
crashed block. The module file itself, compiled by zipimport before any of our code runs,
is the control: twice.
"""

from __future__ import annotations

import glob
import json
import os
import stat
import sys
import textwrap

import pytest

from ansible_collections.pylabhub.recovery.tests.crashed_blocks import CrashedBlocks, unique_name
from ansible_collections.pylabhub.recovery.tests.integration.test_playbooks import _run

BIN = os.path.dirname(sys.executable)
PYTHONS = [sys.executable] + sorted(glob.glob("/root/.pyenv/versions/3.8.*/bin/python3.8"))[:1]

#: Counts compiles by file name into $PLH_COMPILE_LOG, then runs the AnsiballZ wrapper
#: (a file argument, or the source on stdin when ansible pipelines).
COUNTER = textwrap.dedent("""
    import atexit, builtins, collections, json, os, runpy, sys
    counts = collections.Counter()
    real_compile = builtins.compile
    def counting(source, filename, *args, **kwargs):
        counts[str(filename)] += 1
        return real_compile(source, filename, *args, **kwargs)
    builtins.compile = counting
    def write():
        with open(os.environ["PLH_COMPILE_LOG"], "w") as f:
            json.dump(counts, f)
    atexit.register(write)
    if len(sys.argv) > 1:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        exec(real_compile(sys.stdin.read(), "<stdin>", "exec"), {"__name__": "__main__"})
""")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("python", PYTHONS)
def test_heal_compiles_each_engine_module_once(tmp_path, python):
    counter = tmp_path / "counter.py"
    counter.write_text(COUNTER)
    host_python = tmp_path / "host-python"
    host_python.write_text('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (python, counter))
    host_python.chmod(host_python.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "compiles.json"
    (tmp_path / "inventory").write_text(
        "localhost ansible_connection=local ansible_python_interpreter=%s\n" % host_python)
    with CrashedBlocks() as lab:
        name = unique_name("plhzip")
        slot, _dead = lab.stuck_writer(name)
        out = _run([os.path.join(BIN, "ansible"), "-i", "inventory", "localhost", "-m",
                    "pylabhub.recovery.datablock_recover", "-a", "name=%s action=heal" % name],
                   tmp_path, extra_env={"PLH_COMPILE_LOG": str(log)})
        assert "localhost | CHANGED" in out, out
        assert lab.slot_words(name, slot)["write_lock"] == 0
    counts = json.loads(log.read_text())
    ours = {path.rsplit("/", 1)[1]: n for path, n in counts.items()
            if "/pylabhub/recovery/plugins/module_utils/_" in path}
    assert ".zip/" in next(p for p in counts if p.endswith("/module_utils/_engine.py"))
    engine = {f: n for f, n in ours.items()   # _zipload: loaded before it acts
              if f not in ("__init__.py", "_zipload.py")}
    assert len(engine) >= 20, sorted(engine)
    assert {f: n for f, n in engine.items() if n != 1} == {}
    control = [n for path, n in counts.items()
               if path.endswith("/pylabhub/recovery/plugins/modules/datablock_recover.py")]
    assert control == [2], control
