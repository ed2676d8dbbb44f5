"""Multi-tenant workload: hit rates of fine-grained and table-level invalidation next to the ideal.

``sqla-redis-cache bench --workload tenants`` (or ``python -m benchmarks.tenants``).  A table of
``tenants`` tenants with ``per_tenant`` rows each; the load on tenants is skewed (Zipf, s=1).
Each operation either reads one tenant's rows (``.where(Item.org_id == o).options(cached())``)
or, with probability W, updates one random row through the ORM (``session.get`` + attribute +
``commit()``).  The same operation sequence (one seed per W) runs against:

- ``fine``: this library as configured by default (fine-grained invalidation), the writers
  under REPEATABLE READ on PostgreSQL (``_writer``);
- ``table_level``: the same with ``fine_grained=False`` (every write misses every tenant);
- ``ideal``: computed from the sequence, not measured: a read is a hit when the tenant was read
  before and none of its rows was written since (what a cache that invalidates exactly the
  written tenant would do, with no TTL expiring in between).

Hit rates are counted by the cache's own statistics (hits / reads) and checked against the
statements that reached the database.  The commit cost of one ORM update (known rows: table token
plus the row's value tokens) is measured with 50, 1,000 and 100,000 entries stored in the
namespace: it depends on the row's columns, not on the entries.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from typing import Any

from sqlalchemy import Integer, String, create_engine, delete, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_redis_cache import QueryCache, cached


class _Base(DeclarativeBase):
    pass


class TenantItem(_Base):
    __tablename__ = "sqla_cache_bench_tenant_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[int] = mapped_column(Integer)


def _setup(engine: Engine, tenants: int, per_tenant: int) -> None:
    _Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(delete(TenantItem))
        conn.execute(
            insert(TenantItem),
            [
                {"id": t * per_tenant + i + 1, "org_id": t + 1, "name": f"i{i}", "value": 0}
                for t in range(tenants)
                for i in range(per_tenant)
            ],
        )
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"ANALYZE {TenantItem.__tablename__}"))


def operations(
    seed: int, n: int, write_ratio: float, tenants: int, per_tenant: int
) -> list[tuple[str, int]]:
    """("read", tenant) or ("write", row id): the same sequence for every variant."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(tenants)]  # Zipf, s = 1
    ids = list(range(1, tenants + 1))
    rows = tenants * per_tenant
    out: list[tuple[str, int]] = []
    for _ in range(n):
        if rng.random() < write_ratio:
            out.append(("write", rng.randrange(1, rows + 1)))
        else:
            out.append(("read", rng.choices(ids, weights)[0]))
    return out


def ideal_hit_rate(ops: list[tuple[str, int]], per_tenant: int) -> float:
    """Hits / reads of a cache invalidating exactly the written row's tenant."""
    valid: set[int] = set()
    hits = reads = 0
    for kind, arg in ops:
        if kind == "read":
            reads += 1
            hits += arg in valid
            valid.add(arg)
        else:
            valid.discard((arg - 1) // per_tenant + 1)
    return hits / reads


def table_level_hit_rate(ops: list[tuple[str, int]]) -> float:
    """Hits / reads of a cache invalidating every tenant on any write (for reference)."""
    valid: set[int] = set()
    hits = reads = 0
    for kind, arg in ops:
        if kind == "read":
            reads += 1
            hits += arg in valid
            valid.add(arg)
        else:
            valid.clear()
    return hits / reads


def _writer(session: Session) -> None:
    """Writers run under REPEATABLE READ on PostgreSQL: there the old values the Session loaded
    are certain, so an update is invalidated by its values (under READ COMMITTED another
    transaction could have changed the row after its load: the table's rows are unknown).  On
    SQLite the caches trust the loaded values instead (``trust_loaded_values``: this workload
    has a single writer)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _settings(engine: Engine) -> dict[str, Any]:
    return {"trust_loaded_values": True} if engine.dialect.name == "sqlite" else {}


def _replay(factory: sessionmaker[Session], ops: list[tuple[str, int]]) -> None:
    for step, (kind, arg) in enumerate(ops):
        with factory() as session:
            if kind == "read":
                stmt = select(TenantItem).where(TenantItem.org_id == arg).order_by(TenantItem.id)
                session.scalars(stmt.options(cached())).all()
            else:
                _writer(session)
                item = session.get(TenantItem, arg)
                assert item is not None
                item.value = step
                session.commit()


def run(
    database_url: str,
    redis_url: str,
    operations_per_ratio: int = 4000,
    tenants: int = 100,
    per_tenant: int = 50,
    ratios: tuple[float, ...] = (0.01, 0.05, 0.20),
    seed: int = 12,
    commit_sizes: tuple[int, ...] = (50, 1_000, 100_000),
) -> dict[str, Any]:
    engine = create_engine(database_url)
    _setup(engine, tenants, per_tenant)
    report: dict[str, Any] = {
        "tenants": tenants,
        "rows_per_tenant": per_tenant,
        "operations_per_ratio": operations_per_ratio,
        "skew": "zipf s=1",
        "hit_rate": {},
    }
    for ratio in ratios:
        ops = operations(seed, operations_per_ratio, ratio, tenants, per_tenant)
        reads = sum(1 for kind, _ in ops if kind == "read")
        row: dict[str, Any] = {
            "ideal": round(ideal_hit_rate(ops, per_tenant), 3),
            "table_level_model": round(table_level_hit_rate(ops), 3),
        }
        for label, fine in (("fine", True), ("table_level", False)):
            _setup(engine, tenants, per_tenant)
            cache = QueryCache.from_url(
                redis_url,
                namespace=f"sqla_cache_bench_tenants_{label}",
                fine_grained=fine,
                stats_interval=0,
                **_settings(engine),
                regions={"db_query": 3600},
            )
            cache.clear()
            factory = sessionmaker(engine)
            cache.attach(factory)
            before = cache.stats()
            _replay(factory, ops)
            after = cache.stats()
            hits = after.hits - before.hits
            row[label] = round(hits / reads, 3)
            cache.clear()
            cache.close()
        row["fine_minus_ideal"] = round(row["fine"] - row["ideal"], 3)
        report["hit_rate"][f"{ratio:.0%}"] = row
    if commit_sizes:
        report["commit"] = _commit_cost(engine, redis_url, commit_sizes)
    engine.dispose()
    return report


def _commit_cost(engine: Engine, redis_url: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Median time of one ORM update's ``commit()`` (the known-rows path), with 50, 1,000 and
    100,000 entries stored in the namespace, and the tokens it replaces."""
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_url)
    namespace = "sqla_cache_bench_tenants_commit"
    cache = QueryCache.from_url(
        redis_url, namespace=namespace, stats_interval=0, **_settings(engine)
    )
    factory = sessionmaker(engine)
    cache.attach(factory)
    out: dict[str, Any] = {}
    payload = b"x" * 200
    for size in sizes:
        cache.clear()
        pipe = client.pipeline(transaction=False)
        for i in range(size):
            pipe.set(f"{namespace}:q:filler{i:08d}", payload, px=600_000)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        samples = []
        tokens = []
        for i in range(60):
            with factory() as session:
                _writer(session)
                item = session.get(TenantItem, 1 + i % 50)
                assert item is not None
                item.value = size * 1000 + i  # a new value: a real UPDATE each time
                before = cache.stats().invalidations
                session.flush()
                start = time.perf_counter()
                session.commit()
                samples.append(time.perf_counter() - start)
                tokens.append(cache.stats().invalidations - before)
        out[f"commit_ms_with_{size}_entries"] = round(statistics.median(samples) * 1000, 3)
        out[f"table_tokens_replaced_per_commit_with_{size}_entries"] = statistics.median(tokens)
    first, last = f"commit_ms_with_{sizes[0]}_entries", f"commit_ms_with_{sizes[-1]}_entries"
    out[f"ratio_{sizes[-1]}_to_{sizes[0]}"] = round(out[last] / out[first], 3)
    cache.clear()
    cache.close()
    client.close()
    return out


if __name__ == "__main__":  # python -m benchmarks.tenants [options]: the CLI's bench command
    from sqla_redis_cache.cli import main

    main(["bench", "--workload", "tenants", *sys.argv[1:]], prog_name="sqla-redis-cache")
