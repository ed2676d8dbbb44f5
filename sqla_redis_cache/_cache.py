"""QueryCache: the facade that owns configuration, store and statistics, and attaches wiring.

A :class:`QueryCache` is cheap to keep for the life of the process and safe to share between
threads.  ``attach()`` installs event listeners on sessions and engines; it never patches
SQLAlchemy.  Everything it writes to Redis lives under ``<namespace>:``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from dogpile.cache.region import CacheRegion
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from ._async_api import AsyncAPI
from ._config import CacheConfig, clean_names
from .features import _generic, _memoize
from .features._dogpile import make_dogpile_region
from .features._warmup import WarmupRegistry
from .io import Expire, HashGetAll, HashIncrement, Operation, RedisIO, Unlink
from .io._memory import MemoryIO
from .storage._stats import CacheStats, StatsFlusher, stats_from_hash
from .storage._store import FAILED
from .wiring._attach import STATS_TTL_MS, Core, base_engine, engines_of

if TYPE_CHECKING:
    pass

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class QueryCache(AsyncAPI):
    """A Redis-backed cache for SQLAlchemy query results and arbitrary values.

    Build it with :meth:`from_url` or :meth:`from_env`, then :meth:`attach` it to a
    sessionmaker, a Session subclass, a Session or an Engine.
    """

    def __init__(self, config: CacheConfig | None = None, *, io: RedisIO | None = None) -> None:
        self.config = config or CacheConfig()
        self._core = Core(self.config, io)
        self._attached: list[Any] = []
        self._regions: dict[str, CacheRegion] = {}
        self._warmup = WarmupRegistry()
        self._flusher = StatsFlusher(self.flush_stats, self.config.stats_interval)
        #: statistics are shared through Redis; an in-process backend keeps them local
        self._stats_shared = not isinstance(self._core.store.io, MemoryIO)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "sqlacache", **settings: Any) -> QueryCache:
        """``settings`` are :class:`CacheConfig` fields, e.g. ``regions={"db_query": 60}``."""
        return cls(CacheConfig.from_url(url, namespace=namespace, **settings))

    @classmethod
    def from_env(
        cls, *, namespace: str = "sqlacache", environ: Any = None, **settings: Any
    ) -> QueryCache:
        """Read ``REDIS_URL`` (else ``REDIS_HOST``/``PORT``/``DB``), ``REDIS_USERNAME``/
        ``PASSWORD``, ``REDIS_TLS_*``, ``REDIS_CLUSTER_*``, ``REDIS_SENTINEL_*``
        (docs/deployment.md)."""
        return cls(CacheConfig.from_env(environ, namespace=namespace, **settings))

    @classmethod
    def in_memory(cls, *, namespace: str = "sqlacache", **settings: Any) -> QueryCache:
        """A cache kept in this process (no Redis): for demos, scripts and tests.

        Entries and invalidations are invisible to other processes.
        """
        settings.setdefault("stats_interval", 0)
        return cls(CacheConfig(namespace=namespace, **settings), io=MemoryIO())

    # wiring --------------------------------------------------------------------------------

    def attach(self, target: Any) -> QueryCache:
        """Cache ``cached()`` statements run through ``target`` and invalidate on its commits."""
        core = self._core
        from .io import _asyncio as _aio  # asyncio: AsyncEngine, AsyncSession, async_sessionmaker

        if _aio.is_async_target(target):
            _aio.router(core.store)
            target, engines = _aio.sync_target(target)
            for engine in engines:
                core.ensure_engine(engine)
        target = getattr(target, "sync_engine", target)
        if isinstance(target, Engine):
            core.ensure_engine(target)
            core.explicit_engines.add(base_engine(target))  # cached() on any of its sessions
        elif isinstance(target, sessionmaker | Session) or (
            isinstance(target, type) and issubclass(target, Session)
        ):
            core.session_hooks.install(target)
            for engine in engines_of(target):
                core.ensure_engine(engine)
        else:
            raise TypeError(
                "attach() takes a sessionmaker, a Session subclass, a Session or an Engine "
                f"(or their asyncio counterparts), not {type(target).__qualname__}"
            )
        if target not in self._attached:
            self._attached.append(target)
        self._flusher.start()
        return self

    def detach(self, target: Any) -> None:
        """Undo :meth:`attach` for ``target``."""
        from .io import _asyncio as _aio

        if _aio.is_async_target(target):
            target = _aio.sync_target(target, create=False)[0]
            if target is None:
                return
        target = getattr(target, "sync_engine", target)
        if isinstance(target, Engine):
            target = base_engine(target)
            self._core.engine_hooks.uninstall(target)
            self._core.commit_hooks.uninstall(target)
            self._core._engines.discard(target)
            self._core.explicit_engines.discard(target)
        else:
            self._core.session_hooks.uninstall(target)
        if target in self._attached:
            self._attached.remove(target)

    def close(self) -> None:
        """Detach everything and close the Redis connections."""
        for target in list(self._attached):
            self.detach(target)
        self._core.release_engines()
        self._flusher.stop()
        if self.config.stats_interval:
            self.flush_stats()
        self._core.reader.close()
        self._core.versions.close()
        self._core.store.breaker.stop()
        self._core.store.io.close()
        if self._core.store.io_selector is not None:
            self._async_router().forget()

    # invalidation --------------------------------------------------------------------------

    def invalidate_tables(self, *tables: str) -> bool:
        """Every cached result that read one of ``tables`` misses from now on, everywhere."""
        names = clean_names("tables", tables)
        return self._core.invalidate_written(names)

    def invalidate_tags(self, *tags: str) -> bool:
        names = clean_names("tags", tags)
        return self._core.versions.invalidate(self._core.keys.tag(t) for t in names)

    def clear(self) -> int:
        """Invalidate everything under the namespace at once, then reclaim its keys.

        Returns the number of keys deleted (-1 if Redis was unavailable).
        """
        core = self._core
        if not core.versions.invalidate([core.keys.all_key]):
            return -1
        from .storage._keys import escape_glob

        everything = escape_glob(core.keys.prefix) + "*"
        deleted = core.store.call(core.store.io.delete_matching, everything)
        if deleted is FAILED:
            return -1
        core.stats.drain()[1]()  # the shared stats went too: do not resurrect them on close
        return int(deleted)

    # entities (issue 3: the seed's cacheEntity / getCachedEntity) ---------------------------
    #
    # ``bind`` is the Engine or Session the entity belongs to; it may be omitted when exactly
    # one engine is attached.  ``session.get(cls, pk, options=[cached()])`` uses the same
    # entries, and commits write them through (see ``_entities``).

    def get_entity(self, cls: type[T], pk: Any, *, bind: Any = None) -> T | None:
        """A detached instance from the entity cache, or None on a miss (never queries)."""
        return self._core.entities.get_entity(cls, pk, self._entity_engine(cls, bind))  # type: ignore[no-any-return]

    def cache_entity(self, obj: Any, *, bind: Any = None) -> bool:
        """Store the committed state of ``obj`` (pending changes are never stored)."""
        return self._core.entities.cache_entity(obj, self._entity_engine(type(obj), bind))

    def forget_entity(self, cls: type, pk: Any, *, bind: Any = None) -> bool:
        """Remove one entity from the cache."""
        return self._core.entities.forget_entity(cls, pk, self._entity_engine(cls, bind))

    def _entity_engine(self, cls: type, bind: Any) -> Engine:
        if isinstance(bind, Session):
            bind = bind.get_bind(cls)
        bind = getattr(bind, "sync_engine", bind)
        engine = getattr(bind, "engine", None)
        if isinstance(engine, Engine):
            return engine
        if bind is None:
            engines = list(self._core._engines)
            if len(engines) == 1:
                return engines[0]
        raise ValueError(
            "pass bind= (the Engine or Session of the entity): "
            f"{len(self._core._engines)} engines are attached"
        )

    # statistics ----------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        return self._core.stats.snapshot()

    def reset_stats(self, *, shared: bool = False) -> None:
        """Zero this process's counters; with ``shared=True`` the shared ones as well."""
        self._core.stats.reset()
        if shared:
            self._core.store.run([Unlink(self._stats_key)])

    def ping(self) -> bool:
        """True when Redis answers (bypasses the circuit breaker)."""
        try:
            self._core.store.io.get_many([self._core.keys.all_key])
        except Exception:
            return False
        return True

    # the seed guide's generic API ------------------------------------------------------------

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
            self._core, key, value, ttl=ttl, tags=tags, compress=compress, region=region
        )

    def get(self, key: str, default: Any = None) -> Any:
        """The value, or ``default`` on a miss."""
        return _generic.get_value(self._core, key, default)

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
            self._core, key, creator, ttl=ttl, tags=tags, compress=compress, region=region
        )

    def delete(self, key: str) -> bool:
        return _generic.delete(self._core, key)

    def delete_pattern(self, pattern: str) -> int:
        return _generic.delete_pattern(self._core, pattern)

    def region(self, name: str) -> CacheRegion:
        """The TTL profile ``name`` as a dogpile.cache region backed by this cache's Redis."""
        region = self._regions.get(name)
        if region is None:
            region = self._regions[name] = make_dogpile_region(self._core, name)
        return region

    # operations: shared statistics, memoize, warm-up (issue 6) -----------------------------

    @property
    def _stats_key(self) -> str:
        return self._core.keys.prefix + "stats"

    def flush_stats(self) -> bool:
        """Add this process's counters since the last flush to the shared statistics now.

        ``attach()`` starts a thread doing this every ``stats_interval`` seconds; call it
        yourself before a short-lived process exits.  False if Redis was unavailable.
        """
        delta, commit = self._core.stats.drain()
        if not delta:
            return True
        key = self._stats_key
        if not self._stats_shared:
            return False
        operations: list[Operation] = [HashIncrement(key, f, n) for f, n in delta.items()]
        operations.append(Expire(key, STATS_TTL_MS))
        reply = self._core.store.run(operations)
        if reply is FAILED:
            return False
        commit()
        return True

    def shared_stats(self) -> CacheStats | None:
        """Statistics of every process of this namespace (after flushing this one's).

        Percentiles are bounds of a fixed histogram (see ``_stats``).  None if Redis is down.
        """
        self.flush_stats()
        if not self._stats_shared:
            return None
        reply = self._core.store.run([HashGetAll(self._stats_key)])
        return None if reply is FAILED else stats_from_hash(reply[0] or {})

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

            @cache.memoize(ttl=86400, tags=["ai"], region="ai_response")
            def complete(prompt: str, temperature: float = 0.7) -> str: ...

            complete.invalidate("hello")          # drop one entry
            cache.invalidate_tags("ai")           # drop them all

        One caller computes a missing value while the others wait (stampede lock).  Arguments
        must be plain values (numbers, strings, dates, lists/dicts of them) unless ``key`` is
        given: ``key(*args, **kwargs) -> str``.
        """
        self._flusher.start()
        return _memoize.memoize(self._core, ttl=ttl, tags=tags, region=region, key=key)

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
        for :meth:`from_env`, the seed's switch) and returns ``{}`` otherwise, so start-up code
        can call it unconditionally.
        """
        if startup and not self.config.warmup:
            return {}
        return self._warmup.run()

    def __repr__(self) -> str:
        return f"<QueryCache namespace={self.config.namespace!r}>"
