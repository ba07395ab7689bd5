"""``datablock-admin ansible-setup``: the one step that makes short module names work.

Ansible resolves a bare module name (``ansible all -m datablock_recover``,
``ansible-doc datablock_recover``) in ``ansible.builtin`` and in its module library path
(``ANSIBLE_LIBRARY``, ``[defaults] library`` in ansible.cfg), never inside a collection:
an ad-hoc command has no ``collections:`` keyword. So the step is to put the collection's
``plugins/modules`` directory on the library path.

Which directory matters: a copy installed by ``ansible-galaxy`` (in a collections path)
wins over pip's copy in ``site-packages``, because Ansible searches its collections
paths before ``sys.path``. Short names must run the same files as the long names, so
the directory is the one Ansible itself resolves the FQCN to (asked of ``ansible-doc``);
only when no ``ansible-doc`` can answer is it this installation's own copy.

This face never imports ansible: it runs ``ansible-doc`` as a program.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple

from .cli import shell_quote

#: A module of the collection, asked for by FQCN to learn where Ansible finds it.
PROBE_MODULE = "pylabhub.recovery.datablock_info"
ENV_VAR = "ANSIBLE_LIBRARY"


def _ansible_doc() -> Optional[str]:
    """The ``ansible-doc`` of this Python's environment (where ``pip install
    'pylabhub-recovery[ansible]'`` puts it), else the first one on ``PATH``."""
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("ansible-doc")


def _asked_ansible(ansible_doc: str) -> Optional[str]:
    """The modules directory Ansible resolves ``PROBE_MODULE`` to, or None."""
    # No bytecode written into the collection: `ansible-galaxy collection verify` would
    # report a __pycache__ directory it did not install as modified content.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run([ansible_doc, "--json", "-t", "module", PROBE_MODULE],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, env=env, timeout=120, check=False)
        filename = json.loads(proc.stdout.decode("utf-8"))[PROBE_MODULE]["doc"]["filename"]
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError):
        return None
    return os.path.dirname(str(filename))


def _own_copy() -> str:
    """This installation's own copy of the collection's modules directory."""
    from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(_engine.__file__))),
                        "modules")


def modules_dir() -> Tuple[str, str]:
    """``(directory, how it was found)``: the collection's ``plugins/modules`` directory
    that Ansible uses, and a short phrase saying how that is known."""
    ansible_doc = _ansible_doc()
    if ansible_doc:
        found = _asked_ansible(ansible_doc)
        if found:
            return found, "the collection where %s finds %s" % (ansible_doc, PROBE_MODULE)
        how = "%s could not resolve %s; this installation's own copy" % (ansible_doc, PROBE_MODULE)
    else:
        how = ("no ansible-doc found (pip install 'pylabhub-recovery[ansible]' brings "
               "Ansible); this installation's own copy")
    return _own_copy(), how


def library_path(directory: str, current: Optional[str]) -> str:
    """``directory`` first, then the entries of ``current`` (a library path) without it:
    applying the setup twice changes nothing."""
    parts = [directory] + [p for p in (current or "").split(os.pathsep) if p and p != directory]
    return os.pathsep.join(parts)


def render(directory: str, how: str, ini: bool, current: Optional[str]) -> List[str]:
    """The lines to print: a shell ``export`` (default) or ``ansible.cfg`` lines."""
    head = ["# pylabhub.recovery: short module names for ansible and ansible-doc",
            "# (%s)" % how]
    if ini:
        return head + ["# Add to the [defaults] section of your ansible.cfg (or join the",
                       "# directory with ':' to a library line you already have):",
                       "[defaults]",
                       "library = %s" % directory]
    return head + ["export %s=%s" % (ENV_VAR, shell_quote(library_path(directory, current)))]


def main_lines(ini: bool) -> List[str]:
    """What ``datablock-admin ansible-setup [--ini]`` prints."""
    directory, how = modules_dir()
    return render(directory, how, ini, os.environ.get(ENV_VAR))
