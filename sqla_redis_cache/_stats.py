"""Counters and latencies of one cache, kept in process.

Counting is a handful of integer increments per lookup: cheap enough for the hit path.  Latency
samples go into a bounded ring so percentiles stay meaningful for a long-lived process without
growing memory.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


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

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """Hits over lookups, 0..1."""
        return self.hits / self.lookups if self.lookups else 0.0


class StatsRecorder:
    __slots__ = (
        "_lock",
        "_samples",
        "bypasses",
        "corrupt",
        "errors",
        "hits",
        "invalidations",
        "misses",
        "uncacheable",
    )

    def __init__(self, samples: int = 2048) -> None:
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=samples)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.hits = self.misses = self.errors = self.bypasses = 0
            self.uncacheable = self.corrupt = self.invalidations = 0
            self._samples.clear()

    def hit(self, seconds: float) -> None:
        self.hits += 1
        self._samples.append(seconds)

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
        )
