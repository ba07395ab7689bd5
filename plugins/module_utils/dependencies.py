# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Optional Python libraries on the managed host: which are present, in which version.

The recovery core needs only the Python standard library. ``psutil`` and ``posix_ipc``
are optional: they are detected and reported; when missing (or broken) nothing fails and
nothing prints a traceback. Every module reports what it found under ``optional_libraries``
(documented by the ``pylabhub.recovery.dependencies`` doc fragment).

Standard library only: this file never imports ``ansible``.
"""

from __future__ import annotations

import importlib
from typing import Dict, Optional

#: The optional libraries, in the order they are reported.
OPTIONAL_LIBRARIES = ("psutil", "posix_ipc")

_CACHE = {}  # type: Dict[str, Dict[str, object]]


def _version(module: object) -> Optional[str]:
    for attr in ("__version__", "VERSION"):
        value = getattr(module, attr, None)
        if value:
            return str(value)
    return None


def probe(name: str) -> Dict[str, object]:
    """``{"present": bool, "version": str|None, "error": str|None}`` for one library.

    Any failure to import (missing, or installed but broken) is reported, never raised.
    """
    if name not in _CACHE:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # pylint: disable=broad-except
            _CACHE[name] = {"present": False, "version": None,
                            "error": "%s: %s" % (type(exc).__name__, exc)}
        else:
            _CACHE[name] = {"present": True, "version": _version(module), "error": None}
    return dict(_CACHE[name])


def optional_libraries() -> Dict[str, Dict[str, object]]:
    """The presence of every optional library, keyed by import name."""
    return {name: probe(name) for name in OPTIONAL_LIBRARIES}
