"""Column-wise encoding of raw DBAPI rows, and the near-cache rule for them.

Rows are stored column by column.  A column whose non-null values all share one type that
msgpack lacks (datetime, Decimal, UUID, ...) is stored as strings or bytes and rebuilt with a
single ``map`` over the column, which runs at C speed; a per-value extension hook would cost a
Python call per value and make decoding slower than the database driver.  Mixed columns fall
back to per-value extension types.  Rows come back as tuples, exactly as drivers return them.
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ._cursor import Description
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
    7: bytes,
}
_IMMUTABLE = frozenset(SAFE_SCALARS)

Rows = list[tuple[Any, ...]]


def _encode_column(column: Sequence[Any]) -> list[Any]:
    kinds = set(map(type, column))
    kinds.discard(type(None))
    if len(kinds) == 1:
        coder = _CODERS.get(kinds.pop())
        if coder is not None:
            code, encode = coder
            if None in column:
                return [code, [None if v is None else encode(v) for v in column]]
            return [code, list(map(encode, column))]
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
    for code, raw in columns:
        if code == _RAW:
            decoded.append(raw)
            continue
        decode = _DECODERS[code]
        if None in raw:
            decoded.append([None if v is None else decode(v) for v in raw])
        else:
            decoded.append(list(map(decode, raw)))
    return description, list(zip(*decoded, strict=True))


def immutable_rows(value: tuple[Description, Rows]) -> bool:
    """True when no value in the rows can be mutated in place (safe to share between sessions)."""
    rows = value[1]
    return all(type(v) in _IMMUTABLE for row in rows for v in row)
