# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """What the datablock modules need on the managed host, and what they may use.

    Paired with ``plugins/module_utils/dependencies.py``, which probes the optional
    libraries and reports them in every result as ``optional_libraries``.
    """

    DOCUMENTATION = r'''
options: {}
requirements:
  - Python 3.8 or newer on the managed host, standard library only
  - Linux (C(/dev/shm), C(/proc)); changing a block needs C(libatomic.so.1) (package
    C(libatomic1)), reading it does not
  - Optional - C(psutil) and C(posix_ipc). The modules do not need them; they are detected
    and their presence and version reported in RV(optional_libraries). A missing (or
    broken) optional library never fails a task and never prints a traceback
'''
