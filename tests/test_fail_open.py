"""Redis down or dying never breaks a query; invalidations that failed are not forgotten."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from sqla_redis_cache import CacheConfig, QueryCache, cached

from . import _services
from .conftest import Database
from .models import User

STMT = select(User.name).where(User.id == 1).options(cached())


def one(db: Database) -> str:
    with db.Session() as s:
        return str(s.execute(STMT).scalar_one())


def test_timeouts_default_to_tens_of_milliseconds() -> None:
    config = CacheConfig()
    assert config.connect_timeout <= 0.1 and config.socket_timeout <= 0.1


def test_unreachable_redis_serves_from_the_database(
    db: Database, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"redis://127.0.0.1:{_services.free_port()}/0"
    cache = QueryCache.from_url(dead, namespace=namespace, breaker_threshold=3)
    cache.attach(db.Session)
    try:
        with caplog.at_level(logging.WARNING, logger="sqla_redis_cache"), db.counter.expect(5):
            assert [one(db) for _ in range(5)] == ["user1"] * 5
        st = cache.stats()
        assert st.errors == 3  # then the breaker stopped calling Redis
        assert st.bypasses == 5 and st.hits == 0
        warnings = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(warnings) == 1  # rate-limited
        with db.Session.begin() as s:  # a commit with Redis down does not raise
            s.execute(update(User).where(User.id == 1).values(name="while-down"))
        assert one(db) == "while-down"
        # the generic API fails open too
        assert cache.get("k") is None
        assert cache.set("k", 1) is False
        assert cache.get_or_set("k", lambda: 41 + 1) == 42
    finally:
        cache.close()


def test_clear_and_delete_pattern_report_failure_alike(namespace: str) -> None:
    """Both delete keys by pattern; both say -1 when Redis was unavailable."""
    cache = QueryCache.from_url(f"redis://127.0.0.1:{_services.free_port()}/0", namespace=namespace)
    try:
        assert cache.delete_pattern("user:*") == -1
        assert cache.clear() == -1
    finally:
        cache.close()


@pytest.fixture
def throwaway() -> Iterator[tuple[str, int]]:
    port = _services.free_port()
    proc = _services.start_redis_server(port)
    yield f"redis://127.0.0.1:{port}/0", port
    _services.stop(proc)


@pytest.mark.slow
def test_redis_killed_mid_run_and_restarted_empty(db: Database, namespace: str) -> None:
    import time

    port = _services.free_port()
    proc = _services.start_redis_server(port)
    cache = QueryCache.from_url(
        f"redis://127.0.0.1:{port}/0", namespace=namespace, breaker_cooldown=0.1
    )
    cache.attach(db.Session)
    try:
        assert one(db) == "user1"
        with db.counter.expect(0):
            assert one(db) == "user1"
        proc.kill()
        proc.wait()
        with db.counter.expect(3):
            assert [one(db) for _ in range(3)] == ["user1"] * 3
        with db.Session.begin() as s:
            s.execute(update(User).where(User.id == 1).values(name="during-outage"))
        assert one(db) == "during-outage"
        proc = _services.start_redis_server(port)  # back, and empty
        time.sleep(0.15)
        assert one(db) == "during-outage"  # refills by itself
        with db.counter.expect(0):
            assert one(db) == "during-outage"
        assert cache.stats().errors >= 1
    finally:
        cache.close()
        _services.stop(proc)


@pytest.mark.slow
def test_failed_invalidation_is_retried_before_serving(
    db: Database, namespace: str, throwaway: tuple[str, int]
) -> None:
    """Redis unreachable at commit but keeps its data: this process must not serve the entry
    it failed to invalidate; the retry lands before its next read is served."""
    import time

    import redis

    url, _ = throwaway
    cache = QueryCache.from_url(url, namespace=namespace, breaker_cooldown=0.05)
    cache.attach(db.Session)
    admin = redis.Redis.from_url(url)
    try:
        assert one(db) == "user1"  # filled
        admin.execute_command("CLIENT", "PAUSE", 400, "ALL")  # unreachable, data intact
        with db.Session.begin() as s:
            s.execute(update(User).where(User.id == 1).values(name="changed"))
        assert cache._storage.versions.owes
        time.sleep(0.45)
        assert one(db) == "changed"  # not the stale "user1" that is still in Redis
        assert not cache._storage.versions.owes
        with db.counter.expect(0):
            assert one(db) == "changed"
    finally:
        cache.close()


@pytest.mark.slow
def test_an_invalidation_lost_in_a_failover_is_never_served(
    db: Database, namespace: str, throwaway: tuple[str, int]
) -> None:
    """A promoted replica may miss the last token replacements.  Emulated here: the token is
    put back to its old value, and the server is unreachable for a moment (connections dropped,
    clients paused).  Having seen Redis fail, the process replaces the namespace token before
    it serves anything again."""
    import time

    import redis

    url, _ = throwaway
    cache = QueryCache.from_url(url, namespace=namespace, breaker_cooldown=0.05)
    cache.attach(db.Session)
    admin = redis.Redis.from_url(url)
    token_key = f"{namespace}:u:app_user"  # what STMT (fine-grained, by id) depends on
    try:
        assert one(db) == "user1"  # filled
        old_token = admin.get(token_key)
        with db.Session.begin() as s:
            s.execute(update(User).where(User.id == 1).values(name="changed"))
        admin.set(token_key, old_token)  # the replacement is "lost"...
        admin.client_kill_filter(_type="normal", skipme=True)  # ...in an outage
        admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
        assert one(db) == "changed"  # Redis unreachable: from the database
        time.sleep(0.35)
        assert [one(db) for _ in range(3)] == ["changed"] * 3
        with db.counter.expect(0):
            assert one(db) == "changed"
    finally:
        cache.close()


@pytest.mark.slow
@pytest.mark.parametrize("breaker_threshold", [3, 1], ids=["breaker-closed", "breaker-open"])
def test_a_stalled_invalidation_reaches_other_processes_without_the_writer(
    db: Database, namespace: str, throwaway: tuple[str, int], breaker_threshold: int
) -> None:
    """Redis stalls (``CLIENT PAUSE 250``) during ``commit()``: the commit returns, its
    invalidation is owed.  The writing process never touches the cache again, yet another
    process (a second cache on its own engine) sees the change shortly after Redis answers
    again: the writer retries in the background, and not behind its circuit breaker (opened by
    the stall with ``breaker_threshold=1``, its cool-down far longer than this test)."""
    import time

    import redis
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    url, _ = throwaway
    writer = QueryCache.from_url(
        url, namespace=namespace, breaker_threshold=breaker_threshold, breaker_cooldown=60
    )
    writer.attach(db.Session)
    other_engine = create_engine(db.url)
    other_sessions = sessionmaker(other_engine)
    other = QueryCache.from_url(url, namespace=namespace, socket_timeout=2, connect_timeout=2)
    other.attach(other_sessions)
    admin = redis.Redis.from_url(url, socket_timeout=10)

    def read_elsewhere() -> str:
        with other_sessions() as s:
            return str(s.execute(STMT).scalar_one())

    try:
        assert read_elsewhere() == "user1"  # filled
        assert read_elsewhere() == "user1" and other.stats().hits == 1
        admin.execute_command("CLIENT", "PAUSE", 250, "ALL")
        with db.Session.begin() as s:
            s.execute(update(User).where(User.id == 1).values(name="changed"))
        assert writer._storage.versions.owes  # the commit returned, its invalidation owed
        assert writer._storage.store.breaker.is_open == (breaker_threshold == 1)
        fresh = redis.Redis.from_url(url, socket_timeout=10)
        fresh.ping()  # answered once the pause is over (the other cache stayed idle meanwhile)
        fresh.close()
        answered = time.monotonic()
        deadline = answered + 5
        seen = read_elsewhere()
        while seen != "changed" and time.monotonic() < deadline:
            time.sleep(0.002)
            seen = read_elsewhere()
        stale_ms = (time.monotonic() - answered) * 1000
        print(f"\n[stall] other process stale for {stale_ms:.0f} ms after Redis answered again")
        assert seen == "changed"
        assert other.stats().errors == 0  # it never saw the stall: nothing of its own helped
        while writer._storage.versions.owes and time.monotonic() < deadline:
            time.sleep(0.002)
        assert not writer._storage.versions.owes
    finally:
        writer.close()
        other.close()
        other_engine.dispose()
        admin.close()
