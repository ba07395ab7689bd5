# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``_zipload.compile_once``: a package imported from a zip gets its modules compiled once
(CPython's zipimport compiles each twice, python/cpython#141276), with the file names
zipimport itself gives; anywhere else it does nothing.

Each case runs in a fresh interpreter on a real zip on ``sys.path``, counting every call of
``compile`` by file name. The control (a package left alone) shows the double compile the
change removes, on every Python the modules support that is on this machine.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import textwrap
import zipfile

import pytest

from ansible_collections.pylabhub.recovery.plugins.module_utils import _zipload

#: Imports ``pkg`` and ``plain`` from a zip, gives ``pkg`` the importer (not ``plain``),
#: imports their modules and prints, per module, compiles counted and ``__file__`` beside
#: what upstream ``zipimporter.get_filename`` says.
IMPORTER = textwrap.dedent("""
    import builtins, collections, importlib, importlib.util, json, sys, zipimport
    zip_path, zipload_path = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location("zipload", zipload_path)
    zipload = importlib.util.module_from_spec(spec); spec.loader.exec_module(zipload)
    counts = collections.Counter()
    real_compile = builtins.compile
    def counting(source, filename, *args, **kwargs):
        counts[filename] += 1
        return real_compile(source, filename, *args, **kwargs)
    builtins.compile = counting
    sys.path.insert(0, zip_path)
    import pkg, plain
    out = {"given": zipload.compile_once("pkg"), "again": zipload.compile_once("pkg")}
    for name in ("pkg.a", "pkg.sub", "pkg.sub.b", "pkg.only_bytecode", "plain.a"):
        mod = importlib.import_module(name)
        where = zipimport.zipimporter(zip_path + "/" + name.rpartition(".")[0].replace(".", "/"))
        out[name] = {"compiles": counts[mod.__file__], "file": mod.__file__,
                     "upstream": where.get_filename(name), "value": mod.VALUE}
    out["importers"] = {p: type(sys.path_importer_cache[getattr(sys.modules[p], "__path__")[0]]).__name__
                        for p in ("pkg", "plain")}
    print(json.dumps(out))
""")


def _pythons():
    """This Python and the oldest target Python (3.8) where the machine has it."""
    found = [sys.executable]
    found += sorted(glob.glob("/root/.pyenv/versions/3.8.*/bin/python3.8"))[:1]
    return found


@pytest.fixture
def archive(tmp_path):
    """A zip holding ``pkg`` (modules, a subpackage, a bytecode-only module) and ``plain``."""
    compiled = tmp_path / "only_bytecode.pyc"
    source = tmp_path / "only_bytecode.py"
    source.write_text("VALUE = 'pyc'\n")
    path = tmp_path / "mods.zip"
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED) as zf:
        for package in ("pkg", "plain"):
            zf.writestr(package + "/__init__.py", "")
            zf.writestr(package + "/a.py", "VALUE = '%s.a'\n" % package)
        zf.writestr("pkg/sub/__init__.py", "VALUE = 'pkg.sub'\n")
        zf.writestr("pkg/sub/b.py", "VALUE = 'pkg.sub.b'\n")
    return path, source, compiled


@pytest.mark.parametrize("python", _pythons())
def test_a_zipped_package_compiles_each_module_once(archive, python):
    path, source, compiled = archive
    # the bytecode-only module, compiled by the Python that will import it
    subprocess.run([python, "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], "
                    "cfile=sys.argv[2], doraise=True)", str(source), str(compiled)],
                   check=True)
    with zipfile.ZipFile(str(path), "a") as zf:
        zf.write(str(compiled), "pkg/only_bytecode.pyc")
    proc = subprocess.run([python, "-c", IMPORTER, str(path), _zipload.__file__],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
                          universal_newlines=True, cwd=str(path.parent))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["given"] is True and out["again"] is True
    assert out["importers"] == {"pkg": "OneCompile", "plain": "zipimporter"}
    for name in ("pkg.a", "pkg.sub"):
        assert out[name]["compiles"] == 1, (name, out[name])
    # a subpackage's own path keeps zipimport's importer (documented scope: the package's
    # own modules; ours is flat)
    assert out["pkg.sub.b"]["compiles"] == 2
    for name in ("pkg.a", "pkg.sub", "pkg.sub.b", "pkg.only_bytecode", "plain.a"):
        assert out[name]["file"] == out[name]["upstream"], (name, out[name])
        assert out[name]["value"] == (name if name != "pkg.only_bytecode" else "pyc")
    assert out["pkg.only_bytecode"]["compiles"] == 0      # loaded from its bytecode
    # the control: zipimport as it is compiles a module twice on this Python
    assert out["plain.a"]["compiles"] == 2, out["plain.a"]


def test_nothing_changes_outside_a_zip():
    """Installed files (this checkout): no importer is given, none is replaced."""
    package = _zipload.__name__.rpartition(".")[0]
    before = dict(sys.path_importer_cache)
    assert _zipload.compile_once(package) is False
    assert _zipload.compile_once("no.such.package") is False
    assert sys.path_importer_cache == before
