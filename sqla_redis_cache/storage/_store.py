"""Redis I/O that fails open.

Every call the cache makes to Redis goes through :class:`Store`, which turns Redis errors into a
``FAILED`` sentinel (the caller then runs the query against the database), counts them, logs a
rate-limited warning and feeds a circuit breaker: after ``breaker_threshold`` consecutive
failures Redis is not called at all, so a dead Redis costs a request an attribute check instead
of a connect timeout.  Meanwhile a *background* thread probes Redis every ``breaker_cooldown``
seconds and closes the breaker when it answers.  No request thread ever waits on a Redis known
to be down: the only requests that pay a timeout are the ``breaker_threshold`` ones that
discover the outage.

The operations themselves are typed (``io._ops``) and executed by a
:class:`~..io.RedisIO` (``io/``: redis-py sync or asyncio, in-process); this module only decides
whether Redis may be called, and what a failure means (a miss, never an exception).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import ClusterError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._config import CacheConfig
from ..io._ops import Get, HashGetAll, MemoryUsage, Operation
from ..io._protocol import Mutex, RedisIO
from ..io._sync import RedisLockMutex
from ._near import NearValues
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


class _NoMutex:
    """Stands in for the Redis lock while the breaker is open: everyone builds uncached."""

    __slots__ = ()

    def acquire(self, wait: bool = True) -> bool:
        return True

    def release(self) -> None:
        pass


NO_MUTEX = _NoMutex()


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


def written(operations: Sequence[Operation]) -> list[str]:
    """The keys ``operations`` may change."""
    return [op.key for op in operations if not isinstance(op, Get | HashGetAll | MemoryUsage)]


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
            config.breaker_threshold, config.breaker_cooldown, lambda: io.get_many([probe_key])
        )
        self._last_warning = 0.0
        #: called on errors after which Redis may come back as another server
        self.on_connection_lost: Callable[[], None] | None = None
        #: Redis values kept in process through client tracking (``_near``), or None
        self.near: NearValues | None = None

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

    # the operations, failing open ----------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (one round trip), or FAILED."""
        return self.call(lambda: self.io.get_many(keys))

    def read(self, keys: Sequence[str]) -> list[bytes | None]:
        """:meth:`get_many` for a lookup: from process memory when the tracked near cache
        has every key (no round trip), else from Redis, remembered for next time."""
        near = self.near
        if near is None:
            return self.call(lambda: self.io.get_many(keys))
        local = near.lookup(keys)
        if local is not None:
            return local  # type: ignore[return-value]
        ticket = near.ticket()
        values: Any = FAILED
        try:
            values = self.call(lambda: self.io.get_many(keys))
        finally:
            near.remember(ticket, keys, None if values is FAILED else values)
        return values  # type: ignore[no-any-return]

    def run(self, operations: Sequence[Operation]) -> list[Any]:
        """The replies of ``operations`` (one round trip, see ``io._ops``), or FAILED."""
        near = self.near
        if near is None:
            return self.call(lambda: self.io.run(operations))
        try:
            return self.call(lambda: self.io.run(operations))
        finally:  # what this process changed is never served from its memory again
            near.forget(written(operations))

    def delete_matching(self, match: str) -> int:
        """Delete the keys matching the glob ``match`` (see ``RedisIO``); how many, or
        FAILED.  The near cache forgets everything (which keys went is not known here)."""
        try:
            return self.call(lambda: self.io.delete_matching(match))
        finally:
            if self.near is not None:
                self.near.forget_all()

    def lock(self, name: str) -> Mutex:
        if not self.breaker.allow():
            return NO_MUTEX
        mutex = self.io.lock(name, self.config.lock_timeout, self.config.lock_wait)
        if isinstance(mutex, RedisLockMutex):
            mutex.on_error = self.failed
        return mutex
