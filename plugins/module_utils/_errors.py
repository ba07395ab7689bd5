# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One exception hierarchy for every face.

Each error carries a stable ``code`` (a short slug used in JSON results and Ansible
failures) and the ``exit_code`` the CLI returns, so the CLI, the API and the modules can
never disagree on what an error means. Messages are one line and say what mismatched.
"""

from __future__ import annotations

# Exit codes of datablock-admin (documented in --help and the README).
EXIT_OK = 0             # healthy, or the action was done (or nothing needed doing)
EXIT_FINDINGS = 1       # diagnose found stuck slots / validate found corruption / heal left work
EXIT_USAGE = 2          # bad arguments: bad name, slot out of range, unknown action
EXIT_REFUSED = 3        # refused an unsafe action: the holder is alive, hung or unknown
EXIT_NO_BLOCK = 4       # missing block, foreign file, unsupported layout, truncated, unsafe path
EXIT_PERMISSION = 5     # permission denied or wrong owner
EXIT_CONCURRENT = 6     # a word changed between plan and action; nothing half-done
EXIT_INTERNAL = 7       # platform cannot do it (no atomics) or an internal error
EXIT_SNAPSHOT = 8       # the before-image could not be written: nothing was changed


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= code <= 0xDCFF:       # a byte of invalid UTF-8 (surrogateescape)
        return "\\x%02x" % (code - 0xDC00)
    if code < 0x100:
        return "\\x%02x" % code
    return "\\u%04x" % code if code < 0x10000 else "\\U%08x" % code


def printable(text: object) -> str:
    """Untrusted text (a file name, a name or uid from a block, a message built from them)
    as one printable line: C0 and C1 controls (ESC, so every CSI/OSC sequence), DEL,
    newlines and other line/paragraph separators, bidi overrides and other invisible format
    characters, lone surrogates and the bytes of invalid UTF-8 (given as ``bytes``, or as a
    string decoded with ``surrogateescape`` such as a file name from ``os.listdir``) are
    shown as backslash escapes (``\\x1b``, ``\\n``, ``\\u202e``, ``\\xff``). Printable
    text, non-ASCII letters included, is unchanged, so the common case costs nothing.

    Every face prints untrusted text through this one function (the CLI's tables and
    messages, the modules' ``msg`` and warnings, the fleet_summary callback); JSON results
    keep exact values and are escaped per JSON only."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "surrogateescape")
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def printable_tree(obj: object) -> object:
    """A copy of a JSON-like result with every string (keys too) made :func:`printable`:
    what a text face renders, so no field can be forgotten."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable_tree(k): printable_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [printable_tree(v) for v in obj]
    return obj


#: The name error messages have always used for :func:`printable`.
one_line = printable


class RecoveryError(Exception):
    """Base of every error this project raises on purpose."""

    code = "error"
    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, text: str) -> None:   # always one printable line (see one_line)
        self._message = one_line(text)
        self.args = (self._message,)

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message}
        out.update({k: v for k, v in self.details.items() if v is not None})
        return out


class UsageError(RecoveryError):
    """The request itself is malformed (bad name, unknown action, ...)."""

    code = "usage"
    exit_code = EXIT_USAGE


class InvalidName(UsageError):
    code = "invalid-name"


class SlotOutOfRange(UsageError):
    code = "slot-out-of-range"


class BlockNotFound(RecoveryError):
    code = "not-found"
    exit_code = EXIT_NO_BLOCK


class UnsafePath(RecoveryError):
    """A symlink, FIFO, directory or other non-regular file where a block should be."""

    code = "unsafe-path"
    exit_code = EXIT_NO_BLOCK


class NotADataBlock(RecoveryError):
    """A foreign file: no pylabhub magic."""

    code = "not-a-datablock"
    exit_code = EXIT_NO_BLOCK


class UnsupportedLayout(RecoveryError):
    """Magic is right but version, layout hash, geometry or layout checksum is not ours."""

    code = "unsupported-layout"
    exit_code = EXIT_NO_BLOCK


class TruncatedBlock(RecoveryError):
    code = "truncated"
    exit_code = EXIT_NO_BLOCK


class OverBudget(RecoveryError):
    """The block would cost more to examine than the byte budget allows (a huge or lying
    geometry); nothing was read past the header and the allocation map."""

    code = "over-budget"
    exit_code = EXIT_NO_BLOCK


class BlockNotReady(RecoveryError):
    """Magic set but both layout hashes still zero: caught mid-creation; retry later."""

    code = "not-ready"
    exit_code = EXIT_NO_BLOCK


class PermissionDenied(RecoveryError):
    code = "permission"
    exit_code = EXIT_PERMISSION


class WrongOwner(PermissionDenied):
    code = "wrong-owner"


class HolderAlive(RecoveryError):
    """Refused: the holder is alive, suspect-hung or unknown and force was not given."""

    code = "holder-alive"
    exit_code = EXIT_REFUSED


class Declined(RecoveryError):
    """A face asked for confirmation (the CLI, of --force or --repair) and was told no;
    nothing was changed."""

    code = "not-confirmed"
    exit_code = EXIT_REFUSED


class ConcurrentChange(RecoveryError):
    code = "concurrent-change"
    exit_code = EXIT_CONCURRENT


class AtomicsUnavailable(RecoveryError):
    code = "atomics-unavailable"
    exit_code = EXIT_INTERNAL


class SnapshotError(RecoveryError):
    """The before-image could not be written (directory unusable, disk full): the
    mutation was refused and nothing was changed (or, mid-run, the block is left as a
    SIGKILL at that store would leave it, with every applied store in the journal)."""

    code = "snapshot-failed"
    exit_code = EXIT_SNAPSHOT


class UndoRefused(RecoveryError):
    """Something the recovery wrote changed since: undo would overwrite a live value."""

    code = "undo-refused"
    exit_code = EXIT_CONCURRENT


class SnapshotMismatch(RecoveryError):
    """The block at the snapshot's address is not the block the snapshot was taken of."""

    code = "snapshot-mismatch"
    exit_code = EXIT_NO_BLOCK


class PolicyError(UsageError):
    """The watch's policy file is missing, not JSON, or holds a key or value it does not
    take (docs/watch.md); the watch did not start and nothing was changed."""

    code = "bad-policy"


class WatchRunning(RecoveryError):
    """Another watch holds this host's watch lock: two watches never run at once."""

    code = "watch-running"
    exit_code = EXIT_REFUSED


def exit_code_for(code: object) -> int:
    """The exit code of the error whose ``code`` slug is ``code`` (the ``code`` of an
    error dict, e.g. from :meth:`RecoveryError.to_dict`), read from the class hierarchy
    itself (subclasses defined elsewhere included), so it cannot drift from the classes.
    A code no class carries (``internal``, or an unknown one) is :data:`EXIT_INTERNAL`."""
    pending = [RecoveryError]
    while pending:
        cls = pending.pop(0)
        if cls.code == code:
            return cls.exit_code
        pending.extend(cls.__subclasses__())
    return EXIT_INTERNAL
