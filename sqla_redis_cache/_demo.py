"""The ``sqla-redis-cache demo``: a small shop on SQLite (or any database URL), cold then warm.

It shows the three things a newcomer wants to see in ten seconds: a cached query sends no SQL
the second time, a commit makes the next read fresh, and the speed-up.  When no Redis answers it
says so and uses the in-process backend, so the demo runs on a bare machine.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, Numeric, String, create_engine, event, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from ._cache import QueryCache
from .wiring._options import cached


class _Base(DeclarativeBase):
    pass


class Category(_Base):
    __tablename__ = "demo_category"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Product(_Base):
    __tablename__ = "demo_product"
    id: Mapped[int] = mapped_column(primary_key=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("demo_category.id"), index=True)
    name: Mapped[str] = mapped_column(String(60))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))


@dataclass
class DemoResult:
    backend: str
    cold_ms: float
    warm_ms: float
    statements_cold: int
    statements_warm: int
    hits: int
    misses: int
    fresh_after_commit: bool

    @property
    def speedup(self) -> float:
        return self.cold_ms / self.warm_ms if self.warm_ms else float("inf")


def connect_cache(redis_url: str | None, say: Callable[[str], None]) -> tuple[QueryCache, str]:
    """A cache on Redis if one answers, else the in-process backend (and say so)."""
    url = redis_url or "redis://localhost:6379/0"
    cache = QueryCache.from_url(url, namespace="sqla_cache_demo", connect_timeout=0.3)
    if cache.ping():
        return cache, f"Redis at {cache.config.url}"
    cache.close()
    say(f"No Redis answered at {url}: using the in-process backend (single process only).")
    return QueryCache.in_memory(namespace="sqla_cache_demo"), "in-process memory backend"


def run_demo(
    database_url: str | None, redis_url: str | None, say: Callable[[str], None], rows: int = 20000
) -> DemoResult:
    tmp = None
    if database_url is None:
        tmp = tempfile.TemporaryDirectory()
        database_url = f"sqlite:///{Path(tmp.name) / 'demo.db'}"
    engine = create_engine(database_url)
    statements = [0]

    @event.listens_for(engine, "after_cursor_execute")
    def _count(
        conn: object, cursor: object, stmt: str, params: object, context: Any, many: bool
    ) -> None:
        if not getattr(context.cursor, "hit", False):  # a cache hit never reached the database
            statements[0] += 1

    _Base.metadata.drop_all(engine)
    _Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(Category), [{"id": i, "name": f"category {i}"} for i in range(1, 21)])
        conn.execute(
            insert(Product),
            [
                {
                    "id": i,
                    "category_id": i % 20 + 1,
                    "name": f"product {i}",
                    "price": Decimal(i % 500) / 4,
                }
                for i in range(1, rows + 1)
            ],
        )
    cache, backend = connect_cache(redis_url, say)
    cache.clear()
    Session = sessionmaker(engine)
    cache.attach(Session)
    report = (
        select(Category.name, func.count(Product.id), func.avg(Product.price))
        .join(Product, Product.category_id == Category.id)
        .group_by(Category.name)
        .order_by(Category.name)
        .options(cached(region="db_aggregate", tags=["reports"]))
    )

    def timed() -> tuple[float, int, list[tuple[object, ...]]]:
        before = statements[0]
        start = time.perf_counter()
        with Session() as session:
            result = [tuple(r) for r in session.execute(report)]
        return (time.perf_counter() - start) * 1000, statements[0] - before, result

    try:
        cold_ms, cold_statements, first = timed()
        warm = [timed() for _ in range(20)]
        warm_ms = statistics.median(w[0] for w in warm)
        warm_statements = max(w[1] for w in warm)
        assert all(w[2] == first for w in warm)
        with Session.begin() as session:
            session.add(Product(id=rows + 1, category_id=1, name="new", price=Decimal(1)))
        _, _, after = timed()
        fresh = after != first
        st = cache.stats()
        return DemoResult(
            backend,
            cold_ms,
            warm_ms,
            cold_statements,
            warm_statements,
            st.hits,
            st.misses,
            fresh,
        )
    finally:
        cache.clear()
        cache.close()
        engine.dispose()
        if tmp is not None:
            tmp.cleanup()
