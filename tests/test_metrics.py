"""Prometheus collector and OpenTelemetry instrumentation report the real counters."""

from __future__ import annotations

import threading
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select, update

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.otel import instrument
from sqla_redis_cache.prometheus import CacheCollector

from . import _services
from .conftest import Database
from .models import User


def traffic(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User).options(cached())
    for _ in range(3):
        with db.Session() as s:
            s.scalars(stmt).all()
    with db.Session() as s:
        s.execute(update(User).where(User.id == 1).values(name="x"))
        s.commit()


def stampede(cache: QueryCache) -> None:
    @cache.memoize()
    def slow() -> int:
        time.sleep(0.2)
        return 1

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_prometheus_collector_process_and_shared(pg: Database, cache: QueryCache) -> None:
    traffic(pg, cache)
    ns = cache.config.namespace
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    registry.register(CacheCollector(cache, shared=True))

    def value(name: str, scope: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"namespace": ns, "scope": scope, **labels})

    assert value("sqla_redis_cache_hits_total", "process") == 2
    assert value("sqla_redis_cache_misses_total", "process") == 1
    assert value("sqla_redis_cache_invalidations_total", "process") == 1
    assert value("sqla_redis_cache_errors_total", "process") == 0
    assert value("sqla_redis_cache_hit_ratio", "process") == 2 / 3
    assert value("sqla_redis_cache_hit_latency_ms", "process", quantile="0.99")
    assert value("sqla_redis_cache_hits_total", "shared") == 2  # flushed by the scrape itself
    assert value("sqla_redis_cache_capture_listener_alive", "shared") is None  # none captured
    text = generate_latest(registry).decode()
    assert "# TYPE sqla_redis_cache_lock_waits_total counter" in text
    for scope in ("process", "shared"):  # per table and region, and uncacheable by reason
        assert value("sqla_redis_cache_table_hits_total", scope, table="app_user") == 2
        assert value("sqla_redis_cache_table_misses_total", scope, table="app_user") == 1
        assert value("sqla_redis_cache_table_invalidations_total", scope, table="app_user") == 1
        assert value("sqla_redis_cache_table_bytes_total", scope, table="app_user")
        assert value("sqla_redis_cache_region_hits_total", scope, region="db_query") == 2
    with pg.Session() as s:
        s.scalars(select(User).with_for_update().options(cached())).all()
    assert value("sqla_redis_cache_uncacheable_by_reason_total", "process", reason="locking_read")


def test_prometheus_collector_counts_lock_waits_and_errors(patient_cache: QueryCache) -> None:
    cache = patient_cache
    stampede(cache)
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    ns = cache.config.namespace
    labels = {"namespace": ns, "scope": "process"}
    assert registry.get_sample_value("sqla_redis_cache_lock_waits_total", labels) == 1

    down = QueryCache.from_url(f"redis://127.0.0.1:{_services.free_port()}/0", namespace=ns)
    down.get("k")
    registry = CollectorRegistry()
    registry.register(CacheCollector(down, shared=True))  # shared view unavailable: no samples
    registry.register(CacheCollector(down))
    assert registry.get_sample_value("sqla_redis_cache_errors_total", labels) >= 1  # type: ignore[operator]
    assert (
        registry.get_sample_value("sqla_redis_cache_errors_total", {**labels, "scope": "shared"})
        is None
    )
    down.close()


def test_opentelemetry_metrics_and_spans(pg: Database, patient_cache: QueryCache) -> None:
    cache = patient_cache
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentation = instrument(
        cache,
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=tracer_provider,
    )
    traffic(pg, cache)
    stampede(cache)
    data = reader.get_metrics_data()
    points = {
        metric.name: [p.value for p in metric.data.data_points]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert points["sqla_redis_cache.hits"] == [3]  # 2 query hits + the stampede's waiter
    assert points["sqla_redis_cache.misses"] == [2]
    assert points["sqla_redis_cache.invalidations"] == [1]
    assert points["sqla_redis_cache.lock_waits"] == [1]
    assert points["sqla_redis_cache.errors"] == [0]
    assert len(points["sqla_redis_cache.hit_latency"]) == 3
    attributes = {
        metric.name: [dict(p.attributes or {}) for p in metric.data.data_points]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert points["sqla_redis_cache.table.hits"] == [2]
    assert attributes["sqla_redis_cache.table.hits"][0]["db.collection.name"] == "app_user"
    assert points["sqla_redis_cache.table.invalidations"] == [1]
    assert points["sqla_redis_cache.region.misses"] == [1]
    assert attributes["sqla_redis_cache.region.misses"][0]["cache.region"] == "db_query"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    invalidate = spans["sqla_redis_cache.invalidate"]
    assert invalidate.attributes["cache.keys"] == 1
    assert invalidate.attributes["cache.namespace"] == cache.config.namespace
    assert invalidate.end_time >= invalidate.start_time  # type: ignore[operator]
    wait = spans["sqla_redis_cache.lock_wait"]
    assert wait.end_time - wait.start_time >= 0.1e9  # type: ignore[operator]
    instrumentation.uninstrument()
    cache.invalidate_tables("x")
    assert len(exporter.get_finished_spans()) == 2


def test_failed_invalidation_span_is_an_error() -> None:
    cache = QueryCache.from_url(f"redis://127.0.0.1:{_services.free_port()}/0")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument(cache, tracer_provider=provider)
    assert cache.invalidate_tags("t") is False
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    cache.close()
