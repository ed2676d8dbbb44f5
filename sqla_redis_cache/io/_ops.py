"""Typed Redis operations: what the cache asks of Redis, as values instead of command tuples.

Everything above this package describes what it needs with these frozen dataclasses and hands
a sequence of them to :meth:`RedisIO.run`, which executes them in **one round trip** and
returns one reply per operation, in order, with the reply types given below.  Only the I/O
implementations know how an operation becomes Redis commands (``_sync``, ``_asyncio``) or
in-process state (``_memory``), so a new :class:`~.RedisIO` implements each operation by its
type, never by re-reading command strings.

Every operation touches exactly one key: a pipeline of them is safe on Redis Cluster (no
multi-key command, no script across hash slots).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Get:
    """The value of ``key``.  Reply: ``bytes`` or None when missing."""

    key: str


@dataclass(frozen=True, slots=True)
class Set:
    """Store ``value`` under ``key`` for ``ttl_ms`` milliseconds (``SET key value PX ttl``);
    with ``only_if_absent``, only when the key does not exist (``NX``).
    Reply: True when written."""

    key: str
    value: bytes
    ttl_ms: int
    only_if_absent: bool = False


@dataclass(frozen=True, slots=True)
class Unlink:
    """Delete ``key``.  Reply: True when it existed."""

    key: str


@dataclass(frozen=True, slots=True)
class CompareAndSet:
    """Replace the value of ``key`` by ``value`` (for ``ttl_ms``) only if it still holds
    ``expected`` (a single-key script, ``_scripts.CAS_SET``).  Reply: True when written."""

    key: str
    expected: bytes
    value: bytes
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class ReplaceToken:
    """Replace the version token at ``key`` by ``token`` (a single-key script,
    ``_scripts.REPLACE_TOKEN``, which also says what a *pending* token is).

    ``ttl_ms``: lifetime of an ordinary token.  ``commit_ms``: how long a commit in ``add``
    keeps the token pending.  ``add``: ids of commits about to happen (the token stays pending
    until they end); ``end``: ids of commits that are over.  ``expected`` makes it a
    compare-and-swap: the new token is ``token`` only if the current one still equals
    ``expected`` (a missing token reads as ``b""``), else ``otherwise``.  Reply: None.
    """

    key: str
    token: bytes
    ttl_ms: int
    commit_ms: int
    add: frozenset[str] = frozenset()
    end: frozenset[str] = frozenset()
    expected: bytes | None = None
    otherwise: bytes | None = None


@dataclass(frozen=True, slots=True)
class HashIncrement:
    """Add ``amount`` to ``field`` of the hash at ``key``.  Reply: the new value (int)."""

    key: str
    field: str
    amount: int


@dataclass(frozen=True, slots=True)
class Expire:
    """Let ``key`` expire in ``ttl_ms`` milliseconds.  Reply: True when the key exists."""

    key: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class HashGetAll:
    """Every field of the hash at ``key``.  Reply: ``dict`` (empty when missing); fields and
    values as ``bytes`` or ``str``, as the client returns them."""

    key: str


@dataclass(frozen=True, slots=True)
class MemoryUsage:
    """Bytes used by ``key`` (``MEMORY USAGE``, for the status report).  Reply: int, or None
    when the key is missing."""

    key: str


Operation = (
    Get
    | Set
    | Unlink
    | CompareAndSet
    | ReplaceToken
    | HashIncrement
    | Expire
    | HashGetAll
    | MemoryUsage
)
