# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small helpers shared by test suites (imported as
``ansible_collections.pylabhub.recovery.tests.support``)."""

from __future__ import annotations

import contextlib
import signal


class Hang(TimeoutError):
    """An operation gave no answer in time (typically: blocked opening a FIFO)."""


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Raise :class:`Hang` in the body after ``seconds`` instead of hanging forever."""
    def alarm(signum, frame):  # pylint: disable=unused-argument
        raise Hang("%s: no answer after %.0f s (hung on a FIFO?)" % (what, seconds))
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
