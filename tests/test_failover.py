"""A master dies: queries keep answering from the database (fail-open, counted), and once a
replica has taken over the same cache object serves hits and invalidates again, no restart;
its tracked near cache follows the new master (hits from memory, invalidations heard).

Each test starts its own deployment (it is damaged on purpose).  Timings go to stdout
(``pytest -s``): time to the first hit after the kill.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

from ._deployments import start_cluster, start_sentinel
from ._tracking import wait_live
from .conftest import Database
from .models import User

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STMT = select(User.name).where(User.id == 3).options(cached())


def _read(db: Database) -> str:
    with db.Session() as s:
        return str(s.scalar(STMT))


def _survive_failover(
    db: Database, cache: QueryCache, kill: Callable[[], None], other: QueryCache
) -> float:
    cache.attach(db.Session)
    assert _read(db) == "user3"
    with db.counter.expect(0):
        assert _read(db) == "user3"
    killed = time.monotonic()
    kill()
    # while the replica is not yet promoted every query still answers, from the database
    with db.counter.measure() as window:
        for _ in range(5):
            assert _read(db) == "user3"
    assert window.count == 5
    assert cache.stats().errors >= 1
    # the same cache object recovers: a hit without SQL, within the failover time
    deadline = killed + 30
    recovered = None
    while time.monotonic() < deadline:
        with db.counter.measure() as window:
            assert _read(db) == "user3"
        if window.count == 0:
            recovered = time.monotonic() - killed
            break
        time.sleep(0.1)
    assert recovered is not None, "the cache never served a hit again after the failover"
    # and commits invalidate on the new master
    with db.Session() as s:
        s.execute(update(User).where(User.id == 3).values(name="after-failover"))
        s.commit()
    with db.counter.expect(1):
        assert _read(db) == "after-failover"
    with db.counter.expect(0):
        assert _read(db) == "after-failover"
    _near_cache_follows(db, cache, other)
    return recovered


def _near_cache_follows(db: Database, cache: QueryCache, other: QueryCache) -> None:
    """The tracked near cache follows the new master: hits from memory again, and a commit
    by another cache (whose invalidation only reaches us through tracking) is seen."""
    wait_live(cache, timeout=30)
    _read(db)
    _read(db)
    before = cache.stats().near["hits"]
    with db.counter.expect(0):
        assert _read(db) == "after-failover"
    assert cache.stats().near["hits"] == before + 1
    other_sessions = sessionmaker(db.engine)
    other.attach(other_sessions)
    with other_sessions() as s:
        s.execute(update(User).where(User.id == 3).values(name="by-the-other"))
        s.commit()
    with db.counter.expect(1):
        assert _read(db) == "by-the-other"


def test_cluster_master_failover(pg: Database, namespace: str) -> None:
    cluster = start_cluster(masters=3, replicas=1)
    cache = QueryCache.from_url(
        f"redis://127.0.0.1:{cluster.ports[0]}/0",
        namespace=namespace,
        cluster=True,
        breaker_cooldown=0.2,
    )
    try:
        client = cache._storage.store.io.client  # type: ignore[attr-defined]
        # the master holding the namespace token: every read of every entry touches it
        owner = client.get_node_from_key(cache._storage.keys.all_key).port

        def kill() -> None:
            cluster.kill(owner)

        other = QueryCache.from_url(
            f"redis://127.0.0.1:{cluster.ports[1 if cluster.ports[0] == owner else 0]}/0",
            namespace=namespace,
            cluster=True,
            near_cache_tracking=False,
        )
        recovered = _survive_failover(pg, cache, kill, other)
        other.close()
        cluster.wait_healthy()
        assert owner not in cluster.masters()
        print(f"\ncluster: first hit {recovered:.2f}s after the master was killed")
    finally:
        cache.close()
        cluster.close()


def test_sentinel_failover(pg: Database, namespace: str) -> None:
    setup = start_sentinel(sentinels=3)
    cache = QueryCache.from_url(
        f"redis+sentinel://{setup.nodes}/{setup.name}/0",
        namespace=namespace,
        breaker_cooldown=0.2,
    )
    try:
        other = QueryCache.from_url(
            f"redis+sentinel://{setup.nodes}/{setup.name}/0",
            namespace=namespace,
            near_cache_tracking=False,
        )
        recovered = _survive_failover(pg, cache, lambda: setup.kill(setup.master), other)
        other.close()
        assert setup.master_port() == setup.replica
        print(f"\nsentinel: first hit {recovered:.2f}s after the master was killed")
    finally:
        cache.close()
        setup.close()


def test_cluster_unreachable_at_startup_connects_later(pg: Database, namespace: str) -> None:
    """Building the cache must not need the cluster: it fails open until the nodes answer."""
    from ._services import free_port

    port = free_port(cluster_bus=True)
    cache = QueryCache.from_url(
        f"redis://127.0.0.1:{port}/0", namespace=namespace, cluster=True, breaker_cooldown=0.1
    )
    cluster = None
    try:
        cache.attach(pg.Session)
        for _ in range(2):
            with pg.counter.expect(1):
                assert _read(pg) == "user3"
        assert cache.stats().errors >= 1
        cluster = start_cluster(masters=3, replicas=0, first_port=port)
        time.sleep(0.2)  # the breaker's cool-down
        _read(pg)
        with pg.counter.expect(0):
            assert _read(pg) == "user3"
    finally:
        cache.close()
        if cluster is not None:
            cluster.close()
