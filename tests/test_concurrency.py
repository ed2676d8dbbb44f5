"""Freshness under concurrency: no reader ever sees a value older than a returned commit.

The consistency run (``_faults.run_consistency``) has one writer commit 1, 2, 3, ... while
readers run the same cached query; a read is stale when it returns less than the last value
whose commit had returned before the read began.  The same run is repeated under Redis
eviction and restarts in ``test_faults.py``; the single fill race is in ``test_freshness.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

from ._faults import run_consistency, set_balance
from .conftest import Database
from .models import Org, User

BALANCE = select(User.balance).where(User.id == 1).options(cached())


def balance(Session_: Any, stmt: Any = BALANCE) -> int:
    with Session_() as s:
        return int(s.scalar(stmt))


def test_consistency_zero_stale_reads(
    pg: Database, cache: QueryCache, capsys: pytest.CaptureFixture[str]
) -> None:
    cache.attach(pg.Session)
    result = run_consistency(pg.Session, cache, commits=200, readers=4, between_commits=0.003)
    with capsys.disabled():
        print(
            f"\n[consistency] {result.reads} reads, {result.commits} commits, "
            f"{result.hits} hits, {len(result.stale)} stale"
        )
    assert result.errors == []
    assert result.commits == 200
    assert result.stale == []
    assert result.reads > 200 and result.hits > 100  # the cache really served reads


def test_a_lost_token_is_a_miss_never_a_stale_hit(
    pg: Database, cache: QueryCache, redis_url: str
) -> None:
    """Eviction or a restart can drop a token after a commit replaced it; whoever creates it
    again must not revive entries stamped before the commit (tokens are random, not counters).
    """
    cache.attach(pg.Session)
    other = select(User.balance, User.name).where(User.id == 1).options(cached())
    client = redis.Redis.from_url(redis_url)
    ns = cache.config.namespace

    def lose_tokens() -> int:  # the table's tokens, and the value tokens of fine-grained reads
        keys = [f"{ns}:t:app_user", f"{ns}:u:app_user", *client.keys(f"{ns}:v:*")]
        return int(client.delete(*keys))

    try:
        set_balance(pg.Session, 40)
        lose_tokens()  # lost: the next fill creates them
        assert balance(pg.Session) == 40
        with pg.Session() as s:
            assert int(s.execute(other).one().balance) == 40  # both stamped with that token
        set_balance(pg.Session, 41)
        assert lose_tokens() >= 2  # ... and lost again
    finally:
        client.close()
    with pg.counter.expect(1):
        assert balance(pg.Session) == 41  # re-creates the token
    with pg.counter.expect(1), pg.Session() as s:
        assert int(s.execute(other).one().balance) == 41  # not revived by it
    with pg.counter.expect(0):
        assert balance(pg.Session) == 41


def test_serializable_snapshot_older_than_a_commit_never_fills_the_cache(
    pg: Database, cache: QueryCache
) -> None:
    """REPEATABLE READ: test_freshness.py; here SERIALIZABLE and the engine-level setting."""
    snapshot_sessions = sessionmaker(pg.engine.execution_options(isolation_level="SERIALIZABLE"))
    cache.attach(pg.Session)
    cache.attach(snapshot_sessions)
    set_balance(pg.Session, 10)
    with snapshot_sessions() as old:
        old.execute(select(Org.id)).all()  # the snapshot is taken here
        set_balance(pg.Session, 11)  # another session commits after it
        assert balance(lambda: _Same(old)) == 10  # the snapshot's truth, read uncached
    with pg.counter.expect(1):
        assert balance(pg.Session) == 11
    with pg.counter.expect(0):
        assert balance(pg.Session) == 11


def test_snapshot_isolation_set_on_the_engine(pg: Database, cache: QueryCache) -> None:
    engine = create_engine(pg.url, isolation_level="REPEATABLE READ")
    try:
        snapshot_sessions = sessionmaker(engine)
        cache.attach(snapshot_sessions)
        cache.attach(pg.Session)
        set_balance(pg.Session, 20)
        with snapshot_sessions() as old:
            old.execute(select(Org.id)).all()
            set_balance(pg.Session, 21)
            assert balance(lambda: _Same(old)) == 20
        assert balance(pg.Session) == 21
    finally:
        engine.dispose()


class _Same:
    """Use an open session as a context manager without closing it."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __enter__(self) -> Any:
        return self.session

    def __exit__(self, *exc: object) -> None:
        pass
