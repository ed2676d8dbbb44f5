"""Key derivation.

Every key starts with ``<namespace>:`` so applications can share a Redis and ``clear()`` touches
only its own keys.  The layout (see docs/deployment.md for slots):

- ``ns:q:<digest>``   a cached query result: digest of database identity (``_identity``: driver,
  where and as whom it connects, every connect parameter that can change results), final SQL
  and the DBAPI parameters exactly as the driver would receive them;
- ``ns:k:<key>``      a generic value (the seed guide's key/value API);
- ``ns:t:<table>``    the version token of a table; ``ns:g:<tag>`` of a tag; ``ns:all`` of
  the whole namespace (bumped by ``clear()`` and by writes whose target is unknown).

The SQL is taken *after* compilation, so anything that changes it (dialect, schema translation,
literal rendering) changes the key.  The driver is part of the key because cached rows are raw
DBAPI rows, whose Python types differ between drivers.  Parameters are fingerprinted only when
every value has a faithful ``repr``; anything else makes the statement uncacheable rather than
risk two different values sharing a key.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import uuid
from typing import Any

from ._identity import engine_identity

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


def _check(value: Any) -> None:
    kind = type(value)
    if kind in SAFE_SCALARS:
        return
    if kind is tuple or kind is list:
        for item in value:
            _check(item)
        return
    if kind is dict:
        for k, v in value.items():
            _check(k)
            _check(v)
        return
    raise UnkeyableParameter(kind.__qualname__)


def fingerprint_parameters(parameters: Any) -> str:
    """A string that differs whenever the parameters differ."""
    if parameters is None:
        return ""
    if isinstance(parameters, memoryview):
        parameters = bytes(parameters)
    _check(parameters)
    return repr(parameters)


class KeyBuilder:
    """Builds the namespaced keys of one cache."""

    __slots__ = ("all_key", "prefix")

    def __init__(self, namespace: str) -> None:
        self.prefix = namespace + ":"
        self.all_key = self.prefix + "all"

    @staticmethod
    def engine_id(engine: Any) -> bytes:
        """The identity of ``engine``'s database (``_identity``), for keys made without a
        connection (the entity cache); a database per connection cannot have one."""
        ident = engine_identity(engine)
        if ident is None:
            raise UnkeyableParameter(
                "an in-memory SQLite database exists per connection: its entities cannot be "
                "cached (use a StaticPool or a shared-cache URI)"
            )
        return ident

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

    def generic(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"cache keys must be non-empty strings, got {key!r}")
        return self.prefix + "k:" + key

    def lock(self, key: str) -> str:
        return key + ":lock"

    def dependencies(self, tables: Any, tags: Any) -> list[str]:
        """Token keys an entry depends on, in a fixed order: all, tables, tags."""
        keys = [self.all_key]
        keys.extend(self.table(t) for t in sorted(tables))
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
