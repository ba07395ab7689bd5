# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """What the datablock modules need on the managed host (nothing beyond Python).

    Kept in step with ``plugins/module_utils/_atomics.py`` (how shared words are
    changed) and ``datablock_info``'s ``atomics`` result (which provider a host has).
    """

    DOCUMENTATION = r'''
options: {}
requirements:
  - Python 3.8 or newer on the managed host, standard library only - no third-party
    Python library is used or looked for
  - Linux (C(/dev/shm), C(/proc))
  - To change a block, shared words are changed atomically with GCC's C(libatomic.so.1)
    when it is installed (package C(libatomic1)), else on x86-64 with the lock-prefixed
    instructions GCC itself emits. Where neither is available the modules still read and
    diagnose, and refuse to write, saying why (see RV(pylabhub.recovery.datablock_info#module:atomics))
'''
