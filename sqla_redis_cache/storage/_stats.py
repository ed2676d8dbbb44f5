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

Per-table and per-region figures cost a hit one attribute increment: the read path keeps one
:class:`Tally` per *group* of reads (the tables an entry depends on and its region), found in
the same memoised dictionary lookup that gives it the entry's dependency keys, and the reader
adds to that tally where it counts the global hit, miss or bypass.  Only the flusher spreads a
group's increments over its tables and its region (``table:<counter>:<name>`` and
``region:<counter>:<name>`` fields of the same hash), so the cost of a hit does not depend on
how many tables it read.  Invalidations are counted per table on the commit path.

Every execution the cache sees is counted once: a hit, a miss, a bypass or uncacheable.  Why a
statement or value could not be cached is counted per reason (:data:`REASONS`, also
``uncacheable:<reason>`` fields of the hash), whether it is found when the key is built or
when the entry is stored (then the lookup is not also a miss), and logged once per statement at
DEBUG on the ``sqla_redis_cache`` logger.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._groups import GROUP_COUNTERS, REASONS, GroupStats, Tally, groups_from_fields

__all__ = [
    "BUCKETS_MS",
    "COUNTERS",
    "GROUP_COUNTERS",
    "REASONS",
    "CacheStats",
    "GroupStats",
    "Observer",
    "StatsFlusher",
    "StatsRecorder",
    "Tally",
    "stats_from_hash",
]

log = logging.getLogger("sqla_redis_cache")

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

#: how many statements' "not cached" lines are remembered so each is logged once
_LOGGED_LIMIT = 4096


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
    #: ``uncacheable`` by reason (a code of :data:`REASONS`)
    uncacheable_by_reason: Mapping[str, int] = field(default_factory=dict)
    #: figures per table read (a read of two tables counts for both) and per region
    by_table: Mapping[str, GroupStats] = field(default_factory=dict)
    by_region: Mapping[str, GroupStats] = field(default_factory=dict)
    #: the tracked near cache of this process (empty without tracking): ``hits`` served from
    #: memory with no Redis command, ``keys`` and ``bytes`` held, keys ``invalidated`` by
    #: Redis's messages, ``resets`` (tracking lost, flushes), ``live`` (1 while memory is used)
    near: Mapping[str, int] = field(default_factory=dict)

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """Hits over lookups, 0..1."""
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every counter, the percentiles, ``lookups``, ``hit_rate`` and
        ``uncacheable_by_reason``, for JSON and metrics (the per-table and per-region figures
        are in :meth:`breakdown`)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in COUNTERS}
        out.update(
            lookups=self.lookups,
            hit_rate=round(self.hit_rate, 6),
            latency_p50_ms=round(self.latency_p50_ms, 4),
            latency_p95_ms=round(self.latency_p95_ms, 4),
            latency_p99_ms=round(self.latency_p99_ms, 4),
            uncacheable_by_reason=dict(self.uncacheable_by_reason),
            near=dict(self.near),
        )
        return out

    def breakdown(self, by: str) -> dict[str, GroupStats]:
        """``by_table`` or ``by_region`` (``by``: "table" or "region"), as a dict."""
        if by not in ("table", "region"):
            raise ValueError(f"by must be 'table' or 'region', not {by!r}")
        return dict(self.by_table if by == "table" else self.by_region)


class StatsRecorder:
    __slots__ = (
        "_drained",
        "_drained_invalidated",
        "_drained_reasons",
        "_drained_samples",
        "_lock",
        "_logged",
        "_samples",
        "by_group",
        "bypasses",
        "corrupt",
        "errors",
        "hits",
        "invalidations",
        "lock_waits",
        "misses",
        "observer",
        "reasons",
        "table_invalidations",
        "uncacheable",
    )

    def __init__(self, samples: int = 2048) -> None:
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=samples)
        #: optional telemetry hooks (``otel``); called off the hit path only
        self.observer: Observer | None = None
        #: (tables, region) -> the tally of that group of reads
        self.by_group: dict[Hashable, Tally] = {}
        self._logged: set[str] = set()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.hits = self.misses = self.errors = self.bypasses = 0
            self.uncacheable = self.corrupt = self.invalidations = self.lock_waits = 0
            self._samples.clear()
            self._drained: dict[str, int] = dict.fromkeys(COUNTERS, 0)
            self._drained_samples = 0
            self.reasons: dict[str, int] = {}
            self._drained_reasons: dict[str, int] = {}
            self.table_invalidations: dict[str, int] = {}
            self._drained_invalidated: dict[str, int] = {}
            for tally in self.by_group.values():
                tally.zero()

    def tally(self, tables: frozenset[str], region: str) -> Tally:
        """The tally of reads of ``tables`` in ``region`` (created on first use)."""
        key = (tables, region)
        found = self.by_group.get(key)
        if found is None:
            with self._lock:
                found = self.by_group.setdefault(key, Tally(tables, region))
        return found

    def refused(self, reason: str, label: str | None = None) -> None:
        """Count an execution that could not be cached, by reason; log it once per ``label``
        (the statement) at DEBUG."""
        self.uncacheable += 1
        reasons = self.reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        if label is not None and label not in self._logged and log.isEnabledFor(logging.DEBUG):
            if len(self._logged) >= _LOGGED_LIMIT:
                self._logged.clear()
            self._logged.add(label)
            log.debug("not cached (%s): %s", REASONS.get(reason, reason), label)

    def tables_invalidated(self, tables: frozenset[str] | set[str]) -> None:
        counts = self.table_invalidations
        for table in tables:
            counts[table] = counts.get(table, 0) + 1

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
        groups = self._group_fields()

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
            uncacheable_by_reason=dict(self.reasons),
            by_table=groups_from_fields(groups[0], "table"),
            by_region=groups_from_fields(groups[0], "region"),
        )

    def _group_fields(self, since: bool = False) -> tuple[dict[str, int], list[Any]]:
        """Per-table and per-region fields (as in the shared hash) of every tally and of the
        table invalidations; with ``since``, only what was not flushed yet.  Also the tallies'
        current values, for the commit of a drain."""
        fields: dict[str, int] = {}
        marks: list[Any] = []
        for tally in list(self.by_group.values()):
            current = tally.current()
            base = tally.flushed if since else (0, 0, 0, 0)
            marks.append((tally, base, current))
            deltas = [c - b for c, b in zip(current, base, strict=True)]
            if not any(deltas):
                continue
            for name, delta in zip(("hits", "misses", "bypasses", "bytes"), deltas, strict=True):
                if not delta:
                    continue
                region = f"region:{name}:{tally.region}"
                fields[region] = fields.get(region, 0) + delta
                for table in tally.tables:
                    field_name = f"table:{name}:{table}"
                    fields[field_name] = fields.get(field_name, 0) + delta
        done = self._drained_invalidated if since else {}
        for table, count in list(self.table_invalidations.items()):
            delta = count - done.get(table, 0)
            if delta:
                fields[f"table:invalidations:{table}"] = delta
        return fields, marks

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
            reasons = dict(self.reasons)
            invalidated = dict(self.table_invalidations)
            reasons_base = self._drained_reasons
            groups, marks = self._group_fields(since=True)
        for seconds in samples:
            name = f"lat:{bisect.bisect_left(BUCKETS_MS, seconds * 1000.0)}"
            delta[name] = delta.get(name, 0) + 1
        for reason, count in reasons.items():
            delta[f"uncacheable:{reason}"] = count - reasons_base.get(reason, 0)
        delta.update(groups)

        def commit() -> None:
            with self._lock:
                if self._drained is base:
                    self._drained = current
                    self._drained_reasons = reasons
                    self._drained_invalidated = invalidated
                    for tally, flushed, now in marks:
                        if tally.flushed == flushed:
                            tally.flushed = now

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
    reasons = {
        name.partition(":")[2]: count
        for name, count in values.items()
        if name.startswith("uncacheable:") and count
    }
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
        **{name: values.get(name, 0) for name in COUNTERS},  # type: ignore[arg-type]
        latency_p50_ms=pct(0.50),
        latency_p95_ms=pct(0.95),
        latency_p99_ms=pct(0.99),
        uncacheable_by_reason=reasons,
        by_table=groups_from_fields(values, "table"),
        by_region=groups_from_fields(values, "region"),
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
