"""Statistics shared by every process of a namespace, in one Redis hash (``<ns>:stats``).

A process adds the *difference* of its counters since its last flush (``storage._stats``:
``StatsRecorder.drain``) to the hash with one ``HINCRBY`` per field, all on that single key (safe
on Redis Cluster), and refreshes the hash's expiry; nothing is sent on the hit path (the
facade's ``StatsFlusher`` thread flushes every ``stats_interval`` seconds).  A failed flush keeps
the difference for the next one.  An in-process cache keeps its statistics local.
"""

from __future__ import annotations

from ..io._ops import Expire, HashGetAll, HashIncrement, Operation, Unlink
from ..storage import Storage
from ..storage._stats import CacheStats, stats_from_hash
from ..storage._store import FAILED

#: how long the shared statistics of an idle namespace are kept
STATS_TTL_MS = 7 * 24 * 3600 * 1000


def stats_key(storage: Storage) -> str:
    return storage.keys.prefix + "stats"


def flush(storage: Storage, *, shared: bool = True) -> bool:
    """Add this process's counters since the last flush to the shared hash; False if Redis
    was unavailable (or the statistics are local: ``shared=False``)."""
    delta, commit = storage.stats.drain()
    if not delta:
        return True
    if not shared:
        return False
    key = stats_key(storage)
    operations: list[Operation] = [HashIncrement(key, f, n) for f, n in delta.items()]
    operations.append(Expire(key, STATS_TTL_MS))
    if storage.store.run(operations) is FAILED:
        return False
    commit()
    return True


def read(storage: Storage) -> CacheStats | None:
    """The shared statistics (percentiles are histogram bucket bounds); None if Redis is down."""
    reply = storage.store.run([HashGetAll(stats_key(storage))])
    return None if reply is FAILED else stats_from_hash(reply[0] or {})


def reset(storage: Storage) -> None:
    """Delete the shared statistics of the namespace."""
    storage.store.run([Unlink(stats_key(storage))])
