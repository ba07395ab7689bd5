# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real atomic operations on shared words, from pure Python.

Live C++ pylabhub processes change the same words with lock-free atomics, so a store or
compare-and-swap made by a Python read-modify-write would race them. Two providers, tried
in this order, both sequentially consistent and lock-free for 1, 2, 4 and 8 byte words:

* ``libatomic``: GCC's runtime (``__atomic_*_N``) through ctypes, the vetted choice;
* ``builtin-x86_64``: where no libatomic is installed (a slim container, a host without
  gcc), the handful of x86-64 instructions GCC itself emits for these operations
  (``mov``, ``xchg``, ``lock cmpxchg``, ``lock xadd``), placed in a page mapped
  executable for the purpose (written, then made read+execute: never writable and
  executable at once). No compiler is needed on the host.

Where neither exists (another architecture without libatomic, a big-endian host, a kernel
refusing executable mappings), loads fall back to aligned single-word reads (what the
hardware does anyway for aligned words) and every *write* raises
:class:`AtomicsUnavailable` with the reason, so nothing is ever changed unsafely.
``PLH_ATOMICS=libatomic|builtin`` forces one provider (tests exercise both).
"""

from __future__ import annotations

import ctypes
import os
import sys

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable, Dict, Optional, Tuple

from ._errors import AtomicsUnavailable

SEQ_CST = 5
_CTYPE = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}
_CANDIDATES = ("libatomic.so.1", "libatomic.so")


class _Ops(object):
    """The four operations for one word width, whatever provides them."""

    def __init__(self, load: Callable, store: Callable, cas: Callable,
                 fetch_add: Callable) -> None:
        self.load, self.store, self.cas, self.fetch_add = load, store, cas, fetch_add


def _from_libatomic(lib: ctypes.CDLL, size: int) -> _Ops:
    ctype = _CTYPE[size]
    load = getattr(lib, "__atomic_load_%d" % size)
    load.argtypes, load.restype = [ctypes.c_void_p, ctypes.c_int], ctype
    store = getattr(lib, "__atomic_store_%d" % size)
    store.argtypes, store.restype = [ctypes.c_void_p, ctype, ctypes.c_int], None
    cas = getattr(lib, "__atomic_compare_exchange_%d" % size)
    cas.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctype, ctypes.c_int, ctypes.c_int]
    cas.restype = ctypes.c_bool
    add = getattr(lib, "__atomic_fetch_add_%d" % size)
    add.argtypes, add.restype = [ctypes.c_void_p, ctype, ctypes.c_int], ctype

    def do_cas(addr: int, expected: int, new: int) -> Tuple[bool, int]:
        seen = ctype(expected)
        swapped = bool(cas(addr, ctypes.addressof(seen), new, SEQ_CST, SEQ_CST))
        return swapped, int(seen.value)
    return _Ops(lambda addr: int(load(addr, SEQ_CST)),
                lambda addr, value: store(addr, value, SEQ_CST), do_cas,
                lambda addr, delta: int(add(addr, delta, SEQ_CST)))


def _libatomic_names():
    """libatomic's usual names, then what ``ctypes.util.find_library`` finds - asked only
    when the usual names failed: it runs ``ldconfig -p`` in a subprocess, a third of a
    heal's start-up."""
    yield from _CANDIDATES
    from ctypes.util import find_library
    found = find_library("atomic")
    if found and found not in _CANDIDATES:
        yield found


def _libatomic() -> Tuple[Optional[Dict[int, _Ops]], str]:
    """libatomic by its usual names first (the dynamic loader searches as for any
    library), then by ``find_library`` (:func:`_libatomic_names`)."""
    for name in _libatomic_names():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        return {size: _from_libatomic(lib, size) for size in _CTYPE}, name
    return None, "no libatomic found (the libatomic1 package)"


# x86-64 System V: rdi = word address, rsi = 2nd argument, rdx = 3rd; result in rax.
# load: mov/movzx (aligned loads are atomic; seq-cst stores use xchg, so plain loads
# suffice); store: xchg (implicitly locked: a full barrier); cas: mov rax, rsi; lock
# cmpxchg [rdi], rdx -> rax holds the value seen; fetch_add: lock xadd [rdi], rsi; mov rax, rsi.
_X86_64 = {
    1: ("0fb607c3", "408637c3", "89f0f00fb017c3", "f0400fc03789f0c3"),
    2: ("0fb707c3", "668737c3", "89f066f00fb117c3", "66f00fc13789f0c3"),
    4: ("8b07c3", "8737c3", "89f0f00fb117c3", "f00fc13789f0c3"),
    8: ("488b07c3", "488737c3", "4889f0f0480fb117c3", "f0480fc1374889f0c3"),
}
_PAGE = 4096
_PROT_READ, _PROT_WRITE, _PROT_EXEC = 1, 2, 4
_MAP_PRIVATE, _MAP_ANONYMOUS = 0x02, 0x20
_CODE_PAGE = None   # keeps the executable mapping's address alive for the process


def _builtin() -> Tuple[Optional[Dict[int, _Ops]], str]:
    global _CODE_PAGE  # pylint: disable=global-statement
    machine = os.uname().machine      # what platform.machine() reads (platform loads re)
    if machine.lower() not in ("x86_64", "amd64") or not sys.platform.startswith("linux"):
        return None, "no built-in atomics for %s" % machine
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = libc.mmap(None, _PAGE, _PROT_READ | _PROT_WRITE, _MAP_PRIVATE | _MAP_ANONYMOUS,
                     -1, 0)
    if page in (None, ctypes.c_void_p(-1).value):
        return None, "cannot map a page for built-in atomics: %s" % os.strerror(
            ctypes.get_errno())
    code, offsets = b"", {}
    for size, parts in sorted(_X86_64.items()):
        for op, hexcode in zip(("load", "store", "cas", "fetch_add"), parts):
            offsets[(size, op)] = len(code)
            code += bytes.fromhex(hexcode)
            code += b"\xcc" * (-len(code) % 16)          # int3 padding between functions
    ctypes.memmove(page, code, len(code))
    if libc.mprotect(page, _PAGE, _PROT_READ | _PROT_EXEC) != 0:
        return None, "the kernel refuses executable memory for built-in atomics: %s" % (
            os.strerror(ctypes.get_errno()))
    _CODE_PAGE = page
    ops = {}
    for size, ctype in _CTYPE.items():
        addr = {op: page + offsets[(size, op)] for op in ("load", "store", "cas", "fetch_add")}
        load = ctypes.CFUNCTYPE(ctype, ctypes.c_void_p)(addr["load"])
        store = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctype)(addr["store"])
        cas = ctypes.CFUNCTYPE(ctype, ctypes.c_void_p, ctype, ctype)(addr["cas"])
        add = ctypes.CFUNCTYPE(ctype, ctypes.c_void_p, ctype)(addr["fetch_add"])

        def do_cas(address: int, expected: int, new: int, cas=cas) -> Tuple[bool, int]:
            seen = int(cas(address, expected, new))
            return seen == expected, seen
        ops[size] = _Ops(lambda address, load=load: int(load(address)), store, do_cas,
                         lambda address, delta, add=add: int(add(address, delta)))
    return ops, "builtin-x86_64"


def _select() -> Tuple[Dict[int, _Ops], str]:
    if sys.byteorder != "little":
        return {}, "this host is big-endian; pylabhub DataBlocks are little-endian"
    wanted = os.environ.get("PLH_ATOMICS", "")
    providers = {"libatomic": _libatomic, "builtin": _builtin}
    order = [wanted] if wanted in providers else ["libatomic", "builtin"]
    reasons = []
    for name in order:
        ops, why = providers[name]()
        if ops:
            return ops, why
        reasons.append(why)
    return {}, "; ".join(reasons) + ": shared words cannot be changed atomically on this host"


_OPS, _WHY = _select()

#: True when real atomic read-modify-write is available on this host.
AVAILABLE = bool(_OPS)
#: Which provider gives them (a library name or ``builtin-x86_64``), or why none does.
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
    """Sequentially consistent load; a plain aligned read where no provider exists."""
    _check(addr, size)
    if _OPS:
        return _OPS[size].load(addr)
    return int(_CTYPE[size].from_address(addr).value)


def store(addr: int, size: int, value: int) -> None:
    _check(addr, size)
    _ops(size).store(addr, value)


def cas(addr: int, size: int, expected: int, new: int) -> Tuple[bool, int]:
    """Compare-and-swap: store ``new`` only if the word still holds ``expected``.

    Returns ``(swapped, value_seen)``; on failure ``value_seen`` is the current value.
    """
    _check(addr, size)
    return _ops(size).cas(addr, expected, new)


def fetch_add(addr: int, size: int, delta: int) -> int:
    """Atomically add ``delta`` (negative allowed, wraps like C) and return the old value."""
    _check(addr, size)
    mask = (1 << (8 * size)) - 1
    return _ops(size).fetch_add(addr, delta & mask)
