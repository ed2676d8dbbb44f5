"""Prometheus metrics for a cache (optional extra ``prometheus``: prometheus-client).

A custom collector reads the cache's counters at scrape time, so nothing is added to any query
path::

    from prometheus_client import REGISTRY
    from sqla_redis_cache.prometheus import CacheCollector

    REGISTRY.register(CacheCollector(cache))               # this process
    REGISTRY.register(CacheCollector(cache, shared=True))  # every process of the namespace

``shared=True`` reads the namespace's shared statistics from Redis (one round trip per scrape);
expose it from one place only, or the sums count every process once per scraper.

Per-table and per-region figures are counters with a ``table`` / ``region`` label
(``sqla_redis_cache_table_hits_total{table="users"}``, ``..._region_misses_total{region=...}``,
``..._table_bytes_total`` for the bytes stored), and the uncacheable executions by reason
``sqla_redis_cache_uncacheable_by_reason_total{reason="locking_read"}``.  Each table read adds
one series per counter: the number of tables bounds them.

Under change capture, the shared collector also exports
``sqla_redis_cache_capture_listener_alive`` (1 while a listener of the namespace keeps its
liveness key, else 0: reads of the captured tables then bypass the cache) and
``sqla_redis_cache_capture_tables`` (how many tables are captured); alert on the first being 0.
They are read along with the shared statistics, and absent when no table is captured.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ._cache import QueryCache, internals
from .features._admin import capture_state
from .storage._capture import table_names
from .storage._stats import COUNTERS, GROUP_COUNTERS

_HELP = {
    "hits": "Cache lookups answered from Redis",
    "misses": "Cache lookups that went to the database or creator",
    "errors": "Redis errors (each made a lookup or write fall back)",
    "bypasses": "Reads that skipped the cache (own writes, snapshot isolation, Redis down)",
    "uncacheable": "Statements or values that could not be cached",
    "corrupt": "Entries rejected as corrupt or tampered",
    "invalidations": "Table and tag version tokens replaced",
    "lock_waits": "Lookups that waited for another caller building the same entry",
}
_GROUP_HELP = {
    "hits": "Cache hits of reads of the {}",
    "misses": "Cache misses of reads of the {}",
    "bypasses": "Reads of the {} that skipped the cache",
    "invalidations": "Version token replacements of the {}",
    "bytes": "Bytes of the entries stored for reads of the {}",
}


class CacheCollector(Collector):
    def __init__(
        self, cache: QueryCache, *, shared: bool = False, prefix: str = "sqla_redis_cache"
    ) -> None:
        self.cache = cache
        self.shared = shared
        self.prefix = prefix

    def collect(self) -> Iterator[Any]:
        stats = self.cache.shared_stats() if self.shared else self.cache.stats()
        if stats is None:
            return
        labels = ["namespace", "scope"]
        values = [self.cache.config.namespace, "shared" if self.shared else "process"]
        for name in COUNTERS:
            family = CounterMetricFamily(f"{self.prefix}_{name}", _HELP[name], labels=labels)
            family.add_metric(values, getattr(stats, name))
            yield family
        rate = GaugeMetricFamily(f"{self.prefix}_hit_ratio", "Hits over lookups", labels=labels)
        rate.add_metric(values, stats.hit_rate)
        yield rate
        latency = GaugeMetricFamily(
            f"{self.prefix}_hit_latency_ms",
            "Cache hit latency percentiles, milliseconds",
            labels=[*labels, "quantile"],
        )
        for q, v in (("0.5", stats.latency_p50_ms), ("0.95", stats.latency_p95_ms)):
            latency.add_metric([*values, q], v)
        latency.add_metric([*values, "0.99"], stats.latency_p99_ms)
        yield latency
        reasons = CounterMetricFamily(
            f"{self.prefix}_uncacheable_by_reason",
            "Executions that could not be cached, by reason",
            labels=[*labels, "reason"],
        )
        for reason, count in sorted(stats.uncacheable_by_reason.items()):
            reasons.add_metric([*values, reason], count)
        yield reasons
        for kind, groups in (("table", stats.by_table), ("region", stats.by_region)):
            for name in GROUP_COUNTERS:
                if kind == "region" and name == "invalidations":
                    continue  # tokens belong to tables and tags, not regions
                family = CounterMetricFamily(
                    f"{self.prefix}_{kind}_{name}",
                    _GROUP_HELP[name].format(kind),
                    labels=[*labels, kind],
                )
                for group, figures in groups.items():
                    family.add_metric([*values, group], getattr(figures, name))
                yield family
        if self.shared:
            yield from self._capture(labels, values)

    def _capture(self, labels: list[str], values: list[str]) -> Iterator[Any]:
        state = capture_state(internals(self.cache).storage)
        if state is None or not state["tables"]:
            return
        alive = GaugeMetricFamily(
            f"{self.prefix}_capture_listener_alive",
            "1 while a change-capture listener of the namespace is alive; 0: reads of captured "
            "tables bypass the cache",
            labels=labels,
        )
        alive.add_metric(values, 1 if state["listener_alive"] else 0)
        yield alive
        tables = GaugeMetricFamily(
            f"{self.prefix}_capture_tables", "Tables under change capture", labels=labels
        )
        tables.add_metric(values, len(table_names(state["tables"])))
        yield tables
