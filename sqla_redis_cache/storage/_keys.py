"""Key derivation.

Every key starts with ``<namespace>:`` so applications can share a Redis and ``clear()`` touches
only its own keys.  The layout (see docs/deployment.md for slots):

- ``ns:q:<digest>``   a cached query result: digest of database identity
  (``wiring._identity``: driver, where and as whom it connects, every connect parameter that
  can change results), final SQL and the DBAPI parameters exactly as the driver would receive
  them;
- ``ns:k:<key>``      a generic value (the key/value API);
- ``ns:t:<table>``    the version token of a table; ``ns:g:<tag>`` of a tag; ``ns:all`` of
  the whole namespace (replaced by ``clear()`` and by writes whose target is unknown);
- ``ns:u:<table>``    the *unknown rows* token of a table, and ``ns:v:<digest>`` the *value
  token* of one value of one column (digest of table, column and the value's canonical text):
  what fine-grained entries depend on instead of the table token (``wiring._values``).

The SQL is taken *after* compilation, so anything that changes it (dialect, schema translation,
literal rendering) changes the key.  The driver is part of the key because cached rows are raw
DBAPI rows, whose Python types differ between drivers.  Parameters are fingerprinted only when
every value has a faithful ``repr``; anything else makes the statement uncacheable rather than
risk two different values sharing a key.

Faithful means: the exact built-in types below (a subclass may override ``repr`` and is
refused), whose ``repr`` keeps every distinction a database or function can see (``1`` /
``True`` / ``1.0``, ``-0.0``, ``Decimal('1.0')`` / ``Decimal('1.00')``, ``fold``).  The one
exception is the ``tzinfo`` of an aware datetime or time, which may be any class and may hide
its offset from ``repr``: such values are keyed by their wall time, UTC offset, zone name and
DST offset as well (what drivers send, and what a memoized function can observe).  A
``tzinfo`` that fails to answer makes the value unkeyable.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import uuid
from typing import Any

from ._drivertypes import keyable

#: types whose repr is faithful and whose values are immutable
SAFE_SCALARS = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    decimal.Decimal,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
)


class UnkeyableParameter(TypeError):
    """A bound value whose identity cannot be fingerprinted safely."""


def _check(value: Any) -> bool:
    """Raise for unkeyable values; False when an aware datetime/time needs :class:`_Aware`."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind in _CLOCKS:
        return value.tzinfo is None  # type: ignore[no-any-return]
    if kind is tuple or kind is list:
        plain = True
        for item in value:
            plain = _check(item) and plain
        return plain
    if kind is dict:
        plain = True
        for k, v in value.items():
            plain = _check(k) and plain
            plain = _check(v) and plain
        return plain
    if keyable(kind):  # a driver's UUID subclass (asyncpg), ipaddress objects (psycopg, asyncpg)
        return True
    raise UnkeyableParameter(kind.__qualname__)


_CLOCKS = frozenset({datetime.datetime, datetime.time})
_PLAIN = frozenset(SAFE_SCALARS) - _CLOCKS


class _Aware:
    """Stands for an aware datetime/time in a fingerprint; its repr starts with ``<``, which
    no faithful repr does, so it cannot be confused with any other value."""

    __slots__ = ("text",)

    def __init__(self, value: datetime.datetime | datetime.time) -> None:
        try:
            offset, name, dst = value.utcoffset(), value.tzname(), value.dst()
        except Exception as exc:
            raise UnkeyableParameter(f"{type(value.tzinfo).__qualname__}: {exc}") from None
        naive = value.replace(tzinfo=None)
        self.text = (
            f"<aware {naive!r} utcoffset={offset!r} tzname={name!r} dst={dst!r}"
            f" tzinfo={value.tzinfo!r}>"
        )

    def __repr__(self) -> str:
        return self.text


def _normalise(value: Any) -> Any:
    kind = type(value)
    if kind in _CLOCKS and value.tzinfo is not None:
        return _Aware(value)
    if kind is tuple:
        return tuple(_normalise(item) for item in value)
    if kind is list:
        return [_normalise(item) for item in value]
    if kind is dict:
        return {_normalise(k): _normalise(v) for k, v in value.items()}
    return value


def fingerprint_parameters(parameters: Any) -> str:
    """A string that differs whenever the parameters differ."""
    if parameters is None:
        return ""
    if isinstance(parameters, memoryview):
        parameters = bytes(parameters)
    if _check(parameters):
        return repr(parameters)
    return repr(_normalise(parameters))


class KeyBuilder:
    """Builds the namespaced keys of one cache."""

    __slots__ = ("all_key", "prefix")

    def __init__(self, namespace: str) -> None:
        self.prefix = namespace + ":"
        self.all_key = self.prefix + "all"

    def query(self, engine_id: bytes, statement: str, parameters: Any) -> str:
        digest = hashlib.blake2b(engine_id, digest_size=20)
        digest.update(b"\x00")
        digest.update(statement.encode())
        digest.update(b"\x00")
        digest.update(fingerprint_parameters(parameters).encode())
        return self.prefix + "q:" + digest.hexdigest()

    def table(self, name: str) -> str:
        return self.prefix + "t:" + name

    def tag(self, name: str) -> str:
        return self.prefix + "g:" + name

    def unknown_rows(self, table: str) -> str:
        return self.prefix + "u:" + table

    def value(self, table: str, column: str, canonical: str) -> str:
        """The value token of ``column = value`` in ``table`` (``canonical``: the value's text
        from ``wiring._values.canonical``, which tells types apart)."""
        digest = hashlib.blake2b(table.encode(), digest_size=16)
        digest.update(b"\x00")
        digest.update(column.encode())
        digest.update(b"\x00")
        digest.update(canonical.encode("utf-8", "surrogatepass"))
        return self.prefix + "v:" + digest.hexdigest()

    def is_value(self, key: str) -> bool:
        return key.startswith(self.prefix + "v:")

    def bookkeeping(self, key: str) -> bool:
        """True for the tokens of fine-grained invalidation (unknown rows, values)."""
        return key.startswith((self.prefix + "u:", self.prefix + "v:"))

    def generic(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"cache keys must be non-empty strings, got {key!r}")
        return self.prefix + "k:" + key

    def lock(self, key: str) -> str:
        return key + ":lock"

    def dependencies(self, tables: Any, tags: Any, fine: Any = ()) -> list[str]:
        """Token keys an entry depends on, in a fixed order: all, tables, tags.

        A table in ``fine`` contributes its unknown-rows token instead of its table token; the
        caller appends the value tokens it depends on (per execution) after these keys.
        """
        keys = [self.all_key]
        keys.extend(self.unknown_rows(t) if t in fine else self.table(t) for t in sorted(tables))
        keys.extend(self.tag(t) for t in sorted(tags))
        return keys

    def pattern(self, glob: str) -> str:
        """A SCAN pattern for generic keys; the namespace part is matched literally."""
        return escape_glob(self.prefix + "k:") + glob


def escape_glob(text: str) -> str:
    out = []
    for ch in text:
        if ch in "*?[]\\":
            out.append("\\")
        out.append(ch)
    return "".join(out)
