"""Synchronous Redis I/O over a redis-py client, standalone or cluster (:class:`SyncIO`).

Typed operations become the commands below, pipelined without a transaction; a multi-key read
is ``MGET`` on a single server and per-slot reads on a cluster (``mget_nonatomic``), so no
command ever spans hash slots.  The clients themselves (timeouts, TLS, Sentinel, no retries)
are built in ``_clients``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from redis.exceptions import LockError, RedisError

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
from ._protocol import Mutex
from ._scripts import CAS_SET, REPLACE_TOKEN, replace_token_args

#: keys deleted per pipeline by :meth:`SyncIO.delete_matching`
DELETE_BATCH = 500


def queue(pipe: Any, op: Operation) -> None:
    """Add the command of ``op`` to a redis-py pipeline (sync or asyncio)."""
    match op:
        case Get(key):
            pipe.execute_command("GET", key)
        case Set(key, value, ttl_ms, only_if_absent):
            if only_if_absent:
                pipe.execute_command("SET", key, value, "NX", "PX", ttl_ms)
            else:
                pipe.execute_command("SET", key, value, "PX", ttl_ms)
        case Unlink(key):
            pipe.execute_command("UNLINK", key)
        case ReplaceToken():
            pipe.execute_command("EVAL", REPLACE_TOKEN, *replace_token_args(op))
        case CompareAndSet(key, expected, value, ttl_ms):
            pipe.execute_command("EVAL", CAS_SET, 1, key, expected, value, ttl_ms)
        case HashIncrement(key, field, amount):
            pipe.execute_command("HINCRBY", key, field, amount)
        case Expire(key, ttl_ms):
            pipe.execute_command("PEXPIRE", key, ttl_ms)
        case HashGetAll(key):
            pipe.execute_command("HGETALL", key)
        case MemoryUsage(key):
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
        case _:
            raise TypeError(f"not a Redis operation: {op!r}")


def reply(op: Operation, raw: Any) -> Any:
    """redis-py's reply to ``op``'s command, typed as the operation's docstring says."""
    match op:
        case Get():
            return raw
        case Set() | Unlink() | CompareAndSet() | Expire():
            return bool(raw)
        case ReplaceToken():
            return None
        case HashIncrement():
            return int(raw)
        case HashGetAll():
            return dict(raw or {})
        case _:  # MemoryUsage
            return None if raw is None else int(raw)


def server_summary(info: dict[str, Any]) -> dict[str, Any]:
    """``INFO``'s answer reduced to what the status report shows (a cluster answers per node:
    the first node's)."""
    if "redis_version" not in info:
        info = next(iter(info.values()))
    return {
        "version": info.get("redis_version"),
        "role": info.get("role"),
        "mode": info.get("redis_mode"),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }


def as_text(key: bytes | str) -> str:
    """A key as text (undecodable bytes shown escaped: for reports only)."""
    return key.decode(errors="backslashreplace") if isinstance(key, bytes) else key


class RedisLockMutex:
    """dogpile's mutex protocol over a redis-py Lock; never raises.

    A waiter that gives up after ``lock_wait`` (or meets a Redis error) reports the lock as
    acquired: it then builds the value itself, so a dead holder delays others by at most
    ``min(lock_wait, lock_timeout)``.  ``on_error`` hears about Redis errors (the store counts
    them and feeds its circuit breaker).
    """

    __slots__ = ("__weakref__", "_lock", "_owned", "on_error")

    def __init__(self, lock: Any, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._lock = lock
        self._owned = False
        self.on_error = on_error

    def acquire(self, wait: bool = True) -> bool:
        try:
            self._owned = bool(self._lock.acquire(blocking=wait))
        except (RedisError, OSError) as exc:
            # Redis trouble: behave as if we hold it, the caller just builds the value itself
            if self.on_error is not None:
                self.on_error(exc)
            return True
        return self._owned or wait

    def release(self) -> None:
        if not self._owned:
            return
        self._owned = False
        try:
            self._lock.release()
        except LockError:
            pass  # expired under a slow creator (and maybe taken by another): nothing to undo
        except (RedisError, OSError) as exc:
            if self.on_error is not None:
                self.on_error(exc)


class SyncIO:
    """:class:`~._protocol.RedisIO` over a synchronous redis-py client."""

    def __init__(self, client: Any, *, cluster: bool = False) -> None:
        self.client = client
        self.cluster = cluster

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.cluster:
            return list(self.client.mget_nonatomic(keys))
        return list(self.client.execute_command("MGET", *keys))

    def run(self, operations: Sequence[Operation]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for op in operations:
            queue(pipe, op)
        return [reply(op, raw) for op, raw in zip(operations, pipe.execute(), strict=True)]

    def scan(self, match: str) -> Iterator[str]:
        for key in self.client.scan_iter(match=match, count=1000):
            yield as_text(key)

    def delete_matching(self, match: str) -> int:
        deleted = 0
        batch: list[bytes] = []  # the keys as Redis returns them, whatever their encoding
        for key in self.client.scan_iter(match=match, count=1000):
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                deleted += self._unlink(batch)
                batch = []
        if batch:
            deleted += self._unlink(batch)
        return deleted

    def _unlink(self, keys: list[bytes]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("UNLINK", key)
        return sum(int(r or 0) for r in pipe.execute())

    def lock(self, name: str, timeout: float, wait: float) -> Mutex:
        lock = self.client.lock(
            name, timeout=timeout, sleep=0.005, blocking_timeout=wait, thread_local=False
        )
        return RedisLockMutex(lock)

    def server_info(self) -> dict[str, Any]:
        return server_summary(self.client.info())

    def close(self) -> None:
        if self.cluster:
            # RedisCluster.close() leaves a client that raises AttributeError when used again;
            # dropping the connections releases the same resources and stays usable
            self.client.disconnect_connection_pools()
            return
        self.client.close()
