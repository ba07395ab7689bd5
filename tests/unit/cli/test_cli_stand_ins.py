"""The CLI's stand-ins for standard modules on the diagnose path (issue 14; the core's:
tests/unit/test_stand_ins.py): ``cli.shell_quote`` is ``shlex.quote`` and the renderer's
``visible_len`` is what the regular expression it replaced left, on the cases that
matter and on many random ones."""

from __future__ import annotations

import random
import re
import shlex

from pylabhub.recovery import _render, cli


def test_shell_quoting_is_shlex_quote():
    rng = random.Random(5)
    alphabet = "aZ09_@%+=:,./-'\" $`\\!*?\t\né~"
    cases = ["", "plain", "a b", "it's", "'", "--slot", "é", "a\nb"]
    cases += ["".join(rng.choice(alphabet) for dummy in range(rng.randrange(10)))
              for dummy in range(20000)]
    for word in cases:
        assert cli.shell_quote(word) == shlex.quote(word), word


def test_visible_length_is_what_the_regular_expression_left():
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    style = _render.Style(color=True)
    cases = [style("dead", "red"), style("x", "bold", "cyan"), "plain", "", "\x1b[", "\x1b[31",
             "\x1b[\x1b[31m", "\x1bx", "a\x1b[1;2;3mb\x1b[0m"]
    rng = random.Random(9)
    alphabet = "\x1b[m0;3a"
    cases += ["".join(rng.choice(alphabet) for dummy in range(rng.randrange(14)))
              for dummy in range(20000)]
    for text in cases:
        assert _render.visible_len(text) == len(ansi.sub("", text)), repr(text)
