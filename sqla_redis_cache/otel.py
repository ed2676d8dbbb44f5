"""OpenTelemetry metrics and spans for a cache (optional: ``opentelemetry-api``).

::

    from sqla_redis_cache.otel import instrument

    instrumentation = instrument(cache)      # global meter and tracer providers by default

Metrics are observable counters (``sqla_redis_cache.hits``, ``.misses``, ``.errors``,
``.invalidations``, ``.lock_waits``, ...) and a gauge of hit latency percentiles, all read from
the cache's counters when the SDK collects: the hit path does no extra work.  Per-table and
per-region figures are the observable counters ``sqla_redis_cache.table.hits`` (``.misses``,
``.bypasses``, ``.invalidations``, ``.bytes``) with the attribute ``db.collection.name`` (the
table), ``sqla_redis_cache.region.*`` with ``cache.region``, and
``sqla_redis_cache.uncacheable_by_reason`` with ``cache.reason``.  Spans are recorded
for the slow events only, after they happened and with their real start and end times:
``sqla_redis_cache.invalidate`` (a commit or ``invalidate_*`` replacing tokens; status ERROR
when Redis failed) and ``sqla_redis_cache.lock_wait`` (a lookup that waited for another caller
to build its entry).  Query spans themselves come from SQLAlchemy's own instrumentation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from ._cache import QueryCache, internals
from .storage._stats import COUNTERS, GROUP_COUNTERS, Observer

SCOPE = "sqla_redis_cache"


class _SpanObserver(Observer):
    def __init__(self, tracer: Any, attributes: dict[str, str]) -> None:
        self.tracer = tracer
        self.attributes = attributes

    def _span(self, name: str, seconds: float, **attributes: Any) -> Any:
        end = time.time_ns()
        span = self.tracer.start_span(
            name, start_time=end - int(seconds * 1e9), attributes={**self.attributes, **attributes}
        )
        return span, end

    def invalidated(self, keys: int, ok: bool, seconds: float) -> None:
        span, end = self._span(f"{SCOPE}.invalidate", seconds, **{"cache.keys": keys})
        if not ok:
            span.set_status(trace.Status(trace.StatusCode.ERROR, "Redis unavailable"))
        span.end(end_time=end)

    def lock_waited(self, seconds: float) -> None:
        span, end = self._span(f"{SCOPE}.lock_wait", seconds)
        span.end(end_time=end)


def _group_counter(
    cache: QueryCache, kind: str, name: str, attribute: str, attributes: dict[str, str]
) -> Any:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        groups = cache.stats().breakdown(kind)
        for group, figures in groups.items():
            yield Observation(getattr(figures, name), {**attributes, attribute: group})

    return observe


class Instrumentation:
    """What :func:`instrument` installed; :meth:`uninstrument` stops the spans."""

    def __init__(self, cache: QueryCache, observer: _SpanObserver) -> None:
        self.cache = cache
        self.observer = observer

    def uninstrument(self) -> None:
        stats = internals(self.cache).storage.stats
        if stats.observer is self.observer:
            stats.observer = None


def instrument(
    cache: QueryCache,
    *,
    meter_provider: metrics.MeterProvider | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> Instrumentation:
    """Report ``cache``'s metrics and slow-path spans through OpenTelemetry."""
    attributes = {"cache.namespace": cache.config.namespace}
    meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
    recorder = internals(cache).storage.stats

    def counter(name: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(getattr(recorder, name), attributes)

        return observe

    for name in COUNTERS:
        meter.create_observable_counter(f"{SCOPE}.{name}", callbacks=[counter(name)], unit="1")

    def latency(options: CallbackOptions) -> Iterable[Observation]:
        stats = cache.stats()
        for q, value in (
            ("0.5", stats.latency_p50_ms),
            ("0.95", stats.latency_p95_ms),
            ("0.99", stats.latency_p99_ms),
        ):
            yield Observation(value, {**attributes, "quantile": q})

    meter.create_observable_gauge(f"{SCOPE}.hit_latency", callbacks=[latency], unit="ms")

    def by_reason(options: CallbackOptions) -> Iterable[Observation]:
        for reason, count in sorted(cache.stats().uncacheable_by_reason.items()):
            yield Observation(count, {**attributes, "cache.reason": reason})

    meter.create_observable_counter(
        f"{SCOPE}.uncacheable_by_reason", callbacks=[by_reason], unit="1"
    )
    for kind, attribute in (("table", "db.collection.name"), ("region", "cache.region")):
        for name in GROUP_COUNTERS:
            if kind == "region" and name == "invalidations":
                continue
            meter.create_observable_counter(
                f"{SCOPE}.{kind}.{name}",
                callbacks=[_group_counter(cache, kind, name, attribute, attributes)],
                unit="By" if name == "bytes" else "1",
            )
    tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
    observer = _SpanObserver(tracer, attributes)
    recorder.observer = observer
    return Instrumentation(cache, observer)
