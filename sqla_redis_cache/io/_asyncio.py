"""asyncio I/O: the same operations under ``AsyncSession``, without ever blocking the event loop.

SQLAlchemy runs an ``AsyncSession``'s ORM code, and therefore the cache's session and engine
listeners, synchronously inside a greenlet it spawned from the event loop; a driver call in
there is ``await_(coroutine)``, which switches back to the loop while the database answers.  The
cache does exactly the same: the store's io selector (:class:`LoopRouter`, installed by
``storage.Storage.async_router``) hands out, inside such a greenlet, an :class:`AsyncIO` whose
every operation is ``await_(redis.asyncio …)``.
Everything above the I/O (reader, version tokens, dogpile lock, codec) is the sync code,
unchanged, so both paths keep the same guarantees by construction.  Outside a greenlet the
selector answers None and the synchronous client is used: the sync hot path is not touched.

A ``redis.asyncio`` connection belongs to the loop that opened it, so each loop gets its own
client; clients of closed loops are dropped.  A cache on another :class:`~._protocol.RedisIO`
(the in-process one, a custom one) keeps calling it as is, with loop-aware locks.

Stampede protection must never hold a threading lock across an await (the deadlock of the plain
dogpile recipe): :class:`_AsyncMutex` puts an ``asyncio.Lock`` per key and loop in front of the
Redis lock, so the coroutines of one loop queue on the loop instead of polling Redis, and other
processes still meet the Redis lock.

SQLAlchemy's bridge (``await_``, ``greenlet_spawn``, the marker of its greenlets) is handed in
as a :class:`Concurrency` by the wiring (``wiring._compat``), so this package imports nothing
of SQLAlchemy; greenlet is optional for SQLAlchemy 2.1 and imported only when asyncio support
is first used.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from redis.exceptions import LockError, RedisError

from .._config import CacheConfig
from ._clients import make_async_client
from ._ops import Operation
from ._protocol import Mutex, RedisIO
from ._sync import DELETE_BATCH, SyncIO, as_text, queue, reply, server_summary

T = TypeVar("T")


class Concurrency(Protocol):
    """SQLAlchemy's asyncio bridge, handed in by the wiring (``wiring._compat.concurrency``):
    this package never imports SQLAlchemy."""

    @property
    def await_(self) -> Callable[[Awaitable[Any]], Any]: ...
    @property
    def spawn(self) -> Callable[..., Awaitable[Any]]: ...
    @property
    def getcurrent(self) -> Callable[[], Any]: ...
    @property
    def marker(self) -> str: ...


class _LoopLocks:
    """Per-key asyncio locks of one loop (only ever touched from that loop's thread)."""

    def __init__(self, await_: Callable[[Awaitable[Any]], Any]) -> None:
        self.await_ = await_
        #: name -> [lock, users]
        self.local_locks: dict[str, list[Any]] = {}

    def local_lock(self, name: str) -> asyncio.Lock:
        entry = self.local_locks.get(name)
        if entry is None:
            entry = self.local_locks[name] = [asyncio.Lock(), 0]
        entry[1] += 1
        lock: asyncio.Lock = entry[0]
        return lock

    def unref(self, name: str) -> None:
        entry = self.local_locks.get(name)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self.local_locks[name]


class AsyncIO(_LoopLocks):
    """:class:`~._protocol.RedisIO` over ``redis.asyncio``, called from SQLAlchemy's greenlet."""

    def __init__(
        self, client: Any, await_: Callable[[Awaitable[Any]], Any], *, cluster: bool = False
    ) -> None:
        super().__init__(await_)
        self.client = client
        self.cluster = cluster

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.cluster:
            return list(self.await_(self.client.mget_nonatomic(keys)))
        return list(self.await_(self.client.execute_command("MGET", *keys)))

    def run(self, operations: Sequence[Operation]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for op in operations:
            queue(pipe, op)
        raw = self.await_(pipe.execute())
        return [reply(op, r) for op, r in zip(operations, raw, strict=True)]

    def scan(self, match: str) -> list[str]:
        return list(self.await_(self._scan(match)))

    async def _scan(self, match: str) -> list[str]:
        return [as_text(k) async for k in self.client.scan_iter(match=match, count=1000)]

    def delete_matching(self, match: str) -> int:
        return int(self.await_(self._delete_matching(match)))

    async def _delete_matching(self, match: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=match, count=1000):
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                deleted += await self._unlink(batch)
                batch = []
        if batch:
            deleted += await self._unlink(batch)
        return deleted

    async def _unlink(self, keys: list[bytes]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("UNLINK", key)
        return sum(int(r or 0) for r in await pipe.execute())

    def server_info(self) -> dict[str, Any]:
        return server_summary(self.await_(self.client.info()))

    def lock(self, name: str, timeout: float, wait: float) -> Mutex:
        redis_lock = self.client.lock(
            name, timeout=timeout, sleep=0.005, blocking_timeout=wait, thread_local=False
        )
        return _AsyncMutex(self, name, wait, redis_lock)

    def close(self) -> None:
        self.await_(self.aclose())

    async def aclose(self) -> None:
        close = getattr(self.client, "aclose", None) or self.client.close
        await close()


class InProcessIO(_LoopLocks):
    """Any other :class:`~._protocol.RedisIO` (the in-memory one, a custom one), called as is,
    with loop-aware locks: its own may be threading locks, fatal when held across an await."""

    def __init__(self, io: RedisIO, await_: Callable[[Awaitable[Any]], Any]) -> None:
        super().__init__(await_)
        self.io = io

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.io.get_many(keys)

    def run(self, operations: Sequence[Operation]) -> list[Any]:
        return self.io.run(operations)

    def scan(self, match: str) -> Iterable[str]:
        return self.io.scan(match)

    def delete_matching(self, match: str) -> int:
        return self.io.delete_matching(match)

    def server_info(self) -> dict[str, Any]:
        return self.io.server_info()

    def lock(self, name: str, timeout: float, wait: float) -> Mutex:
        return _AsyncMutex(self, name, wait, None)

    def close(self) -> None:
        self.io.close()


class _AsyncMutex:
    """dogpile's mutex protocol: an asyncio lock of this loop, then the Redis lock if any; never
    raises on Redis trouble (the caller then builds the value itself, as with the sync mutex)."""

    __slots__ = ("__weakref__", "_io", "_local", "_name", "_owned", "_redis_lock", "_wait")

    def __init__(self, io: _LoopLocks, name: str, wait: float, redis_lock: Any) -> None:
        self._io = io
        self._name = name
        self._wait = wait
        self._redis_lock = redis_lock
        self._local: asyncio.Lock | None = None
        self._owned = False

    def acquire(self, wait: bool = True) -> bool:
        return bool(self._io.await_(self._acquire(wait)))

    async def _acquire(self, wait: bool) -> bool:
        io = self._io
        local = io.local_lock(self._name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        try:
            if not wait:
                if local.locked():
                    io.unref(self._name)
                    return False
                await local.acquire()  # free: returns at once
            else:
                async with asyncio.timeout(self._wait):
                    await local.acquire()
        except TimeoutError:
            io.unref(self._name)
            return True  # waited long enough: build without the lock
        except BaseException:
            io.unref(self._name)
            raise
        self._local = local
        if self._redis_lock is None:
            return True
        try:
            remaining = max(0.0, deadline - loop.time())
            self._owned = bool(
                await self._redis_lock.acquire(blocking=wait, blocking_timeout=remaining)
            )
        except (RedisError, OSError):
            return True
        except BaseException:
            self._release_local()
            raise
        if not self._owned and not wait:
            self._release_local()
            return False
        return True

    def release(self) -> None:
        owned, self._owned = self._owned, False
        try:
            if owned:
                self._io.await_(self._redis_lock.release())
        except (LockError, RedisError, OSError):
            pass  # expired under a slow creator, or Redis went away: nothing to undo
        finally:
            self._release_local()

    def _release_local(self) -> None:
        local, self._local = self._local, None
        if local is not None:
            local.release()
            self._io.unref(self._name)


class LoopRouter:
    """The store's io selector: the running loop's :class:`AsyncIO` inside SQLAlchemy's
    greenlet, None (the synchronous client) everywhere else."""

    def __init__(self, config: CacheConfig, default: RedisIO, bridge: Concurrency) -> None:
        self.await_, self.spawn = bridge.await_, bridge.spawn
        self._getcurrent, self._marker = bridge.getcurrent, bridge.marker
        self.config = config
        #: a redis-py client gets a redis.asyncio twin; any other I/O is used as is
        self._default = None if isinstance(default, SyncIO) else default
        self._ios: dict[asyncio.AbstractEventLoop, AsyncIO | InProcessIO] = {}
        self._last: tuple[Any, AsyncIO | InProcessIO | None] = (None, None)
        self._mutex = threading.Lock()

    def __call__(self) -> RedisIO | None:
        if not getattr(self._getcurrent(), self._marker, False):  # not SQLAlchemy's greenlet
            return None
        return self.current()

    def current(self) -> AsyncIO | InProcessIO:
        loop = asyncio.get_running_loop()
        last_loop, io = self._last
        if loop is last_loop and io is not None:
            return io
        with self._mutex:
            io = self._ios.get(loop)
            if io is None:
                for old in [lp for lp in self._ios if lp.is_closed()]:
                    del self._ios[old]
                io = self._ios[loop] = self._new_io()
            self._last = (loop, io)
        return io

    def _new_io(self) -> AsyncIO | InProcessIO:
        if self._default is not None:
            return InProcessIO(self._default, self.await_)
        client = make_async_client(self.config)
        return AsyncIO(client, self.await_, cluster=self.config.cluster)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a SQLAlchemy greenlet: its Redis calls are awaited on this loop."""
        result: T = await self.spawn(fn, *args)
        return result

    async def aclose(self) -> None:
        """Close the connections of the running loop's client."""
        loop = asyncio.get_running_loop()
        with self._mutex:
            io = self._ios.pop(loop, None)
            self._last = (None, None)
        if isinstance(io, AsyncIO):
            await io.aclose()

    def forget(self) -> None:
        """Drop every loop's client (sync close: their loops may be gone)."""
        with self._mutex:
            self._ios.clear()
            self._last = (None, None)


def awaiting(router: LoopRouter, creator: Callable[[], Any]) -> Callable[[], Any]:
    """``creator`` for greenlet code: an awaitable it returns is awaited on the loop."""
    await_ = router.await_

    def build() -> Any:
        value = creator()
        if inspect.isawaitable(value):
            value = await_(value)
        return value

    return build
