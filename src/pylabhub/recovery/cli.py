"""datablock-admin: diagnose and recover pylabhub DataBlocks on this machine.

A thin face over the recovery engine (plugins/module_utils/_engine.py): it translates
arguments into one engine call per block and the engine's result into a table, JSON
(schema ``pylabhub.recovery/v1``, docs/schema.md) and an exit code. No recovery rule is
decided here. It never imports ansible.

It imports only what a command needs, when it needs it: the parser reads the engine's
names from ``_contract`` (which imports nothing), and the engine and the renderer are
imported inside the functions that use them, so ``--help``, ``--version`` and ``COMMAND
--help`` load neither; ``--version`` alone does not even import ``argparse`` (with the
``gettext`` it pulls in, a fifth of the interpreter's own start-up), and neither does a
plain command line of ``diagnose``, ``list``, ``cleanup``, ``validate`` or ``heal``
(:func:`_quick_parse`). Run as the program, the two read-only commands ``diagnose`` and
``list`` also run without the cyclic garbage collector (:data:`_NO_GC`).
benchmarks/bench_startup.py, bench_diagnose.py and bench_validate.py measure it.
"""

from __future__ import annotations

import os
import sys

from ansible_collections.pylabhub.recovery.plugins.module_utils._contract import (
    DRILL_CAPACITY, DRILL_ITERATIONS, DRILL_STRIDE, SCHEMA, SLOT_ACTIONS)
from ansible_collections.pylabhub.recovery.plugins.module_utils._contract import (
    PRACTICE_HUB, PRACTICE_NAME, PRACTICE_SCENARIOS)

from ._version import __version__

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    import argparse
    from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence

    from . import _render
else:
    class _Argparse:
        """``argparse``, imported on the first use of one of its names: ``--version`` uses
        none (argparse and the gettext it loads are a fifth of the interpreter's start-up).
        """

        def __getattr__(self, name: str) -> object:
            import argparse as module
            return getattr(module, name)
    argparse = _Argparse()  # pylint: disable=invalid-name

PROG = "datablock-admin"
#: The characters ``shlex.quote`` leaves unquoted (its ``[^\w@%+=:,./-]``, ASCII).
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_quote(word: str) -> str:
    """``word`` as one shell word, by ``shlex.quote``'s rule (``shlex`` imports ``re``:
    milliseconds at the start of a command that suggests a command line)."""
    if not word:
        return "''"
    if all(c in _SHELL_SAFE for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


#: The text of argparse's marker for "no default" (``argparse.SUPPRESS``), so that the
#: option functions can be read without importing argparse (:func:`_quick_parse`); a test
#: checks it is argparse's. argparse compares the marker by identity: a parser is given
#: argparse's own object (:func:`_suppress`).
SUPPRESS = "==SUPPRESS=="
VERSION = "%s %s (pylabhub.recovery; pylabhub DataBlock 1.0)" % (PROG, __version__)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

EXIT_CODES = """\
exit codes:
  0    healthy, done, or nothing to do
  1    findings: the block is not healthy (diagnose, validate and heal judge it by
       one rule: stuck, suspect, corrupt or degraded), recover/cleanup done only in
       part, drill had an iteration fail
  2    usage error: bad arguments, bad block name or path, slot out of range, a bad
       watch policy
  3    refused an unsafe action: a holder is alive, suspect-hung or unknown (see
       --force; heal: a slot only --force could free), the confirmation was declined,
       or another watch runs on this host
  4    no usable block: missing, foreign (no pylabhub magic), unsupported layout,
       truncated, still being created, an unsafe path (symlink, FIFO, directory),
       or more to examine than --max-bytes allows (the message names the geometry)
  5    permission denied, or the block belongs to another user
  6    concurrent change: a live process changed a word between observation and
       action; nothing was left half-done, run the command again
  7    internal error (PLH_DEBUG=1 prints the traceback)
  8    the before-image could not be written (snapshot directory unusable, disk
       full): nothing was changed (see --snapshot-dir, --no-snapshot)
  130  interrupted;  141  stdout closed early (broken pipe)
  With --all the exit code is the highest of all blocks; a block skipped because its
  header is not sound or it is over --max-bytes counts as 4."""

ADDRESS_HELP = ("the block: a shm name (my_datablock), an absolute path, or a memfd "
                "address memfd:<pid>:<fd> as 'list' prints it")

DESCRIPTION = """\
Diagnose and recover pylabhub DataBlock 1.0 shared-memory segments after crashes.

  datablock-admin list
  datablock-admin diagnose my_datablock --slot 0
  datablock-admin recover my_datablock --slot 0 --action release_writer
  datablock-admin recover my_datablock --slot 0 --action release_readers --force
  datablock-admin cleanup my_datablock
  datablock-admin validate my_datablock [--repair]
  datablock-admin heal my_datablock | --all [--match PATTERN]
  datablock-admin snapshots                  # the before-images of real runs
  datablock-admin undo SNAPSHOT [--dry-run]  # put a run's stores back
  datablock-admin metrics --textfile DIR     # Prometheus, node_exporter's textfile
  datablock-admin watch --policy FILE [--once]  # heal what stays stuck (never forced)
  datablock-admin drill [--iterations N] [--seed S]
  datablock-admin practice SCENARIO          # a real crashed block to learn on
  eval "$(datablock-admin ansible-setup)"    # then: ansible all -m datablock_recover ...

Every command takes --json (schema pylabhub.recovery/v1), --no-color, -v/--verbose and
-y/--yes (before or after COMMAND); every command that can write takes --dry-run (shows
exactly what would change, writes nothing). 'COMMAND --help' for its options."""

SEE_EXIT_CODES = "exit codes: see '%s --help'." % PROG

ACTIONS_HELP = """\
actions:
  release_writer   free a slot whose writer is gone: the write lock is released, a
                   WRITING slot becomes FREE (its torn bytes zeroed), a DRAINING slot
                   COMMITTED again (its last commit kept)
  release_readers  take the readers that are provably gone off the slot's reader_count
  force_reset      both: the writer and the readers of the slot

A holder that is not provably dead (alive, suspect-hung or unknown) is refused in one
line naming the command that forces it; --verbose adds the evidence.

""" + SEE_EXIT_CODES

DRILL_DESCRIPTION = """\
Crash drill: prove, on this machine, that recovery works.

Each iteration creates a scratch block (/dev/shm/plh_drill_<pid>_<i>, removed after),
commits known data, starts real producer and consumer processes, SIGKILLs them at a
protocol point chosen by a seeded random generator (writer holding the lock, mid-write,
before commit, reader inside a slot, registered consumer, writer draining behind a
reader, writer and reader deadlocked, or a random moment of a busy block), heals the
block, and checks that it then validates and diagnoses healthy, that no slot that was
committed when the kill landed changed or was lost, that new data can be committed and
read back, and that a writer left waiting behind a dead reader finishes. Each scratch
block's configuration is drawn from the 54-cell matrix (buffer policy x consumer sync x
flexible zone x checksum policy; --capacity sizes RingBuffer blocks, Single has 1 slot,
DoubleBuffer 2) and the checks include that configuration's own (checksums judged as its
policy's reader judges them, zone intact, read positions reconciled). The blocks of your
applications are never touched.

The summary prints the seed: --seed S --iterations N reruns exactly the same kill points
and configurations.
Exit code 0 when every iteration survived, 1 when one failed (each failure is listed)."""

PRACTICE_DESCRIPTION = """\
Leave a real crashed DataBlock to practise recovery on: a NEW block (an existing one is
refused), its faults made by real producer and consumer processes really SIGKILLed at a
protocol point, as a crash leaves them:

  stuck_writer    a writer killed half-way through writing slot 0 (release_writer)
  stuck_readers   two readers killed inside slot 0, and a LIVE writer waiting behind
                  them for ever (release_readers; the writer then finishes and exits)
  dead_consumers  three consumers killed while registered (cleanup)
  corruption      committed bytes of slot 0 changed behind its checksum (validate --repair)
  all             every fault in one block (writer: slot 0, readers: 1, corruption: 2)

It prints what it left, every process and its fate, the pids still running and the
commands to try (README, "Your first recovery"). The live waiting writer carries the
block's name on its command line; '%s practice --stop [NAME]' kills whatever
a practice left running on NAME and removes the block - only a practice block (hub name
%s).""" % (PROG, PRACTICE_HUB)

ANSIBLE_SETUP_DESCRIPTION = """\
Print the setup that lets ansible and ansible-doc take the modules' short names
(datablock_recover for pylabhub.recovery.datablock_recover): the collection's
plugins/modules directory on Ansible's module library path - of the copy Ansible itself
uses for the long names, so both run the same files.

  eval "$(datablock-admin ansible-setup)"       # this shell: export ANSIBLE_LIBRARY=...
  datablock-admin ansible-setup --ini           # lines for the [defaults] of ansible.cfg

Nothing is changed by this command; it only prints."""


SNAPSHOT_DIR_HELP = ("where before-images go (default: $PYLABHUB_RECOVERY_SNAPSHOT_DIR, else "
                     "/var/lib/pylabhub-recovery/snapshots for root, "
                     "$XDG_STATE_HOME/pylabhub-recovery/snapshots otherwise)")

UNDO_HELP = """\
Every real run that changes a block first writes its before-image (each store, its
offset, the value it found and the value it wrote, fsynced before the store) and prints
its id. undo checks every store first: if any word the run wrote holds another value
now (a live process wrote since), or the block was re-created, nothing is changed and
the refusal names the field (exit 6; re-created: exit 4). A run killed mid-way is
undone as far as it got. undo writes its own before-image: it can be undone too.

""" + SEE_EXIT_CODES


METRICS_HELP = """\
Metric names and labels: docs/audit-and-undo.md. Typical use, from cron or a systemd
timer:  datablock-admin metrics --textfile /var/lib/node_exporter/textfile_collector

""" + SEE_EXIT_CODES


WATCH_HELP = """\
The policy is a JSON object (docs/watch.md): {"blocks": ["sensor_*"], "interval": 30,
"delay": 60, "repair": false, "max_bytes": null, "textfile": null, "state_file": null}.
A block is healed only when one of its slots was seen stuck (holder proven dead) with the
same holder and words, or a consumer entry dead, on consecutive passes spanning at least
"delay" seconds; suspect holders are never touched, nothing is ever forced. Each heal
writes its before-image and audit line like any other. SIGTERM ends the watch between
passes. One watch per host: a second one exits 3. A bad policy exits 2. --json prints one
JSON document per pass, one per line.

""" + SEE_EXIT_CODES


def _common_options(parser: argparse.ArgumentParser) -> None:
    """--json, --no-color, -y, -v: every command's, accepted before or after the command;
    SUPPRESS keeps a value given before the command from being reset by the subcommand's
    default."""
    S = _suppress(parser)
    parser.add_argument("--json", action="store_true", default=S,
                        help="print the engine's result as JSON (schema %s)" % SCHEMA)
    parser.add_argument("--no-color", action="store_true", default=S,
                        help="no colour (also: NO_COLOR set, or stdout not a terminal)")
    parser.add_argument("-y", "--yes", action="store_true", default=S,
                        help="do not ask for confirmation of --force/--repair")
    parser.add_argument("-v", "--verbose", action="store_true", default=S,
                        help="also the evidence behind each verdict and every store of "
                             "the change list as recorded")


def _writes_options(parser: argparse.ArgumentParser) -> None:
    """--dry-run and where a real run's record goes: every command that can write."""
    parser.add_argument("-n", "--dry-run", action="store_true",
                        help="show what would change; write nothing")
    _record_options(parser)


def _budget_options(parser: argparse.ArgumentParser) -> None:
    """--max-bytes: every command that reads a block's slots."""
    parser.add_argument("--max-bytes", type=_bytes, metavar="N", default=None,
                        help="most bytes to examine in one block (default 256M): the "
                             "4 KiB header, the slot-state table, 4 KiB per slot examined "
                             "one by one (those that are not plain, or every slot when all "
                             "are listed) and, for validate/heal, the data of the slots to "
                             "hash; holes are free. A block over it is refused (exit 4); "
                             "--all skips it")


def _record_options(parser: argparse.ArgumentParser) -> None:
    """--snapshot-dir, --no-snapshot, --audit-log: where a real run's record goes."""
    parser.add_argument("--snapshot-dir", metavar="DIR", help=SNAPSHOT_DIR_HELP)
    parser.add_argument("--no-snapshot", action="store_true",
                        help="write no before-image (then the run cannot be undone)")
    parser.add_argument("--audit-log", metavar="FILE",
                        help="the audit log (default: $PYLABHUB_RECOVERY_AUDIT_LOG, else "
                             "/var/log/pylabhub-recovery/audit.jsonl for root, "
                             "$XDG_STATE_HOME/pylabhub-recovery/audit.jsonl otherwise)")


def _suppress(parser: object) -> str:
    """argparse.SUPPRESS for an argparse parser (it compares the marker by identity), its
    text for a :class:`_Declared`, which does not import argparse."""
    return SUPPRESS if isinstance(parser, _Declared) else argparse.SUPPRESS


def _top_options(parser: argparse.ArgumentParser) -> None:
    """The top level's: --version, and the common options before a command (shown in
    each command's help, not here)."""
    S = _suppress(parser)
    parser.add_argument("--version", action="version", version=VERSION)
    parser.add_argument("--json", action="store_true", default=False, help=S)
    parser.add_argument("--no-color", action="store_true", default=False, help=S)
    parser.add_argument("-y", "--yes", action="store_true", default=False, help=S)
    parser.add_argument("-v", "--verbose", action="store_true", default=False, help=S)


def _every_options(parser: argparse.ArgumentParser) -> None:
    """BLOCK, --all, --match: every command that takes one block or all of them."""
    parser.add_argument("address", metavar="BLOCK", nargs="?", help=ADDRESS_HELP)
    parser.add_argument("--all", action="store_true",
                        help="every DataBlock 'list' shows (exit code: the worst block's)")
    parser.add_argument("--match", metavar="PATTERN",
                        help="with --all: only names or addresses matching this shell "
                             "pattern")


def _diagnose_options(parser: argparse.ArgumentParser) -> None:
    """diagnose's own: --slot, --all-slots."""
    parser.add_argument("--slot", type=_slot, metavar="N|all",
                        help="only this slot's row, reading no other slot's data (default: "
                             "the slots that are not plain); the verdict stays the whole "
                             "block's")
    parser.add_argument("--all-slots", action="store_true",
                        help="list every slot, plain ones too (a plain slot is FREE or "
                             "COMMITTED with no lock, no reader and no writer waiting; by "
                             "default it is only counted)")


def _list_options(parser: argparse.ArgumentParser) -> None:
    """list's PATTERN."""
    parser.add_argument("pattern", nargs="?", metavar="PATTERN",
                        help="only names or addresses matching this shell pattern")


def _repair_options(parser: argparse.ArgumentParser) -> None:
    """--repair: validate's and heal's."""
    parser.add_argument("--repair", action="store_true",
                        help="re-compute mismatching checksums of COMMITTED slots "
                             "(asks on a terminal)")


#: The commands whose plain command lines :func:`_quick_parse` reads without argparse,
#: and their option functions after the common ones (the same functions build their
#: argparse parsers: one declaration). The confirmation a write asks for is the
#: command's, not the parser's: it is asked whichever parser read the line.
_QUICK = {"diagnose": (_budget_options, _every_options, _diagnose_options),
          "list": (_list_options,),
          "cleanup": (_writes_options, _budget_options, _every_options),
          "validate": (_writes_options, _budget_options, _every_options, _repair_options),
          "heal": (_writes_options, _budget_options, _every_options, _repair_options)}


class _Declared:
    """A command's options read from its option functions without argparse: the
    ``add_argument`` calls a parser would get, kept as what :func:`_quick_parse` needs.
    ``plain`` turns False at anything it does not parse the way argparse does (then the
    command line goes to argparse)."""

    def __init__(self) -> None:
        self.flags = {}         # type: Dict[str, str]          # --json -> json
        self.valued = {}        # type: Dict[str, tuple]        # --slot -> (slot, _slot)
        self.defaults = {}      # type: Dict[str, Any]
        self.positional = None  # type: Optional[str]
        self.plain = True

    def add_argument(self, *names: str, **kw: Any) -> None:
        action = kw.get("action")
        if action == "version":             # the top level's --version: no dest
            return
        if not names[0].startswith("-"):
            extra = set(kw) - {"nargs", "metavar", "help"}
            if self.positional or kw.get("nargs") != "?" or extra:
                self.plain = False
            self.positional = names[0]
            self.defaults[names[0]] = None
            return
        longs = [n for n in names if n.startswith("--")]
        dest = (longs or names)[0].lstrip("-").replace("-", "_")
        if action == "store_true" and not set(kw) - {"action", "default", "help"}:
            default = kw.get("default", False)
            self.flags.update((n, dest) for n in names)
        elif action is None and not set(kw) - {"type", "metavar", "default", "help"}:
            default = kw.get("default")
            self.valued.update((n, (dest, kw.get("type"))) for n in names)
        else:
            self.plain = False
            return
        if default != SUPPRESS:
            self.defaults[dest] = default


def _quick_parse(argv: Sequence[str]) -> Optional[Any]:
    """``argv`` parsed without argparse when it is a plain command line of a command in
    :data:`_QUICK` - the command first, then its flags, ``--option VALUE`` (or
    ``--option=VALUE``) and at most one positional - else None, and argparse parses it
    (help, errors, abbreviations, ``--``, anything else). The result has exactly the
    names and values argparse's namespace would have (tested over many command lines).

    Why: argparse with the gettext and locale it loads and the two parsers it builds are
    about a tenth of a diagnosis's start-up (issue 14: ``diagnose`` within 3x
    ``python3 -c pass``)."""
    if not argv or argv[0] not in _QUICK:
        return None
    top, own = _Declared(), _Declared()
    _top_options(top)
    for add in (_common_options,) + _QUICK[argv[0]]:
        add(own)
    if not own.plain:
        return None
    values = dict(top.defaults, command=argv[0])
    values.update(own.defaults)
    rest, positional = list(argv[1:]), False
    while rest:
        word = rest.pop(0)
        name, eq, value = word.partition("=")
        if name in own.flags and not eq:
            values[own.flags[name]] = True
        elif name in own.valued:
            if not eq:
                if not rest or rest[0].startswith("-"):
                    return None
                value = rest.pop(0)
            dest, convert = own.valued[name]
            try:
                values[dest] = convert(value) if convert else value
            except Exception:       # pylint: disable=broad-except  # argparse says why
                return None
        elif word.startswith("-") or positional or own.positional is None:
            return None
        else:
            values[own.positional], positional = word, True
    import types
    return types.SimpleNamespace(**values)


def _record(args: argparse.Namespace) -> Dict[str, Any]:
    """The engine's record options from the command line (None: its defaults)."""
    return {"snapshot_dir": getattr(args, "snapshot_dir", None),
            "snapshot": False if getattr(args, "no_snapshot", False) else None,
            "audit_log": getattr(args, "audit_log", None)}


def _engine():
    """The recovery engine (imported on first use)."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as engine
    return engine


def _r():
    """The renderer, :mod:`._render` (imported on first use)."""
    from . import _render
    return _render


class _ArgError(Exception):
    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


#: The parser class of :func:`_Parser`, made on its first call.
_PARSER_CLASS = None


def _Parser(**kwargs: Any) -> argparse.ArgumentParser:  # pylint: disable=invalid-name
    """An argparse parser that reports errors as one line (raised, so --json can render
    them). A function making one, not the class: the class is made, and argparse
    imported, on the first call (``--version`` makes none)."""
    global _PARSER_CLASS  # pylint: disable=global-statement
    kwargs.setdefault("formatter_class", _formatter)
    if _PARSER_CLASS is None:
        class OneLineErrors(argparse.ArgumentParser):
            """argparse, its errors raised as :class:`_ArgError`."""

            def error(self, message: str) -> NoReturn:
                raise _ArgError(self.prog, message)
        _PARSER_CLASS = OneLineErrors
    return _PARSER_CLASS(**kwargs)


def _slot(text: str):
    if text == "all":
        return "all"
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid slot %r: give a slot index or 'all'" % text)


def _int(text: str) -> int:
    """A whole number; what range it must be in is the engine's to say."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid value %r: give a whole number" % text)


#: A byte count's units (any case), each with its optional ``B`` or ``iB``: 1G, 1gb, 1GiB.
_SHIFT = dict((unit + tail, shift) for unit, shift in
              (("", 0), ("K", 10), ("M", 20), ("G", 30), ("T", 40)) for tail in ("", "B", "IB"))


def _bytes(text: str) -> int:
    """A byte count: digits with an optional binary unit (256M, 1G, 512KiB, 4096), spaces
    around them allowed. Read without ``re`` (which costs a validate a tenth of its
    start-up); the same lines as ``^\\s*(\\d+)\\s*([KMGT]?)(?:I?B)?\\s*$`` (any case) are
    accepted, except units outside ASCII (the regular expression took the Kelvin sign for
    K, then failed on it)."""
    body = text.strip()
    digits = next((i for i, c in enumerate(body) if not c.isdecimal()), len(body))
    unit = body[digits:].lstrip().upper()
    if not digits or not unit.isascii() or unit not in _SHIFT or int(body[:digits]) < 1:
        raise argparse.ArgumentTypeError("invalid byte count %r: give a positive number, "
                                         "optionally with K, M, G or T (binary units)" % text)
    return int(body[:digits]) << _SHIFT[unit]


class _OnlyOne:
    """The subparsers action, giving every command its name and help (for the listing and
    the choices) but building the options of only the command being run (``only``; all
    when None): each command's options cost start-up time. With ``alone``, the other
    commands are not registered at all: each would still cost a parser (argparse asks
    gettext for three translations per parser, about a third of a millisecond)."""

    def __init__(self, action: argparse._SubParsersAction, only: Optional[str],
                 alone: bool = False) -> None:
        self.action = action
        self.only = only
        self.alone = alone and only is not None

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self.only in (None, name):
            return self.action.add_parser(name, **kwargs)
        if not self.alone:
            self.action.add_parser(name, help=kwargs.get("help"))
        return _Unbuilt()


class _Unbuilt:
    """A command that is not being run: its options are not built."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        pass


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The command named in ``argv``: its first word that is not an option (the options
    before a command take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _alone(argv: Sequence[str], command: Optional[str]) -> bool:
    """Whether ``command`` can be parsed without the other commands registered: it is one
    (an unknown word needs them all for argparse's 'invalid choice' message) and the
    top-level help, which lists them, is not asked for before it."""
    if command not in COMMANDS:
        return False
    return not any(a in ("-h", "--help") for a in argv[:list(argv).index(command)])


def _formatter(prog: str, width: Optional[int] = None) -> argparse.HelpFormatter:
    """argparse's RawDescriptionHelpFormatter, given ``width`` or the width argparse would
    take itself. Every parser makes one per ``add_argument`` (to check its arguments), so
    a parser with many is given the width asked for once."""
    return argparse.RawDescriptionHelpFormatter(prog, width=width or _help_width())


def _help_width() -> int:
    """The width argparse would take (COLUMNS, else the terminal's, else 80; less 2),
    found without ``shutil``, which argparse imports for it and which loads the
    compression modules: a tenth of the interpreter's start-up, for ``--help``."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns if columns > 0 else 80) - 2


def build_parser(only: Optional[str] = None, alone: bool = False) -> argparse.ArgumentParser:
    """The parser; with ``only``, the options of that command alone are built; with
    ``alone`` too, no other command is registered (see :func:`_alone`)."""
    import functools        # loaded already: argparse imports it (through re)
    fmt = functools.partial(_formatter, width=_help_width())
    p = _Parser(prog=PROG, description=DESCRIPTION, epilog=EXIT_CODES, formatter_class=fmt)
    _top_options(p)
    subparsers = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    sub = _OnlyOne(subparsers, only, alone)

    def command(name: str, help_: str, *options: Callable[[argparse.ArgumentParser], None],
                epilog: str = SEE_EXIT_CODES, description: Optional[str] = None):
        """A command's parser with the common options and ``options`` (functions adding
        a group of options) added first, as parent parsers would add them: no parser is
        made for a group (each costs argparse's gettext look-ups), none for a command
        that is not built (:class:`_OnlyOne`)."""
        c = sub.add_parser(name, help=help_, description=description or help_,
                           epilog=epilog, formatter_class=fmt)
        for add in (_common_options,) + options:
            add(c)
        return c

    c = command("list", "list every DataBlock on this machine (/dev/shm and memfds) with "
                        "its health (healthy, degraded, suspect, stuck, corrupt)", *_QUICK["list"])

    c = command("diagnose", "explain every slot that is not plain (or one, or all) and "
                            "every consumer; read-only", *_QUICK["diagnose"])

    c = command("recover", "release a stuck slot (dead holders only, unless --force)",
                _writes_options, _budget_options, epilog=ACTIONS_HELP)
    c.add_argument("address", metavar="BLOCK", help=ADDRESS_HELP)
    c.add_argument("--slot", type=_slot, required=True, metavar="N|all",
                   help="the slot index (0 to capacity-1), or 'all' for every slot")
    c.add_argument("--action", required=True, choices=SLOT_ACTIONS, metavar="ACTION",
                   help="what to release: %s (see 'actions' below)" % ", ".join(SLOT_ACTIONS))
    c.add_argument("--force", action="store_true",
                   help="also release holders that may be alive (asks on a terminal)")

    for name, help_ in (
            ("cleanup", "clear the entries of dead consumers and reconcile the counts"),
            ("validate", "check header, slot states and every checksum (--repair: "
                         "re-bless committed slots and the flex zone)"),
            ("heal", "the safe composite: cleanup, release dead holders, validate; "
                     "never forced")):
        command(name, help_, *_QUICK[name])

    c = command("undo", "put back what a real run stored, by CAS on the values it wrote; "
                        "refused whole, naming the field, if anything changed since",
                _writes_options, epilog=UNDO_HELP)
    c.add_argument("snapshot", metavar="SNAPSHOT",
                   help="a before-image id as 'snapshots' lists it, or the path of one")

    c = command("metrics", "Prometheus metrics of this host's blocks (every block validated "
                           "read-only) and of the audit log; read-only", _budget_options,
                epilog=METRICS_HELP)
    c.add_argument("--textfile", metavar="DIR",
                   help="write DIR/pylabhub_recovery.prom atomically (node_exporter's "
                        "--collector.textfile.directory) instead of printing")
    c.add_argument("--match", metavar="PATTERN",
                   help="only blocks whose names or addresses match this shell pattern")
    c.add_argument("--audit-log", metavar="FILE",
                   help="the audit log the history is read from (default: as heal writes)")

    c = command("watch", "diagnose the policy's blocks every interval and heal (never forced) "
                         "what stayed stuck for the policy's delay; one per host",
                epilog=WATCH_HELP)
    c.add_argument("--policy", required=True, metavar="FILE", help="the policy (JSON)")
    c.add_argument("--once", action="store_true",
                   help="one pass, then exit (for timers and tests)")
    _record_options(c)

    c = command("snapshots", "list the before-images of real runs (newest first)")
    c.add_argument("--snapshot-dir", metavar="DIR", help=SNAPSHOT_DIR_HELP)

    c = command("drill", "crash drill: prove on this machine that recovery works",
                description=DRILL_DESCRIPTION)
    c.add_argument("--iterations", type=_int, default=DRILL_ITERATIONS, metavar="N",
                   help="kill-heal-check rounds (default: %d)" % DRILL_ITERATIONS)
    c.add_argument("--seed", type=_int, metavar="S",
                   help="seed of the kill points (default: random; the summary prints it)")
    c.add_argument("--capacity", type=_int, default=DRILL_CAPACITY, metavar="N",
                   help="slots of each scratch block (default: %d)" % DRILL_CAPACITY)
    c.add_argument("--stride", type=_int, default=DRILL_STRIDE, metavar="S",
                   help="bytes per slot, a multiple of 64 (default: %d)" % DRILL_STRIDE)

    c = command("practice", "leave a real crashed block to practise recovery on",
                description=PRACTICE_DESCRIPTION)
    c.add_argument("scenario", nargs="?", choices=PRACTICE_SCENARIOS, metavar="SCENARIO",
                   help="what to leave: %s" % ", ".join(PRACTICE_SCENARIOS))
    c.add_argument("--name", metavar="NAME", default=PRACTICE_NAME,
                   help="the new block's shm name (default: %s)" % PRACTICE_NAME)
    c.add_argument("--stop", metavar="NAME", nargs="?", const="",
                   help="instead: kill what a practice left running on NAME (default: "
                        "--name) and remove that practice block")

    c = command("ansible-setup", "print the one setup line that makes short module names "
                "work (ansible -m datablock_recover, ansible-doc)",
                description=ANSIBLE_SETUP_DESCRIPTION)
    c.add_argument("--ini", action="store_true",
                   help="print ansible.cfg lines instead of a shell export")
    return p


# --------------------------------------------------------------------------- output
def _oneline(text: object) -> str:
    """Untrusted text as one printable line (the core's one escaping rule)."""
    return _engine().printable(text)


def _hexify(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    raise TypeError("%r is not JSON serializable" % type(obj).__name__)


class Out:
    """Where and how results go: stdout (table or JSON), stderr (one-line messages)."""

    def __init__(self, json_mode: bool, color: bool, verbose: bool = False) -> None:
        self.json = json_mode
        self.color = color
        self.verbose = verbose
        self._style: Optional["_render.Style"] = None

    @property
    def style(self) -> "_render.Style":
        if self._style is None:
            self._style = _r().Style(self.color, self.verbose)
        return self._style

    def data(self, obj: Any) -> None:
        import json
        sys.stdout.write(json.dumps(obj, indent=2, default=_hexify) + "\n")

    def lines(self, lines: Sequence[str]) -> None:
        sys.stdout.write("\n".join(lines) + "\n")

    @staticmethod
    def err(kind: str, message: object) -> None:
        sys.stderr.write("%s: %s: %s\n" % (PROG, kind, _oneline(message)))
        sys.stderr.flush()

    def error(self, err: Dict[str, Any], prefix: str = PROG) -> None:
        if self.json:
            self.data({"schema": SCHEMA, "error": err})
        sys.stderr.write("%s: error: %s\n" % (prefix, _oneline(err.get("message", ""))))
        sys.stderr.flush()


def _color(args: argparse.Namespace) -> bool:
    return (not args.no_color and not os.environ.get("NO_COLOR")
            and sys.stdout.isatty() and os.environ.get("TERM") != "dumb")


def _consent(args: argparse.Namespace, warning: str) -> Optional[str]:
    """The consent to --force/--repair. On a terminal (stdin and stderr) warn and ask,
    unless --yes; a "no" raises :class:`Declined`. Without a terminal the flag itself is
    the consent (a script never hangs here): the warning is returned, to be printed once
    the command has run (so a bad block still gives exactly one error line)."""
    if getattr(args, "dry_run", False):
        return None
    if args.yes or not (sys.stdin.isatty() and sys.stderr.isatty()):
        return warning
    Out.err("warning", warning)
    sys.stderr.write("Continue? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if answer.strip().lower() not in ("y", "yes"):
        raise _engine().Declined("not confirmed; nothing was changed")
    return None


def _warn(deferred: Optional[str]) -> None:
    if deferred:
        Out.err("warning", deferred)


# --------------------------------------------------------------------------- exit codes
def exit_code(operation: str, result: Dict[str, Any]) -> int:
    """The documented exit code of one block's engine result, from what the engine
    published: diagnose, validate and heal exit 0 only for a healthy block (the one rule:
    same block, same code); recover and cleanup done in part give 1, refused 3, failed
    (a concurrent change) 6."""
    E = _engine()
    if operation in ("diagnose", "validate"):
        return E.EXIT_OK if result["healthy"] else E.EXIT_FINDINGS
    if operation in ("recover", "cleanup"):
        if result["released"] and (result["refused"] or result["failed"]):
            return E.EXIT_FINDINGS
        if result["refused"]:
            return E.EXIT_REFUSED
        return E.EXIT_CONCURRENT if result["failed"] else E.EXIT_OK
    if operation == "heal":
        if result["failed"]:
            return E.EXIT_CONCURRENT
        if result["refused"]:
            return E.EXIT_REFUSED
        return E.EXIT_OK if result["healthy"] else E.EXIT_FINDINGS
    return E.EXIT_OK


def _report_outcomes(result: Dict[str, Any], verbose: bool = False) -> None:
    """Each refusal the engine published once, as one line with the command that forces
    it (``--verbose``: the evidence of the verdicts on the lines after it); each
    concurrent change."""
    address = str((result.get("block") or {}).get("address", ""))
    for o in result.get("refused") or []:
        Out.err("refused", _r().refusal_line(o, address))
        if verbose:
            for line in o.get("evidence") or []:
                sys.stderr.write("  evidence: %s\n" % _oneline(line))
    for o in result.get("failed") or []:
        Out.err("concurrent change", o.get("message", ""))


# --------------------------------------------------------------------------- commands
def _discover(pattern: Optional[str], max_bytes: Optional[int] = None) -> Dict[str, Any]:
    """Every block with its health (the engine's list_blocks: one rule, as diagnose),
    and what could not be read."""
    return _engine().list_blocks(pattern, max_bytes)


def _progress(label: str):
    return _r().ProgressBar(label) if sys.stderr.isatty() else None


def cmd_list(args: argparse.Namespace, out: Out) -> int:
    found = _discover(args.pattern, getattr(args, "max_bytes", None))
    if out.json:
        out.data({"schema": SCHEMA, "operation": "list", "blocks": found["blocks"],
                  "unreadable": found["unreadable"]})
    else:
        out.lines(_r().render_list(found["blocks"], out.style)
                  + _r().unreadable_lines(found["unreadable"]))
    return _engine().EXIT_OK


def cmd_diagnose(args: argparse.Namespace, out: Out) -> int:
    slot = None if args.slot in (None, "all") else args.slot
    if args.all and slot is not None:
        raise _ArgError("%s diagnose" % PROG, "--slot needs a BLOCK (with --all every "
                        "block's slots are shown)")
    every = args.all_slots or args.slot == "all"
    if every and slot is not None:
        raise _ArgError("%s diagnose" % PROG, "--all-slots and --slot N exclude each other")
    return _one_or_all(args, out, "diagnose", lambda address, progress: _engine().diagnose(
        address, slot=slot, max_bytes=args.max_bytes, all_slots=every),
        max_bytes=args.max_bytes, all_slots=every)


def cmd_recover(args: argparse.Namespace, out: Out) -> int:
    deferred = _consent(args, "--force releases holders of %s slot %s that may be alive: a "
                              "live writer's or reader's data can be corrupted"
                        % (args.address, args.slot)) if args.force else None
    result = _engine().recover(args.address, args.slot, args.action, force=args.force,
                               dry_run=args.dry_run, max_bytes=args.max_bytes, **_record(args))
    _warn(deferred)
    if out.json:
        out.data(result)
    else:
        out.lines(_r().render_recover(result, out.style))
    _report_outcomes(result, out.verbose)
    return exit_code("recover", result)


def _one_or_all(args: argparse.Namespace, out: Out, operation: str,
                call: Callable[[str, Any], Dict[str, Any]], **kwargs: Any) -> int:
    """One block (``call(address, progress)``), or with --all every block through one
    ``each_block(operation, --match, **kwargs)`` call of the engine."""
    if args.all == bool(args.address):
        raise _ArgError("%s %s" % (PROG, operation),
                        "give a BLOCK or --all (not both)" if args.all else
                        "a BLOCK or --all is required")
    if args.match and not args.all:
        raise _ArgError("%s %s" % (PROG, operation), "--match needs --all")
    deferred = _consent(args, "--repair re-computes the checksum of COMMITTED slots (and of "
                              "the flexible zone) whose data no longer matches it: readers "
                              "will then accept that data as valid; it cannot restore the "
                              "bytes") if getattr(args, "repair", False) else None
    if args.all:
        return _every_block(out, operation, deferred, args.match, kwargs)
    result = call(args.address, _progress(args.address))
    _warn(deferred)
    if out.json:
        out.data(result)
    else:
        out.lines(_r().RENDER[operation](result, out.style))
    _report_outcomes(result, out.verbose)
    return exit_code(operation, result)


def entry_exit_code(operation: str, entry: Dict[str, Any]) -> int:
    """The exit code of one ``each_block`` entry: its error's (from the error classes),
    4 (no usable block) when it was skipped, else its result's."""
    E = _engine()
    if entry.get("error"):
        return E.exit_code_for(entry["error"].get("code"))
    if entry.get("skipped"):
        return E.EXIT_NO_BLOCK
    return exit_code(operation, entry["result"])


def _every_block(out: Out, operation: str, deferred: Optional[str], pattern: Optional[str],
                 kwargs: Dict[str, Any]) -> int:
    summary = _engine().each_block(operation, pattern, **kwargs)
    entries = summary["blocks"]
    if any(e["result"] is not None for e in entries):
        _warn(deferred)
    worst = _engine().EXIT_OK
    lines: List[str] = []
    for entry in entries:
        worst = max(worst, entry_exit_code(operation, entry))
        if entry["error"]:
            Out.err("error", entry["error"].get("message", ""))     # names the block
        elif entry["skipped"]:
            Out.err("skipped", "%s: %s" % (entry["address"], entry["skipped"]))
        else:
            _report_outcomes(entry["result"], out.verbose)
            lines += _r().RENDER[operation](entry["result"], out.style) + [""]
    if out.json:
        out.data(summary)
        return worst
    errors = sum(1 for e in entries if e["error"])
    skipped = sum(1 for e in entries if e["skipped"])
    if not entries:
        lines.append("no DataBlock found")
    else:
        lines.append("%d block(s)%s%s; exit %d" % (
            len(entries), (", %d error(s)" % errors) if errors else "",
            (", %d skipped" % skipped) if skipped else "", worst))
    out.lines(lines)
    return worst


def _with_bar(fn: Callable[..., Dict[str, Any]], progress: Optional["_render.ProgressBar"],
              **kw: Any) -> Dict[str, Any]:
    try:
        return fn(progress=progress, **kw)
    finally:
        if progress is not None:
            progress.close()


def cmd_cleanup(args: argparse.Namespace, out: Out) -> int:
    return _one_or_all(args, out, "cleanup", lambda address, progress: _engine().cleanup(
        address, dry_run=args.dry_run, max_bytes=args.max_bytes, **_record(args)),
        dry_run=args.dry_run, max_bytes=args.max_bytes, **_record(args))


def cmd_validate(args: argparse.Namespace, out: Out) -> int:
    return _one_or_all(args, out, "validate", lambda address, progress: _with_bar(
        _engine().validate, progress, address=address, repair=args.repair, dry_run=args.dry_run,
        max_bytes=args.max_bytes, **_record(args)), repair=args.repair, dry_run=args.dry_run,
        max_bytes=args.max_bytes, **_record(args))


def cmd_heal(args: argparse.Namespace, out: Out) -> int:
    return _one_or_all(args, out, "heal", lambda address, progress: _with_bar(
        _engine().heal, progress, address=address, repair=args.repair, dry_run=args.dry_run,
        max_bytes=args.max_bytes, **_record(args)), repair=args.repair, dry_run=args.dry_run,
        max_bytes=args.max_bytes, **_record(args))


def cmd_undo(args: argparse.Namespace, out: Out) -> int:
    result = _engine().undo(args.snapshot, dry_run=args.dry_run, **_record(args))
    if out.json:
        out.data(result)
    else:
        out.lines(_r().render_undo(result, out.style))
    return _engine().EXIT_OK


def cmd_metrics(args: argparse.Namespace, out: Out) -> int:
    doc = _engine().metrics(args.match, textfile=args.textfile, audit_log=args.audit_log,
                            max_bytes=args.max_bytes)
    if out.json:
        out.data(doc)
    elif args.textfile:
        out.lines(["wrote %s (%d block(s))" % (_oneline(doc["textfile"]), len(doc["blocks"]))])
    else:
        sys.stdout.write(doc["text"])
    return _engine().EXIT_OK


def cmd_watch(args: argparse.Namespace, out: Out) -> int:
    import json

    def show(doc: Dict[str, Any]) -> None:
        if out.json:
            sys.stdout.write(json.dumps(doc, default=_hexify) + "\n")
        else:
            out.lines(_r().render_watch_pass(doc, out.style))
        sys.stdout.flush()
    result = _engine().watch(args.policy, once=args.once, on_pass=show, **_record(args))
    if not out.json and result.get("stopped"):
        out.lines(["watch stopped after pass %d" % result.get("pass", 0)])
    return _engine().EXIT_OK


def cmd_snapshots(args: argparse.Namespace, out: Out) -> int:
    listing = _engine().snapshots(args.snapshot_dir)
    if out.json:
        out.data(listing)
    else:
        out.lines(_r().render_snapshots(listing, out.style))
    return _engine().EXIT_OK


def cmd_drill(args: argparse.Namespace, out: Out) -> int:
    meter = (_r().ProgressBar("drill", scale=0, unit="iterations") if sys.stderr.isatty()
             else None)
    try:   # the engine checks every argument before it creates anything
        result = _engine().drill(args.iterations, args.seed, capacity=args.capacity,
                                 stride=args.stride, progress=meter)
    finally:
        if meter is not None:
            meter.close()
    if out.json:
        out.data(result)
    else:
        rerun = "%s drill --iterations %d --seed %d%s%s" % (
            PROG, result["iterations"], result["seed"],
            " --capacity %d" % args.capacity if args.capacity != DRILL_CAPACITY else "",
            " --stride %d" % args.stride if args.stride != DRILL_STRIDE else "")
        out.lines(_r().render_drill(result, out.style, rerun))
    return _engine().EXIT_OK if result["ok"] else _engine().EXIT_FINDINGS


def cmd_practice(args: argparse.Namespace, out: Out) -> int:
    prog = "%s practice" % PROG
    if args.stop is not None:
        if args.scenario:
            raise _ArgError(prog, "--stop takes no SCENARIO")
        result = _engine().practice_stop(args.stop or args.name)
        if out.json:
            out.data(result)
        else:
            out.lines(_r().render_practice_stop(result, out.style))
        return _engine().EXIT_OK
    if not args.scenario:
        raise _ArgError(prog, "a SCENARIO is needed (%s), or --stop"
                        % ", ".join(PRACTICE_SCENARIOS))
    result = _engine().practice(args.scenario, args.name)
    if out.json:
        out.data(result)
    else:
        stop = "%s practice --stop %s" % (PROG, _r().quote(result["block"]))
        out.lines(_r().render_practice(result, out.style, stop))
    return _engine().EXIT_OK


def cmd_ansible_setup(args: argparse.Namespace, out: Out) -> int:
    if out.json:
        raise _ArgError("%s ansible-setup" % PROG, "--json: this command prints shell or "
                        "ansible.cfg lines, not a document")
    from . import _ansible_setup
    out.lines(_ansible_setup.main_lines(args.ini))
    return _engine().EXIT_OK


COMMANDS = {"list": cmd_list, "diagnose": cmd_diagnose, "recover": cmd_recover,
            "cleanup": cmd_cleanup, "validate": cmd_validate, "heal": cmd_heal,
            "drill": cmd_drill, "practice": cmd_practice, "ansible-setup": cmd_ansible_setup,
            "undo": cmd_undo, "snapshots": cmd_snapshots, "metrics": cmd_metrics,
            "watch": cmd_watch}


# --------------------------------------------------------------------------- main
#: Commands whose whole run is one bounded read (nothing written, no loop): run as the
#: program, they run without the cyclic garbage collector, and the exit does not walk what
#: start-up made (``gc.freeze``). Issue 14: the collections during the imports and the
#: exit's collection were a tenth of a diagnosis's CPU, and freed nothing a process exit
#: does not. Every other command runs with the collector on from its parsing on.
_NO_GC = ("diagnose", "list")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run datablock-admin; returns the exit code (never raises for a user error).

    Without ``argv`` it runs as the program (the console script, ``python -m``): the
    arguments are ``sys.argv``'s, and the garbage collector is managed as
    :data:`_NO_GC` says; with ``argv`` (a caller's own process) the collector is left
    alone."""
    if argv is not None:
        return _main(list(argv), False)
    import gc
    gc.disable()
    try:
        return _main(sys.argv[1:], True)
    finally:
        if not gc.isenabled():
            gc.freeze()
            gc.enable()


def _main(argv: List[str], program: bool) -> int:
    if argv == ["--version"]:           # nothing to parse, nothing to load
        sys.stdout.write(VERSION + "\n")
        return 0
    out = Out("--json" in argv, False)
    try:
        args = _quick_parse(argv)
        if args is None:
            command = _command_in(argv)
            args = build_parser(command, _alone(argv, command)).parse_args(argv)
        if program and args.command not in _NO_GC:
            import gc
            gc.enable()
        out = Out(args.json, _color(args), args.verbose)
        return COMMANDS[args.command](args, out)
    except _ArgError as exc:
        E = _engine()
        out.error({"code": E.UsageError.code, "message": exc.message}, prefix=exc.prog)
        return E.EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\n%s: interrupted\n" % PROG)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (| head): leave quietly, without a second error at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # the last line of defence: never a traceback for a user
        return _failed(exc, out)


def _failed(exc: Exception, out: Out) -> int:
    """A :class:`RecoveryError` as its one line and exit code; anything else as an
    internal error (the engine is loaded here: only errors need its classes)."""
    E = _engine()
    if isinstance(exc, E.RecoveryError):
        out.error(exc.to_dict())
        return exc.exit_code
    if os.environ.get("PLH_DEBUG") == "1":
        import traceback
        traceback.print_exc()
    out.error({"code": "internal", "message": "internal error: %s: %s (PLH_DEBUG=1 shows "
               "the traceback)" % (type(exc).__name__, exc)})
    return E.EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
