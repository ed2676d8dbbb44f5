"""Redis I/O that fails open.

Every call the cache makes to Redis goes through :class:`Store`, which turns Redis errors into a
``FAILED`` sentinel (the caller then runs the query against the database), counts them, logs a
rate-limited warning and feeds a circuit breaker: after ``breaker_threshold`` consecutive
failures Redis is not called at all, so a dead Redis costs a request an attribute check instead
of a connect timeout.  Meanwhile a *background* thread probes Redis every ``breaker_cooldown``
seconds and closes the breaker when it answers.  No request thread ever waits on a Redis known
to be down: the only requests that pay a timeout are the ``breaker_threshold`` ones that
discover the outage.

The actual commands go through a :class:`RedisIO`.  :class:`SyncIO` wraps a redis-py client,
standalone or cluster: it only ever sends single-key commands, or MGET on a standalone server,
so no command spans hash slots.  Clients for each deployment are built in ``_clients``.  An
asyncio implementation plugs in the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from redis.exceptions import ClusterError, LockError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._config import CacheConfig
from ._stats import StatsRecorder

log = logging.getLogger("sqla_redis_cache")

T = TypeVar("T")


class _Failed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FAILED"

    def __bool__(self) -> bool:
        return False


FAILED: Any = _Failed()
"""Returned by :class:`Store` calls when Redis could not be used."""

#: Single-key compare-and-set: ``EVAL CAS_SET 1 key expected new ttl_ms`` replaces the value
#: only if it still equals ``expected`` (Cluster-safe: one key).
CAS_SET = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return 0"
)


class Mutex(Protocol):
    def acquire(self, wait: bool = True) -> bool: ...
    def release(self) -> None: ...


class RedisIO(Protocol):
    """The handful of Redis operations the cache needs."""

    def mget(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]: ...
    def scan_delete(self, match: str) -> int: ...
    def count(self, match: str) -> int: ...
    def lock(self, name: str, timeout: float, wait: float) -> Mutex: ...
    def close(self) -> None: ...


class _RedisLockMutex:
    """dogpile's mutex protocol over a redis-py Lock; never raises.

    A waiter that gives up after ``lock_wait`` (or meets a Redis error) reports the lock as
    acquired: it then builds the value itself, so a dead holder delays others by at most
    ``min(lock_wait, lock_timeout)``.
    """

    __slots__ = ("__weakref__", "_lock", "_on_error", "_owned")

    def __init__(self, lock: Any, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._lock = lock
        self._owned = False
        self._on_error = on_error

    def acquire(self, wait: bool = True) -> bool:
        try:
            self._owned = bool(self._lock.acquire(blocking=wait))
        except (RedisError, OSError) as exc:
            # Redis trouble: behave as if we hold it, the caller just builds the value itself
            if self._on_error is not None:
                self._on_error(exc)
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
            if self._on_error is not None:
                self._on_error(exc)


class _NoMutex:
    """Stands in for the Redis lock while the breaker is open: everyone builds uncached."""

    __slots__ = ()

    def acquire(self, wait: bool = True) -> bool:
        return True

    def release(self) -> None:
        pass


NO_MUTEX = _NoMutex()


class SyncIO:
    """:class:`RedisIO` over a synchronous redis-py client."""

    def __init__(self, client: Any, *, cluster: bool = False) -> None:
        self.client = client
        self.cluster = cluster

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.cluster:
            return list(self.client.mget_nonatomic(keys))
        return list(self.client.execute_command("MGET", *keys))

    def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute())

    def scan_delete(self, match: str) -> int:
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=match, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += self._unlink(batch)
                batch = []
        if batch:
            deleted += self._unlink(batch)
        return deleted

    def _unlink(self, keys: list[bytes]) -> int:
        return sum(int(r or 0) for r in self.pipeline([("UNLINK", k) for k in keys]))

    def count(self, match: str) -> int:
        return sum(1 for _ in self.client.scan_iter(match=match, count=1000))

    def lock(self, name: str, timeout: float, wait: float) -> Mutex:
        lock = self.client.lock(
            name, timeout=timeout, sleep=0.005, blocking_timeout=wait, thread_local=False
        )
        return _RedisLockMutex(lock)

    def close(self) -> None:
        if self.cluster:
            # RedisCluster.close() leaves a client that raises AttributeError when used again;
            # dropping the connections releases the same resources and stays usable
            self.client.disconnect_connection_pools()
            return
        self.client.close()


class Breaker:
    """Consecutive-failure circuit breaker whose half-open probe runs in the background.

    Closed: every call goes to Redis.  After ``threshold`` consecutive failures it opens: calls
    are refused (the caller uses the database) and a daemon thread takes over, calling ``probe``
    every ``cooldown`` seconds until one succeeds, which closes the breaker.  No request ever
    waits for a probe, and the cache recovers even without traffic.  ``allow()`` on the closed
    path is one attribute test, so the hit path pays nothing for it.  Without a ``probe`` the
    first call after the cool-down is the probe (classic half-open).
    """

    __slots__ = (
        "_lock",
        "_probe",
        "_probing",
        "_stopped",
        "cooldown",
        "failures",
        "open_until",
        "threshold",
    )

    def __init__(
        self, threshold: int, cooldown: float, probe: Callable[[], object] | None = None
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0.0
        self._probe = probe
        self._probing = False
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def is_open(self) -> bool:
        return bool(self.open_until)

    def allow(self) -> bool:
        if not self.open_until:
            return True
        if self._probe is None:
            return time.monotonic() >= self.open_until
        return False

    def success(self) -> None:
        if self.failures or self.open_until:
            self.failures = 0
            self.open_until = 0.0

    def failure(self) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.cooldown
            if self._probe is not None:
                self._start_probing()

    def stop(self) -> None:
        """Stop probing for good (the cache is closed)."""
        self._stopped.set()

    def _start_probing(self) -> None:
        with self._lock:
            if self._probing or self._stopped.is_set():
                return
            self._probing = True
        threading.Thread(
            target=self._probe_loop, name="sqla-redis-cache-probe", daemon=True
        ).start()

    def _probe_loop(self) -> None:
        assert self._probe is not None
        try:
            while self.open_until and not self._stopped.wait(
                max(0.0, self.open_until - time.monotonic())
            ):
                try:
                    self._probe()
                except Exception:
                    self.open_until = time.monotonic() + self.cooldown
                else:
                    self.success()
        finally:
            with self._lock:
                self._probing = False
        if self.open_until:  # re-opened while this thread was finishing
            self._start_probing()


#: errors after which Redis may come back as a different server (failover, restart, a promoted
#: replica that missed recent writes): see ``CacheConfig.invalidate_after_outage``
_CONNECTIVITY_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterError, OSError)


class Store:
    """Fail-open front of a :class:`RedisIO`."""

    def __init__(
        self,
        io: RedisIO,
        config: CacheConfig,
        stats: StatsRecorder,
        io_selector: Callable[[], RedisIO | None] | None = None,
    ) -> None:
        self._io = io
        self._select = io_selector
        self.config = config
        self.stats = stats
        probe_key = config.namespace + ":all"
        self.breaker = Breaker(
            config.breaker_threshold, config.breaker_cooldown, lambda: io.mget([probe_key])
        )
        self._last_warning = 0.0
        #: called on errors after which Redis may come back as another server
        self.on_connection_lost: Callable[[], None] | None = None

    @property
    def io(self) -> RedisIO:
        if self._select is not None:
            chosen = self._select()
            if chosen is not None:
                return chosen
        return self._io

    @property
    def io_selector(self) -> Callable[[], RedisIO | None] | None:
        return self._select

    @io_selector.setter
    def io_selector(self, selector: Callable[[], RedisIO | None] | None) -> None:
        """Pick the I/O per call (asyncio inside SQLAlchemy's greenlet); None: the default."""
        self._select = selector

    @property
    def routed(self) -> bool:
        """True when this call's I/O is the selector's (an event loop's), not the default."""
        return self._select is not None and self._select() is not None

    @property
    def available(self) -> bool:
        return self.breaker.allow()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)``; on a Redis error return FAILED (and count it)."""
        if not self.breaker.allow():
            return FAILED  # type: ignore[no-any-return]
        try:
            result = fn(*args)
        except (RedisError, OSError) as exc:
            self.failed(exc)
            return FAILED  # type: ignore[no-any-return]
        self.breaker.success()
        return result

    def failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.breaker.failure()
        if self.on_connection_lost is not None and isinstance(exc, _CONNECTIVITY_ERRORS):
            self.on_connection_lost()
        now = time.monotonic()
        if now - self._last_warning > 30.0:
            self._last_warning = now
            log.warning(
                "Redis unavailable, serving from the database (%s: %s)", type(exc).__name__, exc
            )

    # convenience wrappers -------------------------------------------------------------------

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.call(lambda: self.io.mget(keys))

    def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        return self.call(lambda: self.io.pipeline(commands))

    def lock(self, name: str) -> Mutex:
        if not self.breaker.allow():
            return NO_MUTEX
        mutex = self.io.lock(name, self.config.lock_timeout, self.config.lock_wait)
        if isinstance(mutex, _RedisLockMutex):
            mutex._on_error = self.failed
        return mutex
