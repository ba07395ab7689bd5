"""The plain command lines of ``diagnose``, ``list``, ``cleanup``, ``validate`` and ``heal``
are parsed without argparse (issue 14: a diagnosis within 3x ``python3 -c pass``, and
argparse was a fifth of a validate's start-up); every other line goes to argparse.

The rule that keeps the two parsers one: whatever :func:`cli._quick_parse` accepts, argparse
accepts too, with exactly the same names and values; whatever argparse refuses (and help,
abbreviations, ``--``), the quick parser declines, so argparse says why. Checked here over
every command line of up to three words drawn from each command's own options, good and
bad, and over thousands of longer random ones.
"""

from __future__ import annotations

import argparse
import itertools
import random

import pytest

from pylabhub.recovery import cli

#: Words a user might type after the command: every option of the command, good and bad
#: values, positionals, and what only argparse handles.
WORDS = {
    "diagnose": ["B", "C", "", "-", "--json", "--no-color", "-y", "--yes", "-v", "--verbose",
                 "--all", "--all-slots", "--slot", "70", "all", "x", "-1", "--slot=3",
                 "--slot=", "--match", "p*", "--match=-x", "--max-bytes", "1G", "0",
                 "--max-bytes=4096", "-h", "--help", "--js", "--slo", "--", "-vy",
                 "--version", "--json=1", "--all-slots=1", "--repair", "-n"],
    "list": ["p*", "B", "", "-", "--json", "--no-color", "-y", "-v", "--verbose", "-h",
             "--help", "--", "--all", "--verb", "--match", "--json=", "-yv"],
}
#: The writing commands' words: their own options, good and bad values, what argparse alone
#: handles (abbreviations, help, ``--``, joined short flags) and other commands' options.
_WRITES = ["B", "", "-", "--json", "-y", "-v", "-n", "--dry-run", "--all", "--match", "p*",
           "--max-bytes", "1G", "1x", "--max-bytes=4096", "--snapshot-dir", "/tmp/s",
           "--snapshot-dir=", "--no-snapshot", "--audit-log", "a.jsonl", "--audit-log=-x",
           "-h", "--", "-ny", "--dry", "--slot", "--no-snapshot=1"]
WORDS["cleanup"] = _WRITES + ["--repair"]
WORDS["validate"] = _WRITES + ["--repair", "--repair=1", "--rep"]
WORDS["heal"] = _WRITES + ["--repair"]


_PARSER = []


def _argparse(argv):
    """argparse's namespace as a dict (the CLI's whole parser, built once), or None when
    it refuses or prints help."""
    if not _PARSER:
        _PARSER.append(cli.build_parser())
    try:
        return vars(_PARSER[0].parse_args(argv))
    except (cli._ArgError, SystemExit):     # pylint: disable=protected-access
        return None


def _quick(argv):
    ns = cli._quick_parse(argv)             # pylint: disable=protected-access
    return None if ns is None else vars(ns)


def _check(argv):
    """One command line: the quick parser agrees with argparse, or declines."""
    quick = _quick(argv)
    if quick is None:
        return False
    full = _argparse(argv)
    assert full is not None, ("quick parser accepted what argparse refuses", argv)
    assert quick == full, argv
    assert {k: type(v) for k, v in quick.items()} == {k: type(v) for k, v in full.items()}, argv
    return True


def test_suppress_is_argparses():
    assert cli.SUPPRESS == argparse.SUPPRESS


@pytest.mark.parametrize("command", sorted(WORDS))
def test_every_short_command_line_agrees_with_argparse(command, capsys):
    accepted = total = 0
    for n in range(4):
        for words in itertools.product(WORDS[command], repeat=n):
            total += 1
            accepted += _check([command] + list(words))
    capsys.readouterr()                     # argparse's help and errors, printed
    # the check can fail: many lines are parsed quickly (and compared)
    assert accepted > total // 20, (accepted, total)


#: Options whose lines argparse accepts (some with a value next), for the long lines.
GOOD = {"diagnose": ["--json", "--no-color", "-y", "--yes", "-v", "--verbose", "--all",
                     "--all-slots", "--slot 70", "--slot all", "--slot=3", "--match p*",
                     "--match=-x", "--max-bytes 1G", "--max-bytes=4096"],
        "list": ["--json", "--no-color", "-y", "--yes", "-v", "--verbose"]}
GOOD["cleanup"] = ["--json", "--no-color", "-y", "-v", "-n", "--dry-run", "--all", "--match p*",
                   "--max-bytes 1G", "--max-bytes=64K", "--snapshot-dir /tmp/s",
                   "--snapshot-dir=/d", "--no-snapshot", "--audit-log a.jsonl",
                   "--audit-log=/x"]
GOOD["validate"] = GOOD["cleanup"] + ["--repair"]
GOOD["heal"] = GOOD["cleanup"] + ["--repair"]


@pytest.mark.parametrize("seed", range(3))
def test_long_random_command_lines_agree_with_argparse(seed, capsys):
    """Lines of 3 to 9 words: options in any order and repeated (the last value wins), one
    positional anywhere, and now and then a word of anything."""
    rng = random.Random(seed)
    accepted = 0
    for _line in range(3000):
        command = rng.choice(sorted(WORDS))
        words = []
        for option in rng.choices(GOOD[command], k=rng.randint(2, 7)):
            words += option.split(" ")
            if rng.random() < 0.05:
                words.append(rng.choice(WORDS[command]))
        if rng.random() < 0.8:
            words.insert(rng.randint(0, len(words)), rng.choice(["B", "plh*", ""]))
        accepted += _check([command] + words)
    capsys.readouterr()
    assert accepted > 1500, accepted


@pytest.mark.parametrize("argv", [
    ["diagnose", "B"], ["diagnose", "B", "--json"], ["diagnose", "--json", "B"],
    ["diagnose", "B", "--slot", "70"], ["diagnose", "B", "--slot=all", "--no-color"],
    ["diagnose", "--all", "--match", "plh*", "-v"], ["diagnose", "B", "--max-bytes", "1G"],
    ["diagnose", "B", "--all-slots", "--json", "--yes"], ["list"], ["list", "plh*", "--json"],
    ["validate", "B"], ["validate", "B", "--max-bytes", "1G"], ["validate", "--all", "--json"],
    ["validate", "B", "--repair", "-y", "--snapshot-dir", "/tmp/s"], ["heal", "B"],
    ["heal", "--all", "--match", "plh*", "--dry-run"], ["cleanup", "B", "--no-snapshot"],
], ids=" ".join)
def test_the_plain_forms_are_parsed_quickly(argv):
    assert _check(argv)


@pytest.mark.parametrize("argv", [
    ["diagnose", "B", "--help"], ["diagnose", "-h"], ["diagnose", "B", "--slot", "x"],
    ["diagnose", "B", "--slot"], ["diagnose", "B", "C"], ["diagnose", "B", "--js"],
    ["diagnose", "--", "B"], ["diagnose", "B", "-vy"], ["diagnose", "B", "--max-bytes", "0"],
    ["--json", "diagnose", "B"], ["diagnose", "B", "--slot", "-1"], [],
    ["recover", "B", "--slot", "1", "--action", "release-writer"], ["undo", "X"],
    ["validate", "B", "--max-bytes", "0"], ["heal", "B", "--rep"], ["cleanup", "B", "--repair"],
    ["validate", "B", "--snapshot-dir"], ["heal", "-ny", "B"],
], ids=lambda argv: " ".join(argv) or "(none)")
def test_anything_else_goes_to_argparse(argv):
    assert _quick(argv) is None


def test_a_command_line_argparse_refuses_is_refused_by_the_cli_as_before(cli_run):
    """Declined lines keep argparse's one-line error and exit code 2."""
    r = cli_run("diagnose", "B", "--slot", "x")
    assert r.rc == 2 and r.err_lines == [
        "datablock-admin diagnose: error: argument --slot: invalid slot 'x': give a slot "
        "index or 'all'"], r


@pytest.fixture
def cli_run(cli):
    return cli
