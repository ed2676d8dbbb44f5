"""The storage layer: cache entries in Redis, with no knowledge of SQLAlchemy.

It knows keys, version tokens and entries, never statements or sessions (an import-linter
contract in pyproject.toml keeps SQLAlchemy out).  Modules, in the order a lookup meets them:

- ``_keys``: key layout and the fingerprint of parameters;
- ``_store``: the fail-open front of the I/O layer (circuit breaker, error counting);
- ``_versions``: version tokens of tables, tags and the namespace: read, create, invalidate
  (with owed invalidations retried in the background);
- ``_reader``: read-through with stampede protection (one round trip per lookup, dogpile's
  lock over a Redis lock on a miss, near cache, refresh-ahead);
- ``_near``: the tracked near cache: Redis values in process, dropped when Redis's client
  tracking says they changed (a repeated hit sends nothing to Redis);
- ``_codec``: the authenticated entry envelope; ``_rows``: raw DBAPI rows column by column;
  ``_drivertypes``: database drivers' own value classes in entries;
- ``_capture``: change capture's liveness token and captured tables (readers' gate);
- ``_stats``: counters, latency percentiles, shared statistics; ``_groups``: the per-table and
  per-region tallies, and the reasons a statement is not cached.

:class:`Storage` bundles one cache's instances of them; the facade builds it and hands it (or
the parts they use) to the features and the SQLAlchemy wiring.
"""

from __future__ import annotations

from collections.abc import Callable

from .._config import CacheConfig
from ..io._asyncio import Concurrency, LoopRouter
from ..io._protocol import RedisIO
from ..io._sync import SyncIO
from ..io._tracking import endpoints
from ._capture import CaptureGate
from ._codec import EntryCodec
from ._keys import KeyBuilder
from ._near import NearValues
from ._reader import Reader
from ._stats import StatsRecorder
from ._store import Store
from ._versions import Versions

__all__ = ["Storage"]


class Storage:
    """One cache's keys, store, version tokens, codec, reader and statistics."""

    def __init__(
        self,
        config: CacheConfig,
        io: RedisIO,
        concurrency: Callable[[], Concurrency] | None = None,
    ) -> None:
        self.config = config
        self.keys = KeyBuilder(config.namespace)
        self.stats = StatsRecorder()
        self.store = Store(io, config, self.stats)
        self.versions = Versions(
            self.store,
            token_ttl=2 * config.longest_ttl,
            commit_ttl=config.lock_timeout,
            retry_cap=config.breaker_cooldown,
            entry_bound=self.keys.is_value,
        )
        self.near: NearValues | None = None
        if config.near_cache_tracking and isinstance(io, SyncIO):
            client = io
            breaker = self.store.breaker
            self.near = NearValues(
                config, lambda: endpoints(config, client.client), lambda: not breaker.is_open
            )
            self.store.near = self.near
        lost: list[Callable[[], None]] = []
        if config.invalidate_after_outage:
            all_key = [self.keys.all_key]
            lost.append(lambda: self.versions.owe(all_key))
        if self.near is not None:
            lost.append(self.near.reset)
        if lost:

            def connection_lost() -> None:
                for action in lost:
                    action()

            self.store.on_connection_lost = connection_lost
        self.codec = EntryCodec(
            config.secret, config.compress_threshold, config.max_entry_bytes, config.compression
        )
        #: what readers know of change capture (the listener's liveness, captured tables)
        self.capture = CaptureGate(self.keys)
        self.reader = Reader(
            self.store, self.versions, self.codec, config.near_cache_size, self.capture
        )
        self._concurrency = concurrency

    def async_router(self) -> LoopRouter:
        """The store's asyncio router (Redis awaited on the running loop from SQLAlchemy's
        greenlet), installed on first use."""
        store = self.store
        selector = store.io_selector
        if isinstance(selector, LoopRouter):
            return selector
        if selector is not None:
            raise RuntimeError("the store already has another io selector")
        if self._concurrency is None:
            raise RuntimeError("this storage was built without asyncio support")
        router = LoopRouter(self.config, store.io, self._concurrency())
        store.io_selector = router
        return router

    def close(self) -> None:
        """Stop the background work (refresh, owed invalidations, breaker probe), close the
        connections."""
        self.reader.close()
        self.versions.close()
        if self.near is not None:
            self.near.close()
        self.store.breaker.stop()
        self.store.io.close()
        if isinstance(self.store.io_selector, LoopRouter):
            self.store.io_selector.forget()
