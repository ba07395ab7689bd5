"""Fixtures of the datablock-admin tests.

The CLI always runs as a subprocess (``python -m pylabhub.recovery.cli``) with the
PYTHONPATH the root conftest set, so each test exercises the real entry path. Every run
is checked for the invariants that hold for any input: no traceback, and with ``--json``
stdout is one document valid against docs/schema-v1.json.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent
if str(UNIT) not in sys.path:
    sys.path.insert(0, str(UNIT))

from plh_crash import crashes, names  # noqa: E402,F401 pylint: disable=unused-import

REPO = UNIT.parent.parent
SCHEMA_FILE = REPO / "docs" / "schema-v1.json"


@pytest.fixture(scope="session")
def schema():
    """A validator for docs/schema-v1.json (jsonschema, from requirements-dev.txt)."""
    import jsonschema
    doc = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc)


def check_schema(validator, doc, context=""):
    """Validate ``doc`` against the whole schema; on failure, explain with the $def its
    shape selects (the top level is a oneOf, whose own message says little)."""
    import jsonschema
    if validator.is_valid(doc):
        return
    if "error" in doc:
        which = "error_output"
    elif doc.get("operation") == "list":
        which = "list_output"
    elif "blocks" in doc:
        which = "each_block"
    else:
        which = str(doc.get("operation"))
    sub = dict(validator.schema, **{"$ref": "#/$defs/" + which})
    sub.pop("oneOf", None)
    errors = list(type(validator)(sub).iter_errors(doc))
    best = jsonschema.exceptions.best_match(errors) if errors else None
    where = list(best.absolute_path) if best else "?"
    raise AssertionError("%r\nnot valid against %s at %s: %s" % (
        context, which, where, best.message if best else "oneOf matched none/several"))


class Run:
    """One finished CLI run."""

    def __init__(self, argv, rc, stdout, stderr):
        self.argv, self.rc, self.stdout, self.stderr = argv, rc, stdout, stderr

    @property
    def json(self):
        return json.loads(self.stdout)

    @property
    def err_lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __repr__(self):
        return "Run(%r, rc=%s)\n--- stdout\n%s--- stderr\n%s" % (
            self.argv, self.rc, self.stdout, self.stderr)


@pytest.fixture
def cli(schema):
    """``cli(*args, env=None, argv0=None)`` runs datablock-admin; returns a :class:`Run`.

    stdin is /dev/null (never a terminal): the CLI must not wait for an answer.
    """
    def run(*args, env=None, prefix=None, timeout=60):
        argv = list(prefix or [sys.executable, "-m", "pylabhub.recovery.cli"]) + list(args)
        full_env = os.environ.copy()
        full_env.pop("PLH_DEBUG", None)
        full_env.update(env or {})
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=full_env, timeout=timeout, check=False)
        r = Run(args, p.returncode, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr + p.stdout or full_env.get("PLH_DEBUG") == "1", r
        if "--json" in args and p.stdout:
            check_schema(schema, r.json, r)
        return r
    return run


@pytest.fixture
def tty_cli():
    """``tty_cli(*args, answer=None, stdout_tty=False)`` runs the CLI with stdin and stderr
    on a pseudo-terminal (and stdout too when ``stdout_tty``); ``answer`` is typed when
    the prompt appears. Returns (rc, terminal text, stdout text)."""
    import pty

    def run(*args, answer=None, stdout_tty=False, env=None, timeout=30):
        master, slave = pty.openpty()
        full_env = os.environ.copy()
        full_env.pop("NO_COLOR", None)
        full_env.update(env or {})
        stdout = slave if stdout_tty else subprocess.PIPE
        p = subprocess.Popen([sys.executable, "-m", "pylabhub.recovery.cli"] + list(args),
                             stdin=slave, stdout=stdout, stderr=slave, env=full_env,
                             close_fds=True)
        os.close(slave)
        seen = b""
        answered = False
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                p.kill()
                pytest.fail("CLI on a terminal did not finish: %r" % seen)
            ready = select.select([master], [], [], 0.05)[0]
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:      # EIO: the child closed the terminal
                    chunk = b""
                seen += chunk
                if answer is not None and not answered and b"[y/N]" in seen:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
                if not chunk and p.poll() is not None:
                    break
            elif p.poll() is not None:
                break
        out = p.stdout.read().decode() if p.stdout else ""
        p.wait()
        os.close(master)
        return p.returncode, seen.decode(errors="replace"), out
    return run
