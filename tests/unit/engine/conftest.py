"""Fixtures of the engine tests (real shared memory, real processes).

The core is imported lazily: this conftest may be loaded before the root conftest has put
the working tree on sys.path (pytest loads the conftests of its arguments early).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def lab(request):
    """Owns the test's blocks and child processes; removes them even when the test fails."""
    from .helpers import ScratchBlocks
    owner = ScratchBlocks(lambda: request.getfixturevalue("fixtures_dir"))
    yield owner
    owner.close()
