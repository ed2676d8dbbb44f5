"""Values database drivers return beyond the standard library's: how entries store them.

msgpack knows no datetime, Decimal or UUID; ``_codec`` and ``_rows`` encode the standard
library's types by *exact* type, a dict lookup on the fast path.  Drivers return more:

- asyncpg returns UUIDs as a ``uuid.UUID`` *subclass* (``asyncpg.pgproto.pgproto.UUID``): an
  exact-type check made every result with a UUID column uncacheable;
- psycopg 3 and asyncpg return ``ipaddress`` objects for ``inet`` / ``cidr``;
- each PostgreSQL driver has its own range classes (psycopg2's ``NumericRange``, ``DateRange``,
  ...; psycopg's ``Range``; asyncpg's ``Range``);
- psycopg 3 returns ``timestamptz`` values in a ``zoneinfo.ZoneInfo`` (the session's TimeZone):
  an ISO string keeps only the offset, and date arithmetic across a DST change differs between
  a zone and a fixed offset, so the zone's name is stored with the value (``_codec``, ``_rows``).

Each class is a :class:`Kind`: a stable name stored in the entry (its import path), a function
from the value to plain data and one back.  A class is recognised by its import path, so no
driver is imported before one of its values is met, or an entry naming it is read (keys include
the driver, so a process reading such an entry has the driver installed).  Decoding rebuilds
only the classes listed here, from plain data: nothing read from Redis can name other code to
run.  Lookups are memoised per class, so after the first value of a class the cost is one dict
lookup; a class not listed stays unencodable (the result is not cached) rather than come back as
another type.
"""

from __future__ import annotations

import importlib
import ipaddress
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple


class Kind(NamedTuple):
    #: stored in entries: the class's import path
    name: str
    cls: type
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    #: values cannot change in place (may be shared through the near cache)
    immutable: bool


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _uuid(cls: type) -> Kind:
    return Kind(_path(cls), cls, lambda u: u.bytes, cls, True)  # cls(16 bytes)


def _ip(cls: type) -> Kind:
    return Kind(_path(cls), cls, str, cls, True)


def _psycopg2_range(cls: type) -> Kind:
    def decode(state: list[Any]) -> Any:
        lower, upper, bounds = state
        return cls(empty=True) if bounds is None else cls(lower, upper, bounds)

    def encode(r: Any) -> list[Any]:
        # psycopg2 keeps the bounds string only in ``_bounds`` (no public accessor rebuilds it:
        # ``lower_inc`` is False for an infinite bound whatever the string says)
        return [r.lower, r.upper, r._bounds]  # noqa: SLF001

    return Kind(_path(cls), cls, encode, decode, False)


def _psycopg_range(cls: type) -> Kind:
    def decode(state: list[Any]) -> Any:
        lower, upper, bounds = state
        return cls(empty=True) if bounds is None else cls(lower, upper, bounds)

    def encode(r: Any) -> list[Any]:
        return [r.lower, r.upper, None if r.isempty else r.bounds]

    return Kind(_path(cls), cls, encode, decode, False)


def _asyncpg_range(cls: type) -> Kind:
    def decode(state: list[Any]) -> Any:
        lower, upper, lower_inc, upper_inc, empty = state
        return cls(lower, upper, lower_inc=lower_inc, upper_inc=upper_inc, empty=empty)

    def encode(r: Any) -> list[Any]:
        return [r.lower, r.upper, r.lower_inc, r.upper_inc, r.isempty]

    return Kind(_path(cls), cls, encode, decode, False)


_IP_CLASSES = (
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
)

#: import path of each class drivers return -> how to build its Kind
_FACTORIES: dict[str, Callable[[type], Kind]] = {
    "asyncpg.pgproto.pgproto.UUID": _uuid,
    **{_path(cls): _ip for cls in _IP_CLASSES},
    **{
        f"psycopg2._range.{name}": _psycopg2_range
        for name in ("Range", "NumericRange", "DateRange", "DateTimeRange", "DateTimeTZRange")
    },
    "psycopg.types.range.Range": _psycopg_range,
    "asyncpg.types.Range": _asyncpg_range,
}

_BY_CLASS: dict[type, Kind | None] = {}
_BY_NAME: dict[str, Kind] = {}


def kind_of(cls: type) -> Kind | None:
    """The Kind of a driver class, or None (memoised, so a dict lookup once seen)."""
    try:
        return _BY_CLASS[cls]
    except KeyError:
        pass
    factory = _FACTORIES.get(_path(cls))
    kind = None if factory is None else factory(cls)
    _BY_CLASS[cls] = kind
    if kind is not None:
        _BY_NAME.setdefault(kind.name, kind)
    return kind


def kind_named(name: str) -> Kind:
    """The Kind stored as ``name`` in an entry; KeyError or ImportError if unknown here."""
    kind = _BY_NAME.get(name)
    if kind is None:
        if name not in _FACTORIES:
            raise KeyError(f"unknown driver type {name!r}")
        module, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module), qualname)
        kind = kind_of(cls)
        assert kind is not None
    return kind


def keyable(cls: type) -> bool:
    """True for driver classes whose ``repr`` shows their whole value, so they may key a
    query as parameters: UUID subclasses of drivers and ``ipaddress`` objects."""
    kind = kind_of(cls)
    return kind is not None and (issubclass(cls, uuid.UUID) or cls in _IP_CLASSES)
