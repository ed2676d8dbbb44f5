"""The I/O layer: Redis clients behind typed operations, the package's one pluggable seam.

Nothing above this package builds Redis commands: the storage layer describes what it needs as
typed single-key operations (``_ops``: :class:`Get`, :class:`Set`, :class:`Unlink`,
:class:`CompareAndSet`, :class:`ReplaceToken`, ...) and a :class:`RedisIO` executes a batch of
them in one round trip.  Modules:

- ``_protocol``: :class:`RedisIO` and :class:`Mutex`, the contract an implementation meets;
- ``_ops``: the typed operations and their replies; ``_scripts``: the two single-key Lua
  scripts they use, with their in-process twins;
- ``_sync``: :class:`SyncIO` over redis-py (standalone or cluster); ``_clients``: the redis-py
  clients per deployment (single server, Cluster, Sentinel, TLS, ACL) and the startup check;
- ``_asyncio``: the same operations over ``redis.asyncio``, driven from SQLAlchemy's greenlet,
  and the router choosing per event loop;
- ``_memory``: :class:`MemoryIO`, everything in process (``QueryCache.in_memory()``).
"""

from ._ops import (
    CompareAndSet,
    Expire,
    Get,
    HashGetAll,
    HashIncrement,
    MemoryUsage,
    Operation,
    ReplaceToken,
    Set,
    Unlink,
)
from ._protocol import Mutex, RedisIO

__all__ = [
    "CompareAndSet",
    "Expire",
    "Get",
    "HashGetAll",
    "HashIncrement",
    "MemoryUsage",
    "Mutex",
    "Operation",
    "RedisIO",
    "ReplaceToken",
    "Set",
    "Unlink",
]
