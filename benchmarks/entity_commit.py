"""What entity write-through costs at commit, and what the next ``get`` costs after it.

For one row of a small table, each round runs, in fresh sessions::

    commit:    s.get(Row, pk) (uncached); row.name = ...; s.commit()  <- timed (flush included)
    next get:  s.get(Row, pk[, options=[cached()]])                  <- timed

in three set-ups, each on its own engine, interleaved round by round so that a busy machine
slows them alike: no cache attached; a cache attached whose entity cache this process never
uses ("queries only", plain ``get``); and the entity cache in use (``cached()`` gets).  The
commit includes its flush (one UPDATE), so what the cache adds to a flush shows too::

    python benchmarks/entity_commit.py [--database-url URL] [--redis-url URL] [--rounds N]

Medians (and quartiles) in milliseconds, and the SQL statements and Redis round trips each
step makes (counted, so exact however busy the machine); docs/concepts.md quotes them.  It
creates and drops its own table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import Numeric, String, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache._cache import internals


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "bench_entity_commit"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))


SETUPS = ("no cache", "queries only", "entity cache in use")


class Calls:
    """SQL statements sent and Redis round trips made, per set-up."""

    def __init__(self) -> None:
        self.sql = 0
        self.redis = 0

    def watch(self, engine: Any, cache: QueryCache | None) -> None:
        def count_sql(*args: Any) -> None:
            self.sql += 1

        event.listen(engine, "before_cursor_execute", count_sql)
        if cache is not None:  # wrap the store's two round-trip methods (this script only)
            store = internals(cache).storage.store
            for name in ("get_many", "run"):
                real = getattr(store, name)

                def counted(*args: Any, _real: Any = real) -> Any:
                    self.redis += 1
                    return _real(*args)

                setattr(store, name, counted)

    def take(self) -> tuple[int, int]:
        taken = (self.sql, self.redis)
        self.sql = self.redis = 0
        return taken


def run(
    database_url: str, redis_url: str, rounds: int
) -> dict[str, tuple[list[float], list[float], tuple[int, int], tuple[int, int]]]:
    engines = {setup: create_engine(database_url) for setup in SETUPS}
    any_engine = engines[SETUPS[0]]
    Base.metadata.drop_all(any_engine)
    Base.metadata.create_all(any_engine)
    makers = {setup: sessionmaker(engine) for setup, engine in engines.items()}
    with makers[SETUPS[0]]() as s:
        s.add_all(Row(id=i, name="r", price=Decimal("1.00")) for i in range(len(SETUPS)))
        s.commit()
    caches: list[QueryCache] = []
    calls = {setup: Calls() for setup in SETUPS}
    for setup in SETUPS:
        cache = None
        if setup != SETUPS[0]:
            cache = QueryCache.from_url(redis_url, namespace="bench" + uuid.uuid4().hex[:8])
            cache.attach(makers[setup])
            caches.append(cache)
        calls[setup].watch(engines[setup], cache)
    options = {setup: [cached()] if setup == SETUPS[2] else [] for setup in SETUPS}
    timings: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in SETUPS}
    counted: dict[str, list[tuple[int, int]]] = {s: [(0, 0), (0, 0)] for s in SETUPS}
    try:
        for n in range(rounds + 20):  # the first 20 rounds warm up
            for pk, setup in enumerate(SETUPS):
                Session = makers[setup]
                with Session() as s:
                    row = s.get_one(Row, pk)
                    row.name = f"r{n}"
                    row.price = Decimal("1.005")
                    calls[setup].take()
                    started = time.perf_counter()
                    s.commit()
                    commit = time.perf_counter() - started
                    commit_calls = calls[setup].take()
                with Session() as s:
                    started = time.perf_counter()
                    s.get_one(Row, pk, options=options[setup])
                    get = time.perf_counter() - started
                    get_calls = calls[setup].take()
                if n >= 20:
                    timings[setup][0].append(commit * 1e3)
                    timings[setup][1].append(get * 1e3)
                    counted[setup] = [commit_calls, get_calls]
    finally:
        for cache in caches:
            cache.clear()
            cache.close()
        Base.metadata.drop_all(any_engine)
        for engine in engines.values():
            engine.dispose()
    return {s: (*timings[s], *counted[s]) for s in SETUPS}  # type: ignore[misc]


def _quartiles(values: list[float]) -> str:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{q2:6.3f} ({q1:.3f}-{q3:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "SQLA_CACHE_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1"))
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    print(f"{'set-up':<20} {'commit, ms (median, quartiles)':>32} {'next get, ms':>26}")
    results = run(args.database_url, args.redis_url, args.rounds)
    for setup, (commits, gets, _, _) in results.items():
        print(f"{setup:<20} {_quartiles(commits):>32} {_quartiles(gets):>26}")
    print(f"\n{'set-up':<20} {'commit: SQL, Redis':>20} {'next get: SQL, Redis':>22}")
    for setup, (_, _, commit, get) in results.items():
        print(f"{setup:<20} {commit[0]:>12}, {commit[1]:>5} {get[0]:>14}, {get[1]:>5}")


if __name__ == "__main__":
    main()
