"""The CLI's stand-ins for standard modules on the diagnose and validate paths (issue 14;
the core's: tests/unit/test_stand_ins.py): ``cli.shell_quote`` is ``shlex.quote``, the
renderer's ``visible_len`` is what the regular expression it replaced left, and
``cli._bytes`` reads the byte counts the regular expression it replaced read, on the
cases that matter and on many random ones."""

from __future__ import annotations

import argparse
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


def _bytes_by_regex(text):
    """The byte-count reader before issue 14's validate pass."""
    match = re.match(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", text, re.IGNORECASE)
    if not match or int(match.group(1)) < 1:
        return None
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30,
                                   "T": 40}[match.group(2).upper()]


def _bytes(text):
    try:
        return cli._bytes(text)                 # pylint: disable=protected-access
    except argparse.ArgumentTypeError:
        return None


def test_byte_counts_are_read_as_the_regular_expression_read_them():
    cases = ["4096", "1G", "1g", "1GiB", "1gib", "1GB", "512KiB", " 2 M ", "1T", "1\n",
             "1IB", "0", "00", "-1", "+1", "1.5G", "1 G B", "G", "", " ", "1KK", "1Gi",
             "\u0663K", "\u00a01\u2003", "1\u00b2", "\uff11M", "0001k"]
    rng = random.Random(11)
    alphabet = list("0123456789 \t\nkmgtKMGTiIbB-.+x") + ["\u0663", "\u00a0", "\u00b2"]
    cases += ["".join(rng.choice(alphabet) for dummy in range(rng.randrange(8)))
              for dummy in range(20000)]
    cases += ["%d%s" % (rng.randrange(5000), "".join(rng.choice(alphabet[10:]) for dummy
                                                     in range(rng.randrange(4))))
              for dummy in range(20000)]
    accepted = 0
    for text in cases:
        want = _bytes_by_regex(text)
        assert _bytes(text) == want, repr(text)
        accepted += want is not None
    assert accepted > 3000, accepted                # the check can fail: many are read


def test_a_unit_outside_ascii_is_refused_not_a_crash():
    """The regular expression took the Kelvin sign for K, then failed on it (KeyError: an
    internal error); now it is an invalid byte count, like any other unit."""
    assert _bytes("1\u212a") is None and _bytes("1\u212aB") is None
    assert _bytes("1K") == 1024
