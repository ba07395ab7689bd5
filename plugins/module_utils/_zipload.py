# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Import this package's modules from an AnsiballZ zip with one compile each, not two.

A module call on a managed host runs from the AnsiballZ zip, where Python keeps no
bytecode: every module imported is compiled from source, on every call. And CPython's
``zipimport`` (3.8 to 3.15 at least; python/cpython#141276, open) compiles each module
twice: finding it asks the importer for the module's file name, and
``zipimporter.get_filename`` learns the name by compiling the module (then throws the code
away), before ``get_code`` compiles it again to run it. A heal imports ~27 of our modules
(~410 KB of source, 54 ms of CPU to compile once): the second compile was paid by every
host on every call (``benchmarks/bench_module_host.py``, docs/performance.md).

:func:`compile_once` gives this package's path an importer that names a module's file
without compiling it: the name ``get_filename`` gives for a source module
(``<archive>/<prefix><name>.py``, or ``.../<name>/__init__.py``); the code is still
compiled and run by ``zipimport`` itself, once. It covers the package's own modules (a
subpackage's path would keep zipimport's importer; this package has none). Anywhere else
(installed files, an unpacked collection, the CLI) it does nothing.

Standard library only; nothing here imports a module that is not already loaded
(``zipimport`` is a path hook of every interpreter).
"""

from __future__ import annotations

import sys
import zipimport    # loaded at every interpreter's start (a path hook): costs nothing


class OneCompile(zipimport.zipimporter):  # pylint: disable=too-few-public-methods
    """zipimporter naming a source module's file without compiling it."""

    def get_filename(self, fullname):
        if self.get_source(fullname) is None:   # bytecode only: upstream's way
            return super().get_filename(fullname)
        tail = fullname.rpartition(".")[2]
        if self.is_package(fullname):
            tail += "/__init__"
        return "%s/%s%s.py" % (self.archive, self.prefix, tail)


def compile_once(package: str) -> bool:
    """Give ``package``'s zip entries an importer that compiles a module once.

    Returns whether ``package`` was imported from a zip and its entries now have that
    importer (False anywhere else). Calling it again changes nothing.
    """
    module = sys.modules.get(package)
    spec = getattr(module, "__spec__", None)
    if spec is None or not isinstance(spec.loader, zipimport.zipimporter):
        return False
    for entry in getattr(module, "__path__", ()):
        if not isinstance(sys.path_importer_cache.get(entry), OneCompile):
            sys.path_importer_cache[entry] = OneCompile(entry)
    return True
