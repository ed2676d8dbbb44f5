"""Counters and latencies of one cache: kept in process, aggregated across processes in Redis.

Counting is a handful of integer increments per lookup: cheap enough for the hit path.  Latency
samples go into a bounded ring so percentiles stay meaningful for a long-lived process without
growing memory.

Shared statistics never cost a hit anything: a :class:`StatsFlusher` thread wakes every
``stats_interval`` seconds, takes the *difference* since its last flush (:meth:`StatsRecorder.
drain`) and adds it to one Redis hash, ``<ns>:stats``, in one pipeline of ``HINCRBY`` commands
on that single key (so it is Redis Cluster safe).  Latencies travel as a fixed log-scale
histogram (one field per bucket), which merges across processes by plain addition; shared
percentiles are therefore bucket upper bounds, local ones exact samples.  A failed flush keeps
the difference for the next one; a process that dies loses at most one interval.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: counters that are summed across processes (field names in the shared hash)
COUNTERS = (
    "hits",
    "misses",
    "errors",
    "bypasses",
    "uncacheable",
    "corrupt",
    "invalidations",
    "lock_waits",
)
#: upper bounds of the shared latency histogram, milliseconds (the last bucket is open)
BUCKETS_MS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0)
_OPEN_BUCKET_MS = 5000.0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's counters."""

    hits: int
    misses: int
    errors: int
    #: reads that skipped the cache: own uncommitted writes, snapshot isolation, Redis down
    bypasses: int
    #: statements or values that could not be cached (unkeyable parameters, text(), ...)
    uncacheable: int
    #: entries rejected as corrupt, truncated or tampered
    corrupt: int
    #: table/tag invalidations sent
    invalidations: int
    #: hit latency percentiles, milliseconds (0.0 when there were no hits)
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    #: lookups that waited for another caller building the same entry (stampede lock)
    lock_waits: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """Hits over lookups, 0..1."""
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        """Every counter, the percentiles, ``lookups`` and ``hit_rate``, for JSON and metrics."""
        out: dict[str, float] = {name: getattr(self, name) for name in COUNTERS}
        out.update(
            lookups=self.lookups,
            hit_rate=round(self.hit_rate, 6),
            latency_p50_ms=round(self.latency_p50_ms, 4),
            latency_p95_ms=round(self.latency_p95_ms, 4),
            latency_p99_ms=round(self.latency_p99_ms, 4),
        )
        return out


class StatsRecorder:
    __slots__ = (
        "_drained",
        "_drained_samples",
        "_lock",
        "_samples",
        "bypasses",
        "corrupt",
        "errors",
        "hits",
        "invalidations",
        "lock_waits",
        "misses",
        "observer",
        "uncacheable",
    )

    def __init__(self, samples: int = 2048) -> None:
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=samples)
        #: optional telemetry hooks (``otel``); called off the hit path only
        self.observer: Observer | None = None
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.hits = self.misses = self.errors = self.bypasses = 0
            self.uncacheable = self.corrupt = self.invalidations = self.lock_waits = 0
            self._samples.clear()
            self._drained: dict[str, int] = dict.fromkeys(COUNTERS, 0)
            self._drained_samples = 0

    def hit(self, seconds: float) -> None:
        self.hits += 1
        self._samples.append(seconds)

    def lock_waited(self, seconds: float) -> None:
        self.lock_waits += 1
        if self.observer is not None:
            self.observer.lock_waited(seconds)

    def invalidated(self, keys: int, ok: bool, seconds: float) -> None:
        if ok:
            self.invalidations += keys
        if self.observer is not None:
            self.observer.invalidated(keys, ok, seconds)

    def snapshot(self) -> CacheStats:
        with self._lock:
            samples = sorted(self._samples)

        def pct(p: float) -> float:
            if not samples:
                return 0.0
            return samples[min(len(samples) - 1, int(p * len(samples)))] * 1000.0

        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            errors=self.errors,
            bypasses=self.bypasses,
            uncacheable=self.uncacheable,
            corrupt=self.corrupt,
            invalidations=self.invalidations,
            latency_p50_ms=pct(0.50),
            latency_p95_ms=pct(0.95),
            latency_p99_ms=pct(0.99),
            lock_waits=self.lock_waits,
        )

    def drain(self) -> tuple[dict[str, int], Callable[[], None]]:
        """Increments since the last committed drain, and a function that commits them.

        Latency buckets appear as ``lat:<index>`` fields.  Nothing is lost if the commit
        function is never called (a failed flush): the next drain includes the same increments.
        """
        with self._lock:
            current = {name: getattr(self, name) for name in COUNTERS}
            base = self._drained
            delta = {name: current[name] - base[name] for name in COUNTERS}
            fresh = max(0, min(delta["hits"], len(self._samples)))
            samples = list(self._samples)[len(self._samples) - fresh :] if fresh else []
        for seconds in samples:
            field = f"lat:{bisect.bisect_left(BUCKETS_MS, seconds * 1000.0)}"
            delta[field] = delta.get(field, 0) + 1

        def commit() -> None:
            with self._lock:
                if self._drained is base:
                    self._drained = current

        return {k: v for k, v in delta.items() if v}, commit


class Observer:
    """Telemetry hooks for the slow paths (invalidations, stampede waits); see ``otel``."""

    def invalidated(self, keys: int, ok: bool, seconds: float) -> None:  # pragma: no cover
        pass

    def lock_waited(self, seconds: float) -> None:  # pragma: no cover
        pass


def stats_from_hash(fields: Mapping[Any, Any]) -> CacheStats:
    """A :class:`CacheStats` from the shared hash (percentiles are histogram bucket bounds)."""
    values = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in fields.items()}
    counts = [values.get(f"lat:{i}", 0) for i in range(len(BUCKETS_MS) + 1)]
    total = sum(counts)

    def pct(p: float) -> float:
        if not total:
            return 0.0
        rank, seen = p * total, 0
        for index, count in enumerate(counts):
            seen += count
            if seen >= rank and count:
                return BUCKETS_MS[index] if index < len(BUCKETS_MS) else _OPEN_BUCKET_MS
        return _OPEN_BUCKET_MS

    return CacheStats(
        **{name: values.get(name, 0) for name in COUNTERS},
        latency_p50_ms=pct(0.50),
        latency_p95_ms=pct(0.95),
        latency_p99_ms=pct(0.99),
    )


class StatsFlusher:
    """Adds a recorder's increments to the shared hash every ``interval`` seconds."""

    def __init__(self, flush: Callable[[], bool], interval: float) -> None:
        self._flush = flush
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def start(self) -> None:
        with self._guard:
            if self._thread is None and self.interval > 0:
                self._thread = threading.Thread(
                    target=self._run, name="sqla-redis-cache-stats", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._flush()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0)
