"""Column-wise encoding of raw DBAPI rows, and the near-cache rule for them.

Rows are stored column by column.  A column whose non-null values all share one type that
msgpack lacks (datetime, Decimal, UUID, ...) is stored as strings or bytes and rebuilt with a
single ``map`` over the column, which runs at C speed; a per-value extension hook would cost a
Python call per value and make decoding slower than the database driver.  Mixed columns fall
back to per-value extension types.  Rows come back as tuples, exactly as drivers return them,
with the same types: a driver's own classes (``_drivertypes``: asyncpg's UUID subclass,
``ipaddress`` objects, ranges) have a column code of their own, found after the exact-type
lookup misses and then memoised; datetimes in a named zone (psycopg 3's ``timestamptz``) keep
the zone.
"""

from __future__ import annotations

import datetime
import decimal
import operator
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from ._codec import zone_of, zoned
from ._drivertypes import kind_named, kind_of
from ._keys import SAFE_SCALARS

_RAW = 0
_CODERS: dict[type, tuple[int, Callable[[Any], Any]]] = {
    datetime.datetime: (1, datetime.datetime.isoformat),
    datetime.date: (2, datetime.date.isoformat),
    datetime.time: (3, datetime.time.isoformat),
    decimal.Decimal: (4, str),
    uuid.UUID: (5, lambda u: u.bytes),
    datetime.timedelta: (6, lambda d: [d.days, d.seconds, d.microseconds]),
    memoryview: (7, bytes),
}
_DECODERS: dict[int, Callable[[Any], Any]] = {
    1: datetime.datetime.fromisoformat,
    2: datetime.date.fromisoformat,
    3: datetime.time.fromisoformat,
    4: decimal.Decimal,
    5: lambda b: uuid.UUID(bytes=b),
    6: lambda v: datetime.timedelta(*v),
    7: memoryview,
    8: lambda v: zoned(*v),
}
#: datetimes at least one of which is in a ZoneInfo: [ISO string, zone name or None]
_ZONED = 8
#: a driver's class: the column is [kind name, encoded values]
_DRIVER = 9
#: types whose values may be shared between sessions (grows with immutable driver classes)
_IMMUTABLE = set(SAFE_SCALARS)

Rows = list[tuple[Any, ...]]
#: a DBAPI cursor's ``description``: one 7-tuple per column (PEP 249)
Description = Sequence[tuple[Any, ...]]


_TZINFO = operator.attrgetter("tzinfo")


def _in_named_zones(column: Sequence[Any]) -> bool:
    """True when a datetime of the column is in a ZoneInfo (a map at C speed, not a loop)."""
    values = column if None not in column else [v for v in column if v is not None]
    return ZoneInfo in set(map(type, map(_TZINFO, values)))


def _encode_column(column: Sequence[Any]) -> list[Any]:
    kinds = set(map(type, column))
    kinds.discard(type(None))
    if len(kinds) == 1:
        kind = kinds.pop()
        coder = _CODERS.get(kind)
        if coder is not None:
            code, encode = coder
            if code == 1 and _in_named_zones(column):
                code, encode = _ZONED, lambda v: [v.isoformat(), zone_of(v)]
            if None in column:
                return [code, [None if v is None else encode(v) for v in column]]
            return [code, list(map(encode, column))]
        driver = kind_of(kind)  # memoised: a dict lookup once the class has been seen
        if driver is not None:
            if driver.immutable:
                _IMMUTABLE.add(kind)
            encode = driver.encode
            return [_DRIVER, [driver.name, [None if v is None else encode(v) for v in column]]]
    return [_RAW, list(column)]


def encode_result(value: tuple[Description, Rows]) -> list[Any]:
    description, rows = value
    desc = [
        [d[0], d[1] if isinstance(d[1], int | str) or d[1] is None else None] for d in description
    ]
    columns = [_encode_column(c) for c in zip(*rows, strict=True)] if rows else []
    return [desc, len(rows), columns]


def decode_result(payload: list[Any]) -> tuple[Description, Rows]:
    desc, count, columns = payload
    description = [(name, type_code, None, None, None, None, None) for name, type_code in desc]
    if not count:
        return description, []
    decoded = []
    for code, column in columns:
        if code == _RAW:
            decoded.append(column)
            continue
        if code == _DRIVER:
            driver = kind_named(column[0])
            if driver.immutable:
                _IMMUTABLE.add(driver.cls)
            decode, raw = driver.decode, column[1]
        else:
            decode, raw = _DECODERS[code], column
        if None in raw:
            decoded.append([None if v is None else decode(v) for v in raw])
        else:
            decoded.append(list(map(decode, raw)))
    return description, list(zip(*decoded, strict=True))


def immutable_rows(value: tuple[Description, Rows]) -> bool:
    """True when no value in the rows can be mutated in place (safe to share between sessions)."""
    rows = value[1]
    return all(type(v) in _IMMUTABLE for row in rows for v in row)
