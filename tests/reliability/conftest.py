"""Reliability suite (issue 7): crash campaign, fuzzing, races, hostile inputs.

Each test records the figures it measured in the session-wide ``figures`` dict; they are
printed at the end of the run ("reliability figures: ...") for docs/reliability.md.
"""

from __future__ import annotations

import pytest

FIGURES = {}


@pytest.fixture(scope="session")
def figures():
    """Session-wide dict of measured figures, printed in the terminal summary."""
    return FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.write_sep("-", "reliability figures")
        for key in sorted(FIGURES):
            terminalreporter.write_line("%s: %s" % (key, FIGURES[key]))
