# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real atomic operations on shared words, from pure Python.

Live C++ pylabhub processes change the same words with lock-free atomics, so a store or
compare-and-swap made by a Python read-modify-write would race them. We call GCC's
``libatomic`` (``__atomic_*_N``) through ctypes: on x86-64 and aarch64 those entry points
are the native lock-free instructions for 1, 4 and 8 byte words, and no compiler is needed
on the host. Where no libatomic exists, loads fall back to aligned single-word reads (what
the hardware does anyway for aligned words) and every *write* raises
:class:`AtomicsUnavailable` with a clear message, so nothing is ever changed unsafely.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional, Tuple

from ._errors import AtomicsUnavailable

SEQ_CST = 5
_CTYPE = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}
_CANDIDATES = ("libatomic.so.1", "libatomic.so")


def _load_library() -> Tuple[Optional[ctypes.CDLL], str]:
    if sys.byteorder != "little":
        return None, "this host is big-endian; pylabhub DataBlocks are little-endian"
    names = list(_CANDIDATES)
    found = ctypes.util.find_library("atomic")
    if found:
        names.insert(0, found)
    for name in names:
        try:
            return ctypes.CDLL(name), name
        except OSError:
            continue
    return None, ("no libatomic found (install the libatomic1 package); "
                  "shared words cannot be changed atomically on this host")


class _Ops:
    """The four operations for one word width, bound to libatomic entry points."""

    def __init__(self, lib: ctypes.CDLL, size: int) -> None:
        ctype = _CTYPE[size]
        self.ctype = ctype
        self.load = getattr(lib, "__atomic_load_%d" % size)
        self.load.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.load.restype = ctype
        self.store = getattr(lib, "__atomic_store_%d" % size)
        self.store.argtypes = [ctypes.c_void_p, ctype, ctypes.c_int]
        self.store.restype = None
        self.cas = getattr(lib, "__atomic_compare_exchange_%d" % size)
        self.cas.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctype, ctypes.c_int, ctypes.c_int]
        self.cas.restype = ctypes.c_bool
        self.fetch_add = getattr(lib, "__atomic_fetch_add_%d" % size)
        self.fetch_add.argtypes = [ctypes.c_void_p, ctype, ctypes.c_int]
        self.fetch_add.restype = ctype


_LIB, _WHY = _load_library()
_OPS = {size: _Ops(_LIB, size) for size in (1, 2, 4, 8)} if _LIB is not None else {}

#: True when real atomic read-modify-write is available on this host.
AVAILABLE = bool(_OPS)
#: Which library provides them, or why none does.
PROVIDER = _WHY


def _ops(size: int) -> _Ops:
    if not _OPS:
        raise AtomicsUnavailable(_WHY)
    return _OPS[size]


def _check(addr: int, size: int) -> None:
    if size not in _CTYPE or addr % size:
        raise ValueError("atomic access needs an aligned 1/2/4/8-byte word (addr %#x, size %d)"
                         % (addr, size))


def load(addr: int, size: int) -> int:
    """Sequentially consistent load; a plain aligned read where no libatomic exists."""
    _check(addr, size)
    if _OPS:
        return int(_OPS[size].load(addr, SEQ_CST))
    return int(_CTYPE[size].from_address(addr).value)


def store(addr: int, size: int, value: int) -> None:
    _check(addr, size)
    _ops(size).store(addr, value, SEQ_CST)


def cas(addr: int, size: int, expected: int, new: int) -> Tuple[bool, int]:
    """Compare-and-swap: store ``new`` only if the word still holds ``expected``.

    Returns ``(swapped, value_seen)``; on failure ``value_seen`` is the current value.
    """
    _check(addr, size)
    ops = _ops(size)
    seen = ops.ctype(expected)
    swapped = bool(ops.cas(addr, ctypes.addressof(seen), new, SEQ_CST, SEQ_CST))
    return swapped, int(seen.value)


def fetch_add(addr: int, size: int, delta: int) -> int:
    """Atomically add ``delta`` (negative allowed, wraps like C) and return the old value."""
    _check(addr, size)
    mask = (1 << (8 * size)) - 1
    return int(_ops(size).fetch_add(addr, delta & mask, SEQ_CST))
