"""The I/O seam: what a Redis client must offer the cache (:class:`RedisIO`) and its lock.

:class:`RedisIO` is the package's one pluggable boundary (exported as
``sqla_redis_cache.RedisIO``; ``QueryCache(config, io=...)`` takes any implementation).  It is
small on purpose: a multi-key read for the hot path, a batch of typed single-key operations
(``_ops``) executed in one round trip, pattern scans for operator actions, and a lock for the
stampede protection.  The implementations here are :class:`~._sync.SyncIO` (redis-py,
standalone or cluster), :class:`~._asyncio.AsyncIO` (redis.asyncio, driven from SQLAlchemy's
greenlet) and :class:`~._memory.MemoryIO` (in process).

Errors: an implementation raises ``redis.exceptions.RedisError`` or ``OSError`` when Redis
cannot be used; the storage layer above (``storage._store``) turns them into misses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ._ops import Operation


class Mutex(Protocol):
    """dogpile's mutex protocol: ``acquire(wait)`` returns False only when not waiting and
    the lock is taken; an implementation never raises on Redis trouble."""

    def acquire(self, wait: bool = True) -> bool: ...
    def release(self) -> None: ...


class RedisIO(Protocol):
    """The handful of Redis operations the cache needs."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in one round trip (None for a missing key); the hot path.
        On Redis Cluster the keys may span slots: read them per slot, never one cross-slot
        command."""
        ...

    def run(self, operations: Sequence[Operation]) -> list[Any]:
        """Execute ``operations`` in one round trip (a pipeline, no transaction); one reply
        per operation, in order, typed as each operation's docstring says."""
        ...

    def scan(self, match: str) -> Iterable[str]:
        """The keys matching the Redis glob ``match`` (on every node of a cluster)."""
        ...

    def delete_matching(self, match: str) -> int:
        """Delete the keys matching the Redis glob ``match``; how many were deleted."""
        ...

    def lock(self, name: str, timeout: float, wait: float) -> Mutex:
        """A lock named ``name`` that expires after ``timeout`` seconds; ``acquire`` waits at
        most ``wait`` seconds."""
        ...

    def server_info(self) -> dict[str, Any]:
        """What the status report shows about the server: ``version``, ``role``, ``mode``
        (and ``used_memory_human``, ``maxmemory_policy`` when known)."""
        ...

    def close(self) -> None:
        """Release the connections (the object may be used again afterwards)."""
        ...
