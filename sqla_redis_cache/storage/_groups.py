"""Per-table and per-region figures, and the reasons a statement is not cached.

:class:`Tally` is what the read path counts into: one per group of reads (the tables an entry
depends on, and its region), so a hit costs one increment whatever the number of tables;
``_stats`` spreads the tallies over tables and regions when it snapshots or flushes them
(``table:<counter>:<name>`` / ``region:<counter>:<name>`` fields of the shared hash), and
:func:`groups_from_fields` reads them back as :class:`GroupStats`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: why a statement or value was not cached: stable codes (statistics keys, metric labels) and
#: what each means
REASONS: Mapping[str, str] = {
    "unkeyable_statement": "SQLAlchemy cannot key the statement (a TypeDecorator without "
    "cache_ok, ...)",
    "text_fragment": "text() fragment: the tables it reads are unknown (name them with "
    "cached(tables=[...]))",
    "locking_read": "locking read (FOR UPDATE / FOR SHARE)",
    "data_modifying_cte": "data-modifying CTE (INSERT / UPDATE / DELETE inside the SELECT)",
    "reads_no_table": "reads no table (nothing would ever invalidate it)",
    "not_a_select": "not a SELECT",
    "not_compiled": "not a compiled statement (driver-level SQL)",
    "streamed_result": "streamed result (stream_results / yield_per)",
    "unkeyable_parameter": "a bound parameter has a type whose value cannot be keyed safely",
    "unencodable_value": "the result holds a value the entry format cannot store "
    "(pickle needs a secret)",
    "entry_too_large": "the entry would exceed max_entry_bytes",
}

#: per-table and per-region counters (``CacheStats.by_table`` / ``by_region``)
GROUP_COUNTERS = ("hits", "misses", "bypasses", "invalidations", "bytes")


@dataclass(frozen=True, slots=True)
class GroupStats:
    """The figures of one table or one region."""

    hits: int = 0
    misses: int = 0
    #: reads that skipped the cache (own uncommitted writes, snapshot isolation, Redis down)
    bypasses: int = 0
    #: times a commit (or ``invalidate_tables``) replaced the table's token
    invalidations: int = 0
    #: bytes of the entries stored (fills)
    bytes: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {name: getattr(self, name) for name in GROUP_COUNTERS}
        out.update(lookups=self.lookups, hit_rate=round(self.hit_rate, 6))
        return out


class Tally:
    """The counters of one group of reads: entries depending on ``tables``, in ``region``.

    The read path holds on to its tally (``wiring._reads`` memoises it with the entry's
    dependency keys), so counting a hit is one attribute increment; the tally survives
    :meth:`StatsRecorder.reset` (it is zeroed in place).
    """

    __slots__ = ("bypasses", "bytes", "flushed", "hits", "misses", "region", "tables")

    def __init__(self, tables: frozenset[str], region: str) -> None:
        self.tables = tables
        self.region = region
        self.hits = self.misses = self.bypasses = self.bytes = 0
        #: (hits, misses, bypasses, bytes) already added to the shared statistics
        self.flushed = (0, 0, 0, 0)

    def current(self) -> tuple[int, int, int, int]:
        return (self.hits, self.misses, self.bypasses, self.bytes)

    def zero(self) -> None:
        self.hits = self.misses = self.bypasses = self.bytes = 0
        self.flushed = (0, 0, 0, 0)


def groups_from_fields(fields: Mapping[str, int], kind: str) -> dict[str, GroupStats]:
    """``table``/``region`` figures from hash-style fields (``<kind>:<counter>:<name>``)."""
    values: dict[str, dict[str, int]] = {}
    prefix = kind + ":"
    for name, count in fields.items():
        if name.startswith(prefix):
            counter, _, group = name[len(prefix) :].partition(":")
            if counter in GROUP_COUNTERS and group:
                values.setdefault(group, {})[counter] = count
    return {group: GroupStats(**counts) for group, counts in sorted(values.items())}
