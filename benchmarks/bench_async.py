"""Async benchmark: ``AsyncSession`` uncached vs. this library, and throughput under concurrency.

Run from a source checkout with ``sqla-redis-cache bench --async``.  The shapes, the interleaving
of variants round by round and the report format are those of ``benchmarks/bench.py``; the plain
recipe is left out because dogpile.cache has no asyncio support (under concurrency it deadlocks,
see docs/async.md).

The library is measured twice, interleaved like the rest: as configured by default (the
tracked near cache on: a repeated hit sends nothing to Redis) and with
``near_cache_tracking=False`` (``library_validated``: every hit reads its entry and tokens from
Redis, one round trip through the asyncio client).

The throughput part runs ``concurrency`` coroutines on one loop, each opening a session and
reading one row by primary key (ids spread over ``keys`` distinct values, so the cached variants
serve hits) for ``seconds``; every variant shares the same pool size.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from benchmarks.bench import SHAPES, BenchItem, _FromRecipe, _setup
from sqla_redis_cache import QueryCache, cached

_DRIVERS = {"postgresql": ("psycopg2", "asyncpg"), "sqlite": ("pysqlite", "aiosqlite")}


def _urls(database_url: str) -> tuple[str, str]:
    """(sync, async) URLs of the same database."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend not in _DRIVERS:
        raise ValueError(f"no asyncio driver known for {backend!r}")
    return tuple(  # type: ignore[return-value]
        url.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)
        for driver in _DRIVERS[backend]
    )


async def _time(factory: async_sessionmaker[AsyncSession], stmt: Any, entities: bool) -> float:
    start = time.perf_counter()
    async with factory() as session:
        result = await session.execute(stmt)
        rows = result.scalars().all() if entities else result.all()
    elapsed = time.perf_counter() - start
    assert rows
    return elapsed


async def _shapes(
    plain: async_sessionmaker[AsyncSession],
    ours: async_sessionmaker[AsyncSession],
    validating: async_sessionmaker[AsyncSession],
    rounds: int,
    block: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, make in SHAPES.items():
        entities = name != "group_by_200k"
        variants = {
            "uncached": (plain, make(_FromRecipe("none"))),
            "library": (ours, make(cached())),
            "library_validated": (validating, make(cached())),
        }
        for factory, stmt in variants.values():
            for _ in range(3):
                await _time(factory, stmt, entities)
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for label, (factory, stmt) in variants.items():
                total = 0.0
                for _ in range(block):
                    total += await _time(factory, stmt, entities)
                samples[label].append(total / block)
        medians = {k: statistics.median(v) for k, v in samples.items()}
        out[name] = {
            "median_ms": {k: round(v * 1000, 3) for k, v in medians.items()},
            "ratio_to_uncached": {k: round(v / medians["uncached"], 3) for k, v in medians.items()},
        }
    return out


async def _throughput(
    factory: async_sessionmaker[AsyncSession],
    option: Any,
    concurrency: int,
    seconds: float,
    keys: int,
) -> float:
    """Reads per second of ``concurrency`` coroutines for ``seconds``."""
    stmts = [select(BenchItem).where(BenchItem.id == i + 1).options(option) for i in range(keys)]
    for stmt in stmts:  # warm (fills the cache for the cached variant)
        async with factory() as session:
            (await session.scalars(stmt)).one()
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            async with factory() as session:
                (await session.scalars(stmts[i % keys])).one()
            done += 1
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.perf_counter() - started)


async def run_async(
    database_url: str,
    redis_url: str,
    rounds: int = 30,
    rows: int = 200_000,
    block: int = 10,
    concurrency: int = 100,
    seconds: float = 3.0,
    pool_size: int = 20,
) -> dict[str, Any]:
    sync_url, async_url = _urls(database_url)
    sync_engine = create_engine(sync_url)
    _setup(sync_engine, rows)
    sync_engine.dispose()
    engine = create_async_engine(async_url, pool_size=pool_size, max_overflow=0)
    plain = async_sessionmaker(engine)
    caches = []
    factories = []
    for suffix, settings in (("", {}), ("_validated", {"near_cache_tracking": False})):
        factory = async_sessionmaker(engine)
        cache = QueryCache.from_url(
            redis_url, namespace="sqla_cache_bench_async" + suffix, **settings
        )
        cache.clear()
        cache.attach(factory)
        caches.append(cache)
        factories.append(factory)
    ours, validating = factories
    report: dict[str, Any] = {
        "driver": make_url(async_url).drivername,
        "rounds": rounds,
        "block": block,
        "rows": rows,
        "shapes": await _shapes(plain, ours, validating, rounds, block),
    }
    uncached = await _throughput(plain, _FromRecipe("none"), concurrency, seconds, 100)
    hits = await _throughput(ours, cached(), concurrency, seconds, 100)
    validated = await _throughput(validating, cached(), concurrency, seconds, 100)
    report["throughput"] = {
        "coroutines": concurrency,
        "pool_size": pool_size,
        "reads_per_s": {
            "uncached": round(uncached),
            "library": round(hits),
            "library_validated": round(validated),
        },
        "ratio_to_uncached": {
            "library": round(hits / uncached, 3),
            "library_validated": round(validated / uncached, 3),
        },
    }
    for cache in caches:
        cache.clear()
        await cache.aclose()
    await engine.dispose()
    return report


if __name__ == "__main__":  # python -m benchmarks.bench_async [options]
    import sys

    from sqla_redis_cache.cli import main

    main(["bench", "--async", *sys.argv[1:]], prog_name="sqla-redis-cache")
