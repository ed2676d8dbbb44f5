"""Sentinel (master, replica, three sentinels), started by the tests: every command, reads
included, goes to the master.  The core and contract tests run on it too (conftest.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from sqla_redis_cache import QueryCache, cached

from ._deployments import SentinelSetup, admin
from .conftest import Database
from .models import User

pytestmark = [pytest.mark.cluster, pytest.mark.deployments("sentinel")]


def test_reads_and_invalidations_go_to_the_master(
    db: Database, cache: QueryCache, sentinel: SentinelSetup
) -> None:
    """A replica may lag behind a commit's token bump: reading there could serve stale rows."""
    replica, master = admin(sentinel.replica), admin(sentinel.master)
    replica.config_resetstat()  # a throwaway server of this test module
    master.config_resetstat()
    cache.attach(db.Session)
    stmt = select(User.name).where(User.id == 5).options(cached())
    for _ in range(3):
        with db.Session() as s:
            s.scalar(stmt)
    with db.Session() as s:
        s.execute(update(User).where(User.id == 5).values(name="fresh"))
        s.commit()
    with db.counter.expect(1), db.Session() as s:
        assert s.scalar(stmt) == "fresh"
    on_replica = replica.info("commandstats")
    on_master = master.info("commandstats")
    assert "cmdstat_mget" in on_master and "cmdstat_set" in on_master
    assert not {"cmdstat_mget", "cmdstat_get"} & set(on_replica), on_replica
