"""Per-table and per-region statistics: counted in process, shared through the flush, and no
extra Redis command on the hit path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

from . import _services
from ._tracking import hits_send_nothing, wait_live
from .conftest import Database, RedisTarget
from .models import Org, User

USERS = select(User).where(User.org_id == 1).options(cached())
JOIN = select(User.name, Org.name).join(User.org).options(cached(region="db_aggregate"))


def read(db: Database, stmt: object, times: int = 1) -> None:
    for _ in range(times):
        with db.Session() as s:
            s.execute(stmt).all()  # type: ignore[call-overload]


def test_figures_per_table_and_region(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    read(db, USERS, 3)  # app_user: 1 miss, 2 hits (db_query)
    read(db, JOIN, 2)  # app_user and org: 1 miss, 1 hit (db_aggregate)
    with db.Session() as s:  # a bypass, then the commit invalidates app_user
        s.execute(update(User).where(User.id == 6).values(name="x"))
        s.execute(USERS).all()
        s.commit()
    read(db, USERS)  # a miss again
    stats = cache.stats()
    users, orgs = stats.by_table["app_user"], stats.by_table["org"]
    assert (users.hits, users.misses, users.bypasses, users.invalidations) == (3, 3, 1, 1)
    assert (orgs.hits, orgs.misses, orgs.bypasses, orgs.invalidations) == (1, 1, 0, 0)
    assert users.bytes > orgs.bytes > 0
    assert users.hit_rate == 0.5
    query, aggregate = stats.by_region["db_query"], stats.by_region["db_aggregate"]
    assert (query.hits, query.misses, query.bypasses) == (2, 2, 1)
    assert (aggregate.hits, aggregate.misses) == (1, 1)
    assert stats.breakdown("region") == dict(stats.by_region)
    with pytest.raises(ValueError, match="table"):
        stats.breakdown("tag")
    cache.reset_stats()
    read(db, USERS)
    assert cache.stats().by_table["app_user"].hits == 1
    assert "org" not in cache.stats().by_table


def test_shared_figures_add_up_across_processes(
    db: Database, redis_target: RedisTarget, namespace: str
) -> None:
    one = redis_target.cache(namespace, stats_interval=0)
    two = redis_target.cache(namespace, stats_interval=0)
    try:
        one.attach(db.Session)
        read(db, USERS, 2)  # app_user: 1 miss, 1 hit
        one.invalidate_tables("org")
        assert one.flush_stats() and one.flush_stats()  # the second adds nothing
        other = Database(db.name, db.url, db.engine, db.counter, sessionmaker(db.engine))
        two.attach(other.Session)
        read(other, USERS, 2)  # one's entry: 2 hits
        read(other, JOIN, 2)  # app_user and org: 1 miss, 1 hit
        shared = two.shared_stats()
        assert shared is not None
        users, orgs = shared.by_table["app_user"], shared.by_table["org"]
        assert (users.hits, users.misses) == (4, 2)
        assert (orgs.hits, orgs.misses, orgs.invalidations) == (1, 1, 1)
        assert shared.by_region["db_aggregate"].lookups == 2
        assert shared.by_region["db_query"].lookups == 4
        assert users.bytes > orgs.bytes > 0
    finally:
        one.clear()
        one.close()
        two.close()


def test_turned_off(db: Database, redis_target: RedisTarget, namespace: str) -> None:
    cache = redis_target.cache(namespace, table_stats=False)
    try:
        cache.attach(db.Session)
        read(db, USERS, 2)
        stats = cache.stats()
        assert (stats.hits, stats.misses) == (1, 1)
        assert stats.by_table == {} and stats.by_region == {}
    finally:
        cache.clear()
        cache.close()


@pytest.fixture
def private_redis() -> Iterator[tuple[str, redis.Redis]]:
    """A throwaway redis-server, so its command statistics are ours alone."""
    port = _services.free_port()
    proc = _services.start_redis_server(port)
    client = redis.Redis(port=port)
    try:
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        _services.stop(proc)


def _commands(client: redis.Redis) -> dict[str, int]:
    found = client.info("commandstats")
    return {name: int(stat["calls"]) for name, stat in found.items() if name != "cmdstat_info"}


@pytest.mark.parametrize("tracking", [False, True], ids=["validated", "near_cache"])
def test_a_hit_sends_one_command_and_tables_travel_with_the_flush(
    pg: Database, private_redis: tuple[str, redis.Redis], tracking: bool
) -> None:
    url, client = private_redis
    cache = QueryCache.from_url(
        url, namespace="tables", stats_interval=0, near_cache_tracking=tracking
    )
    try:
        cache.attach(pg.Session)
        read(pg, JOIN)
        warm = 0
        if tracking:  # the hits below come from process memory
            wait_live(cache)
            read(pg, JOIN, 2)
            warm = 2
        reads = 0

        def one_read() -> None:
            nonlocal reads
            reads += 1
            read(pg, JOIN)

        if tracking:  # none from the near cache (a window whose lease lapsed is retried)
            hits_send_nothing(cache, [client], one_read, 20)
        else:  # one round trip per hit, nothing else
            before = _commands(client)
            read(pg, JOIN, 20)
            reads = 20
            after = _commands(client)
            sent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
            assert sent == {"cmdstat_mget": 20}
        assert cache.flush_stats()
        fields = {k.decode(): int(v) for k, v in client.hgetall("tables:stats").items()}
        assert fields["table:hits:app_user"] == fields["table:hits:org"] == reads + warm
        assert fields["region:hits:db_aggregate"] == reads + warm
        assert fields["region:misses:db_aggregate"] == 1
    finally:
        cache.close()
