# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's ``main()`` in-process with module args, the standard way.

``run(module, args, check_mode=False, diff=False)`` returns ``Run`` (``failed``,
``result``, ``warnings``): ``exit_json``/``fail_json`` are patched to raise, module args
are exposed with ``ansible.module_utils.testing.patch_module_args`` (ansible-core 2.19;
older cores get ``basic._ANSIBLE_ARGS`` set directly). Every result goes through a JSON
round trip, as a real run's would.

The collection is imported inside the fixtures: this conftest may be loaded before the
root conftest has made ``ansible_collections.pylabhub.recovery`` importable.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19
    patch_module_args = None


class AnsibleExitJson(Exception):
    pass


class AnsibleFailJson(Exception):
    pass


def _exit_json(self, **kwargs):  # pylint: disable=unused-argument
    kwargs.setdefault("changed", False)
    raise AnsibleExitJson(kwargs)


def _fail_json(self, msg="", **kwargs):  # pylint: disable=unused-argument
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise AnsibleFailJson(kwargs)


@contextlib.contextmanager
def module_args(args):
    if patch_module_args is not None:
        with patch_module_args(args):
            yield
        return
    old = basic._ANSIBLE_ARGS  # pylint: disable=protected-access
    basic._ANSIBLE_ARGS = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    try:
        yield
    finally:
        basic._ANSIBLE_ARGS = old


class Run(object):
    def __init__(self, failed, result, warnings):
        self.failed = failed
        self.result = result
        self.warnings = warnings

    def __getitem__(self, key):
        return self.result[key]

    def get(self, key, default=None):
        return self.result.get(key, default)

    def __repr__(self):
        return "Run(failed=%r, %s)" % (self.failed, json.dumps(self.result)[:2000])


@pytest.fixture
def run(monkeypatch):
    """``run(module, args, check_mode=False, diff=False) -> Run``."""
    def _run(module, args, check_mode=False, diff=False):
        args = dict(args)
        if check_mode:
            args["_ansible_check_mode"] = True
        if diff:
            args["_ansible_diff"] = True
        warnings = []
        with monkeypatch.context() as mp:
            mp.setattr(basic.AnsibleModule, "exit_json", _exit_json)
            mp.setattr(basic.AnsibleModule, "fail_json", _fail_json)
            mp.setattr(basic.AnsibleModule, "warn",
                       lambda self, warning: warnings.append(warning))
            with module_args(args):
                try:
                    module.main()
                except AnsibleExitJson as exc:
                    return Run(False, json.loads(json.dumps(exc.args[0])), warnings)
                except AnsibleFailJson as exc:
                    return Run(True, json.loads(json.dumps(exc.args[0])), warnings)
        raise AssertionError("the module returned without exit_json or fail_json")
    return _run


@pytest.fixture
def lab():
    """A CrashedBlocks: children killed and blocks unlinked after the test."""
    from ansible_collections.pylabhub.recovery.tests.crashed_blocks import CrashedBlocks
    with CrashedBlocks() as the_lab:
        yield the_lab


@pytest.fixture
def name():
    """A unique block name (the lab unlinks what it creates)."""
    from ansible_collections.pylabhub.recovery.tests.crashed_blocks import unique_name
    return unique_name("plhmod")


@pytest.fixture
def without_third_party_libraries(monkeypatch):
    """Make psutil and posix_ipc (installed for the tests) unimportable for the test:
    the modules use the standard library only."""
    import sys
    for lib in ("psutil", "posix_ipc"):
        monkeypatch.setitem(sys.modules, lib, None)   # import raises ImportError
    yield
