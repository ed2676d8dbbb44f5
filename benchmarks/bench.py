"""Side-by-side benchmark: uncached query, the plain SQLAlchemy caching recipe, this library.

Run from a source checkout with ``sqla-redis-cache bench`` (or ``python -m benchmarks.bench``;
``--async`` for the AsyncSession benchmark of ``benchmarks/bench_async.py``).  Each shape is
measured in one process, interleaving the three variants round by round so that machine noise
hits them alike; each round times a block of ``block`` consecutive executions per variant (the
steady state of a busy worker), and the report gives medians over rounds and ratios to the
uncached query, never absolute claims.  Every iteration opens a fresh Session, runs the query,
consumes the result and closes the session: the shape of a web request.

The library is measured three times, interleaved like the rest: as configured by default (the
tracked near cache on: a repeated hit sends nothing to Redis), with ``near_cache_tracking=False``
(``library_validated``: every hit reads its entry and tokens from Redis, one round trip), and
without per-table statistics (``table_stats_cost``).  ``redis_commands_per_hit`` counts the data
commands the Redis server ran for 100 further hits of each (``INFO commandstats``: use a scratch
Redis).  ``--added-latency-ms`` puts a proxy adding that round-trip delay in front of Redis
(``benchmarks/latency_proxy.py``, its own process), and ``commit_to_other_process`` times, with
and without tracking, how long after ``commit()`` returns another process first reads the new
value (``benchmarks/commit_watch.py``).
A fourth time with table-level invalidation only (``fine_grained=False``): ``fine_grained_cost``
is the hit-path cost of fine-grained dependencies (``pk_1_row`` is an equality read: one more key
in the lookup and the value's key computed per execution; the other shapes stay table-level).

The "recipe" is the approach documented in SQLAlchemy's dogpile_caching example: a
``do_orm_execute`` hook storing ``invoke_statement().freeze()`` in a dogpile region (Redis
backend, pickle) and ``merge_frozen_result(load=False)`` on a hit.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from dogpile.cache import make_region
from sqlalchemy import (
    DateTime,
    Numeric,
    String,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    ORMExecuteState,
    Session,
    UserDefinedOption,
    mapped_column,
    sessionmaker,
)
from sqlalchemy.orm.loading import merge_frozen_result

from sqla_redis_cache import QueryCache, cached


class _Base(DeclarativeBase):
    pass


class BenchItem(_Base):
    __tablename__ = "sqla_cache_bench_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(index=True)
    name: Mapped[str] = mapped_column(String(64))
    price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    created_at: Mapped[datetime] = mapped_column(DateTime)


#: where the recipe's dogpile region keeps its entries
RECIPE_PREFIX = "sqla_cache_bench_recipe:"


class _FromRecipe(UserDefinedOption):
    """The recipe's option (payload: cache key prefix)."""


def install_recipe(session_factory: sessionmaker[Session], redis_url: str) -> Any:
    region = make_region().configure(
        "dogpile.cache.redis",
        expiration_time=300,
        arguments={"url": redis_url, "redis_expiration_time": 600},
    )

    @event.listens_for(session_factory, "do_orm_execute")
    def _recipe(state: ORMExecuteState) -> Any:
        for opt in state.user_defined_options:
            if isinstance(opt, _FromRecipe):
                stmt = state.statement
                compiled = stmt.compile(dialect=state.session.get_bind().dialect)  # type: ignore[attr-defined]
                key = f"{RECIPE_PREFIX}{compiled}:{sorted(compiled.params.items())!r}"
                frozen = region.get_or_create(key, lambda: state.invoke_statement().freeze())
                return merge_frozen_result(state.session, stmt, frozen, load=False)()  # type: ignore[no-untyped-call]
        return None

    return region


def _forget_recipe_entries(redis_url: str) -> None:
    """Delete the recipe's entries left by an earlier run (it pickles ``BenchItem`` objects by
    module path: a run of another version of this file could not read them)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{RECIPE_PREFIX}*", count=1000):
            client.unlink(key)
    finally:
        client.close()


def _setup(engine: Engine, rows: int) -> None:
    _Base.metadata.create_all(engine)
    with engine.begin() as conn:
        count = conn.scalar(select(func.count()).select_from(BenchItem))
        if count == rows:
            return
        conn.execute(delete(BenchItem))
        base = datetime(2024, 1, 1)
        batch = []
        for i in range(1, rows + 1):
            batch.append(
                {
                    "id": i,
                    "group_id": i % 50,
                    "name": f"item-{i}",
                    "price": Decimal(i % 1000) / 10,
                    "created_at": base + timedelta(seconds=i),
                }
            )
            if len(batch) == 20000:
                conn.execute(insert(BenchItem), batch)
                batch = []
        if batch:
            conn.execute(insert(BenchItem), batch)
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"ANALYZE {BenchItem.__tablename__}"))


SHAPES: dict[str, Callable[[Any], Any]] = {
    "pk_1_row": lambda opt: select(BenchItem).where(BenchItem.id == 4242).options(opt),
    "entities_1000": lambda opt: (
        select(BenchItem).where(BenchItem.id <= 1000).order_by(BenchItem.id).options(opt)
    ),
    "group_by_200k": lambda opt: (
        select(
            BenchItem.group_id,
            func.count(),
            func.sum(BenchItem.price),
            func.max(BenchItem.created_at),
        )
        .group_by(BenchItem.group_id)
        .order_by(BenchItem.group_id)
        .options(opt)
    ),
}


def _time(factory: sessionmaker[Session], stmt: Any, entities: bool) -> float:
    start = time.perf_counter()
    with factory() as session:
        result = session.execute(stmt)
        rows = result.scalars().all() if entities else result.all()
    elapsed = time.perf_counter() - start
    assert rows
    return elapsed


def run(
    database_url: str,
    redis_url: str,
    rounds: int = 30,
    rows: int = 200_000,
    block: int = 10,
    near_cache: bool = True,
    added_latency_ms: float = 0.0,
) -> dict[str, Any]:
    proxy = None
    if added_latency_ms > 0:
        proxy, redis_url = start_latency_proxy(redis_url, added_latency_ms / 2)
    try:
        return _run(database_url, redis_url, rounds, rows, block, near_cache, added_latency_ms)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)


def start_latency_proxy(redis_url: str, one_way_ms: float) -> tuple[Any, str]:
    """``benchmarks/latency_proxy.py`` in its own process, in front of ``redis_url``'s server;
    the proxy and the URL through it."""
    import socket
    import subprocess
    from pathlib import Path
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.latency_proxy", str(port),
         parts.hostname or "127.0.0.1", str(parts.port or 6379), str(one_way_ms)],
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
    return proxy, parts._replace(netloc=f"127.0.0.1:{port}").geturl()


def _redis_round_trip_ms(redis_url: str) -> float:
    """Median ``PING`` round trip to ``redis_url`` (through the proxy when there is one)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    try:
        client.ping()
        samples = []
        for _ in range(200):
            start = time.perf_counter()
            client.ping()
            samples.append(time.perf_counter() - start)
    finally:
        client.close()
    return round(statistics.median(samples) * 1000, 3)


def _data_commands(redis_url: str) -> int:
    """Data commands the server has run (``INFO commandstats``; the tracking connection's
    heartbeat and handshake left out)."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_") in ("get", "mget", "set", "evalsha", "eval", "unlink")
    )


def _run(
    database_url: str,
    redis_url: str,
    rounds: int,
    rows: int,
    block: int,
    near_cache: bool,
    added_latency_ms: float,
) -> dict[str, Any]:
    engine = create_engine(database_url)
    _setup(engine, rows)
    plain = sessionmaker(engine)
    recipe = sessionmaker(engine)
    _forget_recipe_entries(redis_url)  # pickles of another version may name other modules
    install_recipe(recipe, redis_url)

    def library(suffix: str, **settings: Any) -> tuple[sessionmaker[Session], QueryCache]:
        factory = sessionmaker(engine)
        qc = QueryCache.from_url(
            redis_url,
            namespace="sqla_cache_bench" + suffix,
            near_cache_size=512 if near_cache else 0,
            **settings,
        )
        qc.clear()
        qc.attach(factory)
        return factory, qc

    ours, cache = library("")
    untallied, plain_stats = library("_nostats", table_stats=False)
    coarse, table_level = library("_table_level", fine_grained=False)
    validating, validated = library("_validated", near_cache_tracking=False)
    report: dict[str, Any] = {
        "rounds": rounds,
        "block": block,
        "rows": rows,
        "near_cache": near_cache,
        "added_latency_ms": added_latency_ms,
        "redis_ping_ms": _redis_round_trip_ms(redis_url),
        "shapes": {},
    }
    for name, make in SHAPES.items():
        entities = name != "group_by_200k"
        stmt_plain = make(_FromRecipe("none"))  # an inert option keeps statements alike
        variants = {
            "uncached": (plain, stmt_plain),
            "recipe": (recipe, make(_FromRecipe("bench"))),
            "library": (ours, make(cached())),
            "library_validated": (validating, make(cached())),
            "library_no_table_stats": (untallied, make(cached())),
            "library_table_level": (coarse, make(cached())),
        }
        for factory, stmt in variants.values():  # warm: compile caches, fill both caches
            for _ in range(3):
                _time(factory, stmt, entities)
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for label, (factory, stmt) in variants.items():
                gc.collect()  # the garbage of the previous variant (the recipe's) is not ours
                total = sum(_time(factory, stmt, entities) for _ in range(block))
                samples[label].append(total / block)
        medians = {k: statistics.median(v) for k, v in samples.items()}
        with_stats, without = medians["library"], medians["library_no_table_stats"]
        per_hit = {}
        for label in ("library", "library_validated"):
            factory, stmt = variants[label]
            before = _data_commands(redis_url)
            for _ in range(100):
                _time(factory, stmt, entities)
            per_hit[label] = round((_data_commands(redis_url) - before) / 100, 2)
        report["shapes"][name] = {
            "median_ms": {k: round(v * 1000, 3) for k, v in medians.items()},
            "ratio_to_uncached": {k: round(v / medians["uncached"], 3) for k, v in medians.items()},
            "redis_commands_per_hit": per_hit,
            "table_stats_cost": {
                "extra_us": round((with_stats - without) * 1e6, 1),
                "ratio": round(with_stats / without, 3),
            },
            "fine_grained_cost": {
                "extra_us": round((with_stats - medians["library_table_level"]) * 1e6, 1),
                "ratio": round(with_stats / medians["library_table_level"], 3),
            },
        }
    report["invalidation"] = _invalidation_cost(cache, ours, redis_url)
    from .commit_watch import measure

    report["commit_to_other_process"] = {
        "near_cache_tracking": measure(database_url, redis_url, tracking=True),
        "validated": measure(database_url, redis_url, tracking=False),
    }
    cache.clear()
    cache.close()
    validated.clear()
    validated.close()
    plain_stats.clear()
    plain_stats.close()
    table_level.clear()
    table_level.close()
    engine.dispose()
    return report


def _invalidation_cost(
    cache: QueryCache, factory: sessionmaker[Session], redis_url: str
) -> dict[str, Any]:
    """Median commit time (one UPDATE + commit) with 50 vs 100k cached entries stored."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    out: dict[str, Any] = {}
    payload = b"x" * 200
    for size in (50, 100_000):
        cache.clear()
        pipe = client.pipeline(transaction=False)
        for i in range(size):
            pipe.set(f"sqla_cache_bench:q:filler{i:08d}", payload, px=600_000)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        samples = []
        for i in range(40):
            with factory() as session:
                session.execute(
                    update(BenchItem).where(BenchItem.id == 1).values(name=f"item-1-{i}")
                )
                start = time.perf_counter()
                session.commit()
                samples.append(time.perf_counter() - start)
        out[f"commit_ms_with_{size}_entries"] = round(statistics.median(samples) * 1000, 3)
    out["ratio_100k_to_50"] = round(
        out["commit_ms_with_100000_entries"] / out["commit_ms_with_50_entries"], 3
    )
    client.close()
    return out


if __name__ == "__main__":  # python -m benchmarks.bench [options]: the CLI's bench command
    from sqla_redis_cache.cli import main

    main(["bench", *sys.argv[1:]], prog_name="sqla-redis-cache")
