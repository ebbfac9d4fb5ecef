"""Frozen containers: the lists, dicts and sets of an event, which no handler can change.

An event's ``list``, ``dict`` and ``set`` fields (at any depth of their
declared types) hold these subclasses of the plain containers: equal to
them, hashable, picklable, and with every method that would change them
raising ``TypeError`` that says how to make a changed copy. pydantic makes
them as it validates an event (see ``event_schema.py``).
"""

from __future__ import annotations

import collections.abc as c
import typing as t

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

__all__ = ["FrozenDict", "FrozenList", "FrozenSet"]

_T = t.TypeVar("_T")
_K = t.TypeVar("_K")
_V = t.TypeVar("_V")


def _read_only(kind: str, method: str, example: str) -> c.Callable[..., t.NoReturn]:
    def refuse(self: object, /, *args: object, **kwargs: object) -> t.NoReturn:
        raise TypeError(
            f"cannot {method}() a frozen {kind}: events are immutable, so that every "
            f"handler sees the event as it was published; make a changed copy, such as "
            f"{example}, and publish a new event if others must see the change"
        )

    refuse.__name__ = refuse.__qualname__ = method
    return refuse


class FrozenList(list[_T]):
    """A list that cannot be changed: what an event's ``list`` fields hold.

    Equal to a list with the same items, an instance of ``list``, written to
    JSON as an array; hashable (as the tuple of its items). Slicing, ``+``
    and ``copy()`` give plain lists. Methods that would change it raise
    ``TypeError``.
    """

    __slots__ = ()

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: t.Any, handler: GetCoreSchemaHandler, /
    ) -> core_schema.CoreSchema:
        # Usable as an annotation: a nested model's FrozenList[str] field is frozen too.
        return _frozen_schema(cls, list, source, handler)

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (FrozenList, (list(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self))

    _example = "[*event.items, item]"
    append = _read_only("list", "append", _example)
    extend = _read_only("list", "extend", _example)
    insert = _read_only("list", "insert", _example)
    pop = _read_only("list", "pop", _example)
    remove = _read_only("list", "remove", _example)
    clear = _read_only("list", "clear", _example)
    sort = _read_only("list", "sort", "sorted(event.items)")
    reverse = _read_only("list", "reverse", "event.items[::-1]")
    __setitem__ = _read_only("list", "__setitem__", _example)
    __delitem__ = _read_only("list", "__delitem__", _example)
    __iadd__ = _read_only("list", "__iadd__", _example)
    __imul__ = _read_only("list", "__imul__", _example)
    del _example


class FrozenDict(dict[_K, _V]):
    """A dict that cannot be changed: what an event's ``dict`` (and ``TypedDict``) fields hold.

    Equal to a dict with the same items, an instance of ``dict``, written to
    JSON as an object; hashable if its values are. ``|`` and ``copy()`` give
    plain dicts. Methods that would change it raise ``TypeError``.
    """

    __slots__ = ()

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: t.Any, handler: GetCoreSchemaHandler, /
    ) -> core_schema.CoreSchema:
        return _frozen_schema(cls, dict, source, handler)

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    _example = "{**event.mapping, key: value}"
    clear = _read_only("dict", "clear", _example)
    pop = _read_only("dict", "pop", _example)
    popitem = _read_only("dict", "popitem", _example)
    setdefault = _read_only("dict", "setdefault", _example)
    update = _read_only("dict", "update", _example)
    __setitem__ = _read_only("dict", "__setitem__", _example)
    __delitem__ = _read_only("dict", "__delitem__", _example)
    __ior__ = _read_only("dict", "__ior__", _example)
    del _example


class FrozenSet(set[_T]):
    """A set that cannot be changed: what an event's ``set`` fields hold.

    Equal to a set (or frozenset) with the same items, an instance of
    ``set``, written to JSON as an array; hashable like a frozenset. ``|``,
    ``&``, ``-`` and ``copy()`` give plain sets. Methods that would change it
    raise ``TypeError``.
    """

    __slots__ = ()

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: t.Any, handler: GetCoreSchemaHandler, /
    ) -> core_schema.CoreSchema:
        return _frozen_schema(cls, set, source, handler)

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (FrozenSet, (set(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self))

    def __repr__(self) -> str:
        return repr(set(self))

    _example = "event.items | {item}"
    add = _read_only("set", "add", _example)
    discard = _read_only("set", "discard", _example)
    remove = _read_only("set", "remove", _example)
    pop = _read_only("set", "pop", _example)
    clear = _read_only("set", "clear", _example)
    update = _read_only("set", "update", _example)
    intersection_update = _read_only("set", "intersection_update", _example)
    difference_update = _read_only("set", "difference_update", _example)
    symmetric_difference_update = _read_only("set", "symmetric_difference_update", _example)
    __ior__ = _read_only("set", "__ior__", _example)
    __iand__ = _read_only("set", "__iand__", _example)
    __isub__ = _read_only("set", "__isub__", _example)
    __ixor__ = _read_only("set", "__ixor__", _example)
    del _example


def _frozen_schema(
    cls: type, plain: type, source: t.Any, handler: GetCoreSchemaHandler
) -> core_schema.CoreSchema:
    """The schema of ``FrozenList[X]`` and kin: ``list[X]``'s, then the frozen copy."""
    args = t.get_args(source)
    return core_schema.no_info_after_validator_function(
        cls, handler.generate_schema(t.cast(t.Any, plain)[args] if args else plain)
    )


def _deep_freeze(value: t.Any) -> t.Any:
    """``value`` with its lists, dicts and sets, at any depth, frozen (for defaults)."""
    kind = type(value)
    if kind is list or kind is FrozenList:
        return FrozenList(map(_deep_freeze, value))
    if kind is dict or kind is FrozenDict:
        return FrozenDict({key: _deep_freeze(item) for key, item in value.items()})
    if kind is set or kind is FrozenSet:
        return FrozenSet(value)
    if kind is tuple:
        return tuple(map(_deep_freeze, value))
    return value


def _frozen_default(factory: c.Callable[..., t.Any], *data: t.Any) -> t.Any:
    return _deep_freeze(factory(*data))
