"""The hit-path cost of per-table statistics, without Redis or database noise.

``sqla-redis-cache bench`` measures the library with and without per-table statistics against
PostgreSQL and Redis, interleaved; on a loaded machine its rounds swing by far more than the
difference.  This measures the same two hit paths with the in-process backend (no network) on
an in-memory SQLite database, so what remains is the Python work of a hit: alternating blocks
of ``block`` hits of one primary-key query through two caches that differ only in
``table_stats``, medians over ``rounds``.

Run from a source checkout: ``python -m benchmarks.table_stats [rounds] [block]``.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from typing import Any

from sqlalchemy import String, create_engine, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from sqla_redis_cache import QueryCache, cached


class _Base(DeclarativeBase):
    pass


class Row(_Base):
    __tablename__ = "bench_row"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


def run(rounds: int = 40, block: int = 2000) -> dict[str, Any]:
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    _Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(Row), [{"id": i, "name": f"r{i}"} for i in range(1, 101)])
    stmt = select(Row).where(Row.id == 42).options(cached())
    variants = {}
    for label, table_stats in (("with_table_stats", True), ("without", False)):
        maker = sessionmaker(engine)
        cache = QueryCache.in_memory(namespace=label, table_stats=table_stats)
        cache.attach(maker)
        variants[label] = (maker, cache)

    def hits(maker: Any) -> float:
        with maker() as session:
            start = time.perf_counter()
            for _ in range(block):
                session.execute(stmt).scalar_one()
            return (time.perf_counter() - start) / block

    for maker, _ in variants.values():
        hits(maker)  # warm: compile, fill
    samples: dict[str, list[float]] = {label: [] for label in variants}
    for index in range(rounds):
        order = list(variants) if index % 2 == 0 else list(reversed(variants))
        for label in order:
            gc.collect()
            samples[label].append(hits(variants[label][0]))
    medians = {label: statistics.median(values) for label, values in samples.items()}
    for _, cache in variants.values():
        assert cache.stats().misses == 1
    with_stats, without = medians["with_table_stats"], medians["without"]
    return {
        "rounds": rounds,
        "block": block,
        "hit_us": {label: round(value * 1e6, 2) for label, value in medians.items()},
        "extra_ns_per_hit": round((with_stats - without) * 1e9),
        "ratio": round(with_stats / without, 4),
    }


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(run(*args), indent=2))
