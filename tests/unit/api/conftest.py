"""Fixtures of the Python API tests (real blocks, real SIGKILLed processes, real fixtures)."""

from __future__ import annotations

import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent.parent
if str(UNIT) not in sys.path:
    sys.path.insert(0, str(UNIT))

from plh_crash import crashes, names  # noqa: E402,F401 pylint: disable=unused-import
