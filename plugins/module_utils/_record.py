# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain record classes for the core, in place of :mod:`dataclasses`.

Why: ``import dataclasses`` costs about 13 ms (it imports ``inspect``, which imports
``ast``, ``dis``, ``tokenize`` ...), about a third of what a ``datablock-admin diagnose``
process spent before doing any work (issue 14). A record here is a class with
``__slots__`` (its fields, in order) and an explicit ``__init__``; :class:`Record` gives it
what ``@dataclass`` generated and the core uses: ``==`` and ``hash`` over the compared
fields, a ``repr`` like a dataclass's, ``replace`` and ``as_dict``.

A record is not frozen by enforcement: the classes that were ``frozen=True`` dataclasses
are still never assigned to after ``__init__`` (the ones used as dictionary keys and set
members hash their compared fields). Mutable records (``SlotView``, ``HostScan`` ...) set
``__hash__ = None``, as a non-frozen dataclass did.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Tuple


class Record:
    """Base of the core's records: ``__slots__`` names the fields, in ``__init__`` order."""

    __slots__ = ()
    # fields left out of ==, hash (like field(compare=False)) and out of repr (repr=False)
    _no_compare = ()  # type: Tuple[str, ...]
    _no_repr = ()  # type: Tuple[str, ...]

    def _compared(self) -> tuple:
        skip = self._no_compare
        return tuple(getattr(self, n) for n in self.__slots__ if n not in skip)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        skip = self._no_repr
        return "%s(%s)" % (type(self).__qualname__, ", ".join(
            "%s=%r" % (n, getattr(self, n)) for n in self.__slots__ if n not in skip))

    def as_dict(self) -> Dict[str, Any]:
        """The fields by name (shallow, unlike ``dataclasses.asdict``: nested records stay
        records)."""
        return {n: getattr(self, n) for n in self.__slots__}

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (like ``dataclasses.replace``)."""
        values = self.as_dict()
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError("%s has no field %s" % (type(self).__name__,
                                                    ", ".join(sorted(unknown))))
        values.update(changes)
        return type(self)(**values)
