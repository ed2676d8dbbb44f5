"""Redis Cluster (3 masters, 1 replica each), started by the tests: the whole contract again.

The core test modules and test_deployment_contract.py run unchanged against the same cluster
(the ``deployments`` marker, conftest.py); the tests below add what only a cluster has: keys
spread over slots on every master, and no CROSSSLOT error on any node after all of it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from sqla_redis_cache import QueryCache, cached

from ._deployments import CLUSTER_USER_RULES, Cluster, add_cache_user, admin, namespace_keys
from .conftest import Database, RedisTarget
from .models import User

pytestmark = [pytest.mark.cluster, pytest.mark.deployments("cluster")]


def test_cache_uses_a_cluster_client(cache: QueryCache) -> None:
    from redis.cluster import RedisCluster

    assert isinstance(cache._storage.store.io.client, RedisCluster)  # type: ignore[attr-defined]


def test_a_closed_cache_stays_usable(cache: QueryCache) -> None:
    """redis-py's RedisCluster.close() leaves a client that raises AttributeError on use."""
    cache.set("k", 1)
    cache.close()
    assert cache.get("k") == 1
    assert cache.clear() >= 1


def test_entries_and_tokens_spread_over_every_master(
    db: Database, cache: QueryCache, redis_target: RedisTarget, cluster: Cluster
) -> None:
    cache.attach(db.Session)
    for user_id in range(1, 7):
        with db.Session() as s:
            s.scalars(select(User).where(User.id == user_id).options(cached())).one()
    for i in range(30):
        cache.set(f"v{i}", i, tags=[f"tag{i}"])
    keys = namespace_keys(redis_target, cache)
    match = cache.config.namespace + ":*"
    per_master = {p: len(list(admin(p).scan_iter(match=match))) for p in cluster.masters()}
    assert len(per_master) == 3 and all(n > 0 for n in per_master.values()), per_master
    assert sum(per_master.values()) == len(keys) > 60


def test_restricted_acl_user_on_the_cluster(db: Database, cluster: Cluster, namespace: str) -> None:
    """The ACL rules of docs/deployment.md plus the slot-map read, set on every node."""
    for port in cluster.alive():
        add_cache_user(admin(port), "clusteruser", "pw", f"{namespace}")
        admin(port).execute_command("ACL", "SETUSER", "clusteruser", *CLUSTER_USER_RULES)
    qc = QueryCache.from_url(
        f"redis://127.0.0.1:{cluster.ports[0]}/0",
        namespace=namespace,
        cluster=True,
        username="clusteruser",
        password="pw",
    )
    qc.attach(db.Session)
    try:
        stmt = select(User.name).where(User.id == 4).options(cached(tags=["x"]))
        with db.Session() as s:
            s.scalar(stmt)
        with db.counter.expect(0), db.Session() as s:
            assert s.scalar(stmt) == "user4"
        assert qc.get_or_set("v", lambda: 1) == 1
        assert qc.clear() > 0
        assert qc.stats().errors == 0
    finally:
        qc.close()


def test_no_crossslot_error_on_any_node(db: Database, cache: QueryCache, cluster: Cluster) -> None:
    """Runs last in this module: the tests above (and the core and contract tests on this
    cluster, grouped before them by the session-wide deployment) caused no CROSSSLOT."""
    cache.attach(db.Session)
    with db.Session() as s:
        s.scalars(select(User).where(User.org_id == 2).options(cached(tags=["a", "b"]))).all()
    cache.region("db_query").get_multi([f"k{i}" for i in range(10)])
    cache.clear()
    for port in cluster.alive():
        errors = admin(port).info("errorstats")
        assert not any("CROSSSLOT" in name for name in errors), (port, errors)
