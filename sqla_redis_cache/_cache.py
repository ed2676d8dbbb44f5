"""QueryCache: the facade that builds one cache's layers and answers the public API.

A :class:`QueryCache` owns the storage layer (``storage.Storage``: keys, store, version
tokens, codec, reader, statistics) and the SQLAlchemy wiring (``wiring.Wiring``: the hooks
``attach()`` installs); the features (generic API, memoize, warm-up, dogpile regions, shared
statistics) are functions over the storage.  It is cheap to keep for the life of the process
and safe to share between threads.  ``attach()`` installs event listeners on sessions and
engines; it never patches SQLAlchemy.  Everything it writes to Redis lives under
``<namespace>:``.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from dogpile.cache.region import CacheRegion

from ._async_api import AsyncAPI
from ._config import CacheConfig, clean_names
from .features import _admin, _generic, _memoize, _shared_stats
from .features._dogpile import make_dogpile_region
from .features._warmup import WarmupRegistry
from .io import RedisIO
from .io._clients import connect_sync
from .io._memory import MemoryIO
from .storage import Storage
from .storage._stats import CacheStats, StatsFlusher
from .wiring import _compat
from .wiring._attach import Wiring
from .wiring._capture import LIVENESS_TIMEOUT, ChangeCapture
from .wiring._explain import Explanation

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class QueryCache(AsyncAPI):
    """A Redis-backed cache for SQLAlchemy query results and arbitrary values.

    Build it with :meth:`from_url` or :meth:`from_env`, then :meth:`attach` it to a
    sessionmaker, a Session subclass, a Session or an Engine.
    """

    def __init__(self, config: CacheConfig | None = None, *, io: RedisIO | None = None) -> None:
        self.config = config = config or CacheConfig()
        if io is None:
            io = connect_sync(config)
        self._storage = Storage(config, io, _compat.concurrency)
        self._wiring = Wiring(config, self._storage)
        self._regions: dict[str, CacheRegion] = {}
        self._warmup = WarmupRegistry()
        self._flusher = StatsFlusher(self.flush_stats, config.stats_interval)
        #: statistics are shared through Redis; an in-process backend keeps them local
        self._stats_shared = not isinstance(io, MemoryIO)
        #: change-capture listeners of this cache: ``close()`` stops them
        self._captures: weakref.WeakSet[ChangeCapture] = weakref.WeakSet()

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "sqlacache", **settings: Any) -> QueryCache:
        """``settings`` are :class:`CacheConfig` fields, e.g. ``regions={"db_query": 60}``."""
        return cls(CacheConfig.from_url(url, namespace=namespace, **settings))

    @classmethod
    def from_env(
        cls, *, namespace: str | None = None, environ: Any = None, **settings: Any
    ) -> QueryCache:
        """Read ``REDIS_URL`` (else ``REDIS_HOST``/``PORT``/``DB``), ``REDIS_USERNAME``/
        ``PASSWORD``, ``REDIS_TLS_*``, ``REDIS_CLUSTER_*``, ``REDIS_SENTINEL_*``
        (docs/deployment.md); the namespace, unless given, from ``SQLA_CACHE_NAMESPACE``
        (default ``sqlacache``), as the CLI does."""
        if namespace is None:
            env = os.environ if environ is None else environ
            namespace = env.get("SQLA_CACHE_NAMESPACE") or "sqlacache"
        return cls(CacheConfig.from_env(environ, namespace=namespace, **settings))

    @classmethod
    def in_memory(cls, *, namespace: str = "sqlacache", **settings: Any) -> QueryCache:
        """A cache kept in this process (no Redis): for demos, scripts and tests.

        Entries and invalidations are invisible to other processes.
        """
        settings.setdefault("stats_interval", 0)
        return cls(CacheConfig(namespace=namespace, **settings), io=MemoryIO())

    # wiring --------------------------------------------------------------------------------

    def attach(
        self,
        target: Any,
        *,
        default: Any = None,
        tables: Mapping[str, Any] | None = None,
    ) -> QueryCache:
        """Cache ``cached()`` statements run through ``target`` and invalidate on its commits.

        ``target``: a sessionmaker, Session subclass, Session, ``scoped_session`` or Engine, or
        their asyncio counterparts.  ``default`` (a :func:`cached` option) caches every SELECT
        run through it without an option of its own; ``tables`` maps table names to the
        ``cached(...)`` policy of statements reading them, or None for never.  An explicit
        ``cached()`` / ``uncached()`` on a statement wins; statements unsafe to cache still run
        uncached.  Attaching a target again replaces its policy.
        """
        self._wiring.attach(target, default, tables)
        self._flusher.start()
        return self

    def explain(self, statement: Any, session: Any) -> Explanation:
        """Would ``statement`` be cached in ``session``, and if not, why.

        Runs the statement's ORM steps in the session (autoflush, compilation) and the cache's
        read decisions, never the query itself; then reads the entry (one round trip) to say
        whether it is stored and fresh.  See :class:`~sqla_redis_cache.wiring._explain.
        Explanation` for the fields.
        """
        return self._wiring.explain(statement, session)

    async def aexplain(self, statement: Any, session: Any) -> Explanation:
        """:meth:`explain` for an ``AsyncSession``."""
        return await session.run_sync(lambda sync: self._wiring.explain(statement, sync))  # type: ignore[no-any-return]

    def detach(self, target: Any) -> None:
        """Undo :meth:`attach` for ``target``."""
        self._wiring.detach(target)

    def close(self) -> None:
        """Stop the change-capture listeners, detach everything, close the Redis connections."""
        for capture in list(self._captures):
            if capture.running:
                capture.stop()
        self._wiring.close()
        self._flusher.stop()
        if self.config.stats_interval:
            self.flush_stats()
        self._storage.close()

    # invalidation --------------------------------------------------------------------------

    def invalidate_tables(self, *tables: str) -> bool:
        """Every cached result that read one of ``tables`` misses from now on, everywhere."""
        return self._wiring.commit_path.invalidate(clean_names("tables", tables))

    def invalidate_tags(self, *tags: str) -> bool:
        """Every entry carrying one of ``tags`` misses from now on, everywhere."""
        return self._wiring.commit_path.invalidate(tags=clean_names("tags", tags))

    def clear(self) -> int:
        """Invalidate everything under the namespace at once, then reclaim its keys.

        Returns the number of keys deleted (-1 if Redis was unavailable).
        """
        if not self._wiring.commit_path.invalidate_everything():
            return -1
        return _generic.delete_namespace(self._storage)

    def change_capture(
        self, engine: Any, *, liveness_timeout: float = LIVENESS_TIMEOUT
    ) -> ChangeCapture:
        """Change capture from PostgreSQL: writes made outside the application (``psql``, a
        migration, another service) invalidate this cache's entries too.

        ``engine``: the application's PostgreSQL engine (or its URL; any driver, asyncio
        included).  The result's ``install(tables=None)`` / ``uninstall(tables=None)`` manage
        the triggers, ``start()`` / ``stop()`` a listener thread in this process, ``run()``
        the same listener in the foreground (``sqla-redis-cache capture run``).  While no
        listener of the namespace is alive, reads of captured tables run against the database;
        ``liveness_timeout`` bounds how long a crashed listener goes unnoticed.  See
        docs/capture.md.
        """
        capture = ChangeCapture(
            self._storage,
            self._wiring.commit_path,
            engine,
            liveness_timeout=liveness_timeout,
        )
        self._captures.add(capture)
        return capture

    # entities ------------------------------------------------------------------------------
    #
    # ``bind`` is the Engine or Session the entity belongs to; it may be omitted when exactly
    # one engine is attached.  ``session.get(cls, pk, options=[cached()])`` uses the same
    # entries, and commits write them through (see ``wiring._entities``).

    def get_entity(self, cls: type[T], pk: Any, *, bind: Any = None) -> T | None:
        """A detached instance from the entity cache, or None on a miss (never queries)."""
        engine = self._wiring.entity_engine(cls, bind)
        return self._wiring.entities.get_entity(cls, pk, engine)  # type: ignore[no-any-return]

    def cache_entity(self, obj: Any, *, bind: Any = None) -> bool:
        """Store the committed state of ``obj`` (pending changes are never stored)."""
        engine = self._wiring.entity_engine(type(obj), bind)
        return self._wiring.entities.cache_entity(obj, engine)

    def forget_entity(self, cls: type, pk: Any, *, bind: Any = None) -> bool:
        """Remove one entity from the cache."""
        engine = self._wiring.entity_engine(cls, bind)
        return self._wiring.entities.forget_entity(cls, pk, engine)

    # statistics ----------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """This process's counters and hit latency percentiles (and the near cache's
        figures, ``near``)."""
        snapshot = self._storage.stats.snapshot()
        near = self._storage.near
        if near is None:
            return snapshot
        return dataclasses.replace(snapshot, near=near.figures())

    def reset_stats(self, *, shared: bool = False) -> None:
        """Zero this process's counters; with ``shared=True`` the shared ones as well."""
        self._storage.stats.reset()
        if shared:
            _shared_stats.reset(self._storage)

    def ping(self) -> bool:
        """True when Redis answers (bypasses the circuit breaker)."""
        return _admin.connection_error(self._storage) is None

    # the generic key/value API -------------------------------------------------------------

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        tags: Iterable[str] | str | None = None,
        compress: bool | str | None = None,
        region: str | None = None,
    ) -> bool:
        """Store ``value`` (msgpack types, plus pickle with a secret); False if Redis is down."""
        return _generic.set_value(
            self._storage, key, value, ttl=ttl, tags=tags, compress=compress, region=region
        )

    def get(self, key: str, default: Any = None) -> Any:
        """The value, or ``default`` on a miss."""
        return _generic.get_value(self._storage, key, default)

    def get_or_set(
        self,
        key: str,
        creator: Callable[[], T],
        *,
        ttl: float | None = None,
        tags: Iterable[str] | str | None = None,
        compress: bool | str | None = None,
        region: str | None = None,
    ) -> T:
        return _generic.get_or_set(
            self._storage, key, creator, ttl=ttl, tags=tags, compress=compress, region=region
        )

    def delete(self, key: str) -> bool:
        return _generic.delete(self._storage, key)

    def delete_pattern(self, pattern: str) -> int:
        """Delete the generic keys matching ``pattern``, a Redis glob relative to the namespace.

        Returns how many were deleted (-1 if Redis was unavailable, as :meth:`clear`).
        """
        return _generic.delete_pattern(self._storage, pattern)

    def region(self, name: str) -> CacheRegion:
        """The TTL profile ``name`` as a dogpile.cache region backed by this cache's Redis."""
        region = self._regions.get(name)
        if region is None:
            region = self._regions[name] = make_dogpile_region(self._storage, name)
        return region

    # shared statistics, memoize, warm-up -------------------------------------------------

    def flush_stats(self) -> bool:
        """Add this process's counters since the last flush to the shared statistics now.

        ``attach()`` starts a thread doing this every ``stats_interval`` seconds; call it
        yourself before a short-lived process exits.  False if Redis was unavailable (and
        always for an in-process cache, whose statistics stay local).
        """
        return _shared_stats.flush(self._storage, shared=self._stats_shared)

    def shared_stats(self) -> CacheStats | None:
        """Statistics of every process of this namespace (after flushing this one's).

        Percentiles are bounds of a fixed histogram (see ``storage._stats``).  None if Redis is
        down, and for an in-process cache.
        """
        self.flush_stats()
        if not self._stats_shared:
            return None
        return _shared_stats.read(self._storage)

    def memoize(
        self,
        *,
        ttl: float | None = None,
        tags: Iterable[str] | str | None = None,
        region: str | None = None,
        key: Callable[..., str] | None = None,
    ) -> Callable[[F], F]:
        """Cache a function's results (sync or ``async def``) by its arguments.

        ::

            @cache.memoize(tags=["rates"], region="long")
            def exchange_rate(base: str, quote: str = "EUR") -> float: ...

            exchange_rate.invalidate("USD")       # drop one entry
            cache.invalidate_tags("rates")        # drop them all

        One caller computes a missing value while the others wait (stampede lock).  Arguments
        must be plain values (numbers, strings, dates, lists/dicts of them) unless ``key`` is
        given: ``key(*args, **kwargs) -> str``.
        """
        self._flusher.start()
        return _memoize.memoize(self._storage, ttl=ttl, tags=tags, region=region, key=key)

    def register_warmup(
        self, fn: Callable[[], Any] | None = None, *, name: str | None = None
    ) -> Any:
        """Register a callable that fills hot entries; usable as a decorator.

        ``sqla-redis-cache warm --app module:cache`` and the status API's ``warm-up`` action
        run them all (see :meth:`warm`).
        """
        if fn is None:
            return lambda f: self._warmup.register(f, name)
        return self._warmup.register(fn, name)

    def warm(self, *, startup: bool = False) -> dict[str, dict[str, Any]]:
        """Run every warm-up callable; ``{name: {"ok": bool, "result" | "error": ...}}``.

        ``startup=True`` runs them only when ``CacheConfig.warmup`` is set (``CACHE_WARMUP=true``
        for :meth:`from_env`) and returns ``{}`` otherwise, so start-up code
        can call it unconditionally.
        """
        if startup and not self.config.warmup:
            return {}
        return self._warmup.run()

    def __repr__(self) -> str:
        return f"<QueryCache namespace={self.config.namespace!r}>"


class Internals(NamedTuple):
    """What the package's integrations (ASGI middleware, status API, CLI, OpenTelemetry) may
    use beyond the public API: the storage layer, the registered warm-up callables, and what
    ``attach()`` was given (their synchronous objects)."""

    storage: Storage
    warmup: WarmupRegistry
    targets: tuple[Any, ...] = ()


def internals(cache: QueryCache) -> Internals:
    """The :class:`Internals` of ``cache`` (not public API)."""
    # the facade's own parts, read by its own module
    return Internals(cache._storage, cache._warmup, tuple(cache._wiring.attached))  # noqa: SLF001
