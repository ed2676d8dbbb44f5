"""Core: the internals of one cache, shared by the wiring modules (not public API).

One object holds what every path needs (configuration, keys, store, version tokens, codec,
reader, statistics, entity cache) and installs the engine-level listeners on each engine met,
once.  The public facade, :class:`~._cache.QueryCache`, owns one; the listeners in
``_session``, ``_execution``, ``_core_commit`` and ``_entities`` reach everything through it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .._config import CacheConfig
from ..io._clients import connect_sync
from ..io._ops import Operation
from ..io._protocol import RedisIO
from ..storage._codec import EntryCodec
from ..storage._keys import KeyBuilder
from ..storage._reader import Reader
from ..storage._stats import StatsRecorder
from ..storage._store import Store
from ..storage._versions import Versions
from ._commit import CoreCommitHooks
from ._entities import Entities
from ._reads import ALL_TABLES, EngineHooks
from ._session import SessionHooks
from ._transaction import ConnectionKeys
from ._write_rules import WriteRules

#: how long the shared statistics of an idle namespace are kept
STATS_TTL_MS = 7 * 24 * 3600 * 1000


class Core:
    """The internals shared by the wiring modules (not public API)."""

    def __init__(self, config: CacheConfig, io: RedisIO | None = None) -> None:
        self.config = config
        self.option_key = f"sqla_redis_cache:{config.namespace}:{id(self):x}"
        self.conn_keys = ConnectionKeys.for_cache(f"{config.namespace}:{id(self):x}")
        self.keys = KeyBuilder(config.namespace)
        self.stats = StatsRecorder()
        if io is None:
            io = connect_sync(config)
        self.store = Store(io, config, self.stats)
        self.versions = Versions(
            self.store,
            token_ttl=2 * config.longest_ttl,
            commit_ttl=config.lock_timeout,
            retry_cap=config.breaker_cooldown,
        )
        if config.invalidate_after_outage:
            all_key = [self.keys.all_key]
            self.store.on_connection_lost = lambda: self.versions.owe(all_key)
        self.codec = EntryCodec(
            config.secret, config.compress_threshold, config.max_entry_bytes, config.compression
        )
        self.reader = Reader(self.store, self.versions, self.codec, config.near_cache_size)
        self.engine_hooks = EngineHooks(self)
        self.session_hooks = SessionHooks(self)
        self.commit_hooks = CoreCommitHooks(self)
        self.write_rules = WriteRules(config.invalidates)
        self.entities = Entities(self)
        self._engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        #: engines attached by themselves: ``cached()`` is read from the statements they run
        self.explicit_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._lock = threading.Lock()

    def ensure_engine(self, engine: Engine) -> bool:
        """Install engine hooks if missing; True if they were just installed."""
        engine = base_engine(engine)
        if engine in self._engines:
            return False
        with self._lock:
            if engine in self._engines:
                return False
            self.engine_hooks.install(engine)
            self.commit_hooks.install(engine)
            self.entities.write_through.install(engine)  # its commit runs after EngineHooks'
            self._engines.add(engine)
            return True

    def release_engines(self) -> None:
        with self._lock:
            for engine in list(self._engines):
                self.engine_hooks.uninstall(engine)
                self.commit_hooks.uninstall(engine)
                self.entities.write_through.uninstall(engine)
            self.commit_hooks.release_pools()
            self._engines = weakref.WeakSet()
            self.explicit_engines = weakref.WeakSet()

    def invalidate_written(
        self,
        tables: Iterable[str],
        extra: Callable[[Mapping[str, bytes]], list[Operation]] | None = None,
        *,
        pending: str | None = None,
        committed: str | None = None,
        expected: Mapping[str, bytes] | None = None,
    ) -> bool:
        """New tokens for written tables (and what rules add); ``extra`` joins the pipeline.

        ``expected``: token keys swapped only-if-unchanged (see ``Versions.invalidate``).

        ``pending`` (the id of a commit about to happen whose end cannot be observed): pending
        tokens, under which nothing is cached, until ``committed`` names that id after the
        commit or ``lock_timeout`` passes (see ``_core_commit``).
        """
        tables = set(tables)
        if ALL_TABLES in tables:
            return self.versions.invalidate(
                [self.keys.all_key], pending=pending, committed=committed
            )
        tables, tags = self.write_rules.expand(tables)
        keys = [self.keys.table(t) for t in tables]
        keys.extend(self.keys.tag(t) for t in tags)
        return self.versions.invalidate(
            keys, extra, pending=pending, committed=committed, expected=expected
        )


def base_engine(engine: Engine) -> Engine:
    """The engine behind ``engine.execution_options(...)`` copies, which share its events."""
    while (proxied := getattr(engine, "_proxied", None)) is not None:
        engine = proxied
    return engine


def engines_of_binds(*binds: Any) -> list[Engine]:
    """The (sync) engines behind session binds: engines, connections, async engines."""
    engines = []
    for bind in binds:
        engine = getattr(getattr(bind, "sync_engine", bind), "engine", None)
        if isinstance(engine, Engine):
            engines.append(engine)
    return engines


def engines_of(target: Any) -> list[Engine]:
    if isinstance(target, sessionmaker):
        return engines_of_binds(target.kw.get("bind"), *(target.kw.get("binds") or {}).values())
    if isinstance(target, Session):
        return engines_of_binds(target.bind)
    return []
