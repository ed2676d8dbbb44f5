"""The tracked near cache: repeated hits send nothing to Redis, and never serve what another
process's returned commit changed (docs/concepts.md, "The near cache").

Redis commands are seen by the server: ``MONITOR`` lines naming the cache's namespace (other
clients of a shared deployment do not count), or ``INFO commandstats`` on a server a test starts
itself; the tracking connection's own heartbeat (``ROLE``) and handshake are not data commands.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Column, Integer, MetaData, Table, delete, insert, select
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

from . import _services
from ._tracking import ahits_send_nothing, hits_send_nothing, wait_live
from .conftest import Database, RedisTarget

pytestmark = pytest.mark.deployments("standalone", "cluster", "sentinel")

ROOT = Path(__file__).resolve().parent.parent
#: what the tracking connection itself sends
NOT_DATA = {"role", "hello", "client|tracking", "client|setname", "client", "info", "ping"}


def data_commands(clients: list[Any]) -> int:
    total = 0
    for client in clients:
        for name, figures in client.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            if command not in NOT_DATA and not command.startswith(("client", "cluster", "config")):
                total += int(figures["calls"])
    return total


def masters(target: RedisTarget) -> list[Any]:
    client = target.client()
    if target.settings.get("cluster"):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A Redis server of this test alone: its command counts are ours."""
    port = _services.free_port()
    proc = _services.start_redis_server(
        port, "--maxmemory", "8mb", "--maxmemory-policy", "allkeys-lru"
    )
    yield f"redis://127.0.0.1:{port}/0"
    _services.stop(proc)


metadata = MetaData()
counter = Table(
    "near_counter", metadata, Column("id", Integer, primary_key=True), Column("n", Integer)
)


@pytest.fixture
def counter_db(pg: Database) -> Database:
    metadata.create_all(pg.engine)
    with pg.engine.begin() as conn:
        conn.execute(delete(counter))
        conn.execute(insert(counter).values(id=1, n=0))
    return pg


COUNTER = select(counter.c.n).where(counter.c.id == 1).options(cached())


def read_counter(db: Database) -> int:
    with db.Session() as s:
        return int(s.execute(COUNTER).scalar_one())


def attached(cache: QueryCache, db: Database) -> QueryCache:
    cache.attach(db.Session)
    wait_live(cache)
    return cache


# --------------------------------------------------------------------------- no round trip


def test_repeated_hit_sends_no_redis_command(
    counter_db: Database, redis_target: RedisTarget, namespace: str, request: Any
) -> None:
    if not redis_target.settings:  # the shared standalone server: count on a private one
        redis_target = RedisTarget(request.getfixturevalue("private_redis"))
    cache = attached(redis_target.cache(namespace), counter_db)
    try:
        nodes = masters(redis_target)
        assert read_counter(counter_db) == 0  # miss: fills Redis
        assert read_counter(counter_db) == 0  # hit through Redis: kept in memory
        with counter_db.counter.expect(0):
            hits_send_nothing(cache, nodes, lambda: read_counter(counter_db))
        assert cache.stats().near["hits"] >= 50
        # a commit through the same cache is seen at once (read-your-own-writes)
        with counter_db.Session() as s:
            s.execute(counter.update().values(n=1))
            s.commit()
        assert read_counter(counter_db) == 1
    finally:
        cache.clear()
        cache.close()


def test_generic_api_hits_from_memory(private_redis: str, namespace: str) -> None:
    cache = QueryCache.from_url(private_redis, namespace=namespace, stats_interval=0)
    wait_live(cache)
    nodes = [redis.Redis.from_url(private_redis)]
    try:
        assert cache.get_or_set("k", lambda: {"v": 1}) == {"v": 1}
        assert cache.get_or_set("k", lambda: {"v": 2}) == {"v": 1}
        hits_send_nothing(cache, nodes, lambda: cache.get_or_set("k", lambda: {"v": 3}), 20)
        assert cache.get_or_set("k", lambda: {"v": 3}) == {"v": 1}
        cache.set("k", {"v": 4})
        assert cache.get_or_set("k", lambda: {"v": 5}) == {"v": 4}
    finally:
        cache.close()


def test_switch_off_validates_every_hit(private_redis: str, namespace: str) -> None:
    cache = QueryCache.from_url(
        private_redis, namespace=namespace, stats_interval=0, near_cache_tracking=False
    )
    nodes = [redis.Redis.from_url(private_redis)]
    try:
        assert cache._storage.near is None
        cache.get_or_set("k", lambda: 1)
        before = data_commands(nodes)
        for _ in range(10):
            assert cache.get_or_set("k", lambda: 2) == 1
        assert data_commands(nodes) - before == 10
        assert cache.stats().near == {}
    finally:
        cache.close()


# --------------------------------------------------------------------------- other processes


class Peer:
    """A ``tests._near_writer`` process driven line by line."""

    def __init__(self, mode: str, db: Database, redis_url: str, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests._near_writer", mode, db.url, redis_url, namespace],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.ask("") == "ready"

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer, f"peer exited with {self.proc.poll()}"
        return answer

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_no_process_serves_a_near_entry_after_another_process_commit_returned(
    counter_db: Database, redis_url: str, namespace: str
) -> None:
    """Loop: this process and a reader process hold the counter in memory; a writer process
    commits; as soon as its commit() returned, both read, and must see the new value."""
    cache = attached(
        QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0), counter_db
    )
    writer = Peer("writer", counter_db, redis_url, namespace)
    reader = Peer("reader", counter_db, redis_url, namespace)
    served_from_memory = 0
    try:
        for n in range(1, 151):
            assert read_counter(counter_db) == n - 1
            assert read_counter(counter_db) == n - 1
            value, from_memory = reader.ask("read").split()
            assert int(value) == n - 1
            value, from_memory = reader.ask("read").split()
            served_from_memory += int(from_memory)
            assert writer.ask(str(n)) == str(n)  # the commit has returned
            assert read_counter(counter_db) == n, f"stale near entry in this process at {n}"
            value, _ = reader.ask("read").split()
            assert int(value) == n, f"stale near entry in the reader process at {n}"
        assert served_from_memory > 100
        assert cache.stats().near["hits"] > 100
    finally:
        writer.close()
        reader.close()
        cache.clear()
        cache.close()


# --------------------------------------------------------------------------- losing tracking


def test_killed_tracking_connection_falls_back_then_recovers(
    counter_db: Database, private_redis: str, namespace: str
) -> None:
    cache = attached(
        QueryCache.from_url(private_redis, namespace=namespace, stats_interval=0), counter_db
    )
    other = QueryCache.from_url(
        private_redis, namespace=namespace, stats_interval=0, near_cache_tracking=False
    )
    other_session = sessionmaker(counter_db.engine)
    other.attach(other_session)
    admin = redis.Redis.from_url(private_redis)
    try:
        for round_ in range(1, 6):
            assert read_counter(counter_db) == round_ - 1
            assert read_counter(counter_db) == round_ - 1  # from memory now
            assert _kill_tracking(admin, namespace) == 1
            with other_session() as s:  # its invalidation cannot reach the dead connection
                s.execute(counter.update().values(n=round_))
                s.commit()
            assert read_counter(counter_db) == round_, "served from memory without tracking"
            wait_live(cache)
        figures = cache.stats().near
        assert figures["resets"] >= 5 and figures["live"] == 1
    finally:
        other.close()
        cache.clear()
        cache.close()


def _kill_tracking(admin: Any, namespace: str) -> int:
    name = f"sqla-redis-cache-tracking:{namespace}"
    ids = [c["id"] for c in admin.client_list() if c["name"] == name]
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    return len(ids)


def test_flushall_and_eviction_are_misses(
    counter_db: Database, private_redis: str, namespace: str
) -> None:
    cache = attached(
        QueryCache.from_url(private_redis, namespace=namespace, stats_interval=0), counter_db
    )
    admin = redis.Redis.from_url(private_redis)
    try:
        read_counter(counter_db)
        read_counter(counter_db)
        admin.flushall()
        with counter_db.counter.expect(1):  # nothing served from memory after FLUSHALL
            assert read_counter(counter_db) == 0
        wait_live(cache)
        read_counter(counter_db)
        # fill Redis past maxmemory with keys outside the namespace: ours get evicted
        junk = b"x" * 10_000
        for i in range(3000):
            admin.set(f"junk:{i}", junk)
            if not admin.keys(f"{namespace}:*"):
                break
        assert not admin.keys(f"{namespace}:*"), "nothing was evicted"
        with counter_db.counter.expect(1):
            assert read_counter(counter_db) == 0
    finally:
        admin.flushall()
        cache.close()


def test_asyncio_hits_from_memory_and_sees_commits(
    counter_db: Database, private_redis: str, namespace: str
) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    cache = QueryCache.from_url(private_redis, namespace=namespace, stats_interval=0)
    wait_live(cache)
    nodes = [redis.Redis.from_url(private_redis)]

    async def main() -> None:
        engine = create_async_engine(_services.postgres_async_url())
        session = async_sessionmaker(engine)
        cache.attach(session)

        async def value() -> int:
            async with session() as s:
                return int((await s.execute(COUNTER)).scalar_one())

        try:
            assert await value() == 0
            assert await value() == 0
            await ahits_send_nothing(cache, nodes, value)
            assert await value() == 0
            async with session() as s:
                await s.execute(counter.update().values(n=7))
                await s.commit()
            assert await value() == 7
        finally:
            await cache.aclose()
            await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        cache.close()


def test_a_forked_child_tracks_on_its_own(
    counter_db: Database, private_redis: str, namespace: str
) -> None:
    """After ``fork()`` the child must not read the parent's tracking socket (it would steal
    the parent's messages): it starts its own connection; both stay fresh."""
    import os

    cache = attached(
        QueryCache.from_url(private_redis, namespace=namespace, stats_interval=0), counter_db
    )
    other = QueryCache.from_url(
        private_redis, namespace=namespace, stats_interval=0, near_cache_tracking=False
    )
    other_session = sessionmaker(counter_db.engine)
    other.attach(other_session)
    try:
        assert read_counter(counter_db) == 0
        assert read_counter(counter_db) == 0
        counter_db.engine.dispose(close=False)  # the child gets its own database connections
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its own tracking connection, and fresh reads
            code = 1
            try:
                os.close(from_parent)
                os.close(to_parent)
                wait_live(cache)
                assert read_counter(counter_db) == 0
                assert read_counter(counter_db) == 0
                os.write(from_child, b"r")
                os.read(to_child, 1)  # the parent committed
                code = 0 if read_counter(counter_db) == 5 else 2
            finally:
                os._exit(code)
        os.close(to_child)
        os.close(from_child)
        assert os.read(to_parent, 1) == b"r", "the child failed before reading"
        with other_session() as s:
            s.execute(counter.update().values(n=5))
            s.commit()
        assert read_counter(counter_db) == 5  # the parent still hears its messages
        os.write(from_parent, b"c")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        names = [c["name"] for c in redis.Redis.from_url(private_redis).client_list()]
        assert names.count(f"sqla-redis-cache-tracking:{namespace}") == 1  # the child's closed
    finally:
        other.close()
        cache.clear()
        cache.close()


def test_an_acl_user_without_role_gets_ping_heartbeats(
    counter_db: Database, private_redis: str, namespace: str
) -> None:
    from ._deployments import add_cache_user

    admin = redis.Redis.from_url(private_redis)
    add_cache_user(admin, "norole", "pw", namespace)
    url = private_redis.replace("redis://", "redis://norole:pw@")
    cache = attached(QueryCache.from_url(url, namespace=namespace, stats_interval=0), counter_db)
    try:
        links = cache._storage.near._links  # type: ignore[union-attr]
        assert links and not links[0].checks_role
        read_counter(counter_db)
        read_counter(counter_db)
        time.sleep(0.6)  # heartbeats keep the lease
        before = cache.stats().near["hits"]
        assert read_counter(counter_db) == 0
        assert cache.stats().near["hits"] == before + 1
        assert cache.stats().near["resets"] == 0
    finally:
        cache.close()


def test_a_cache_dropped_without_close_ends_its_tracking(
    private_redis: str, namespace: str
) -> None:
    import gc

    cache = QueryCache.from_url(private_redis, namespace=namespace, stats_interval=0)
    wait_live(cache)
    thread = cache._storage.near._thread  # type: ignore[union-attr]
    assert thread is not None and thread.is_alive()
    del cache
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_backlog_of_invalidations_empties_memory_until_a_new_heartbeat(
    private_redis: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More bytes waiting than the threshold: Redis may still hold more for us (our socket
    buffer was full), so memory is emptied and only a heartbeat sent afterwards restores it."""
    from sqla_redis_cache.storage import _near

    monkeypatch.setattr(_near, "BACKLOG_BYTES", 200)
    cache = QueryCache.from_url(private_redis, namespace=namespace, stats_interval=0)
    wait_live(cache)
    admin = redis.Redis.from_url(private_redis)
    try:
        cache.get_or_set("k", lambda: 1)
        assert cache.get_or_set("k", lambda: 2) == 1
        near = cache._storage.near
        assert near is not None
        with near._lock:  # hold the background thread off: the messages pile up
            for i in range(20):
                admin.set(f"{namespace}:other:{i}", b"x")
            time.sleep(0.05)
            assert not near._trusted()
            assert len(near._data) == 0
        assert near.resets == 1
        assert cache.get_or_set("k", lambda: 3) == 1  # validated: Redis still has it
        wait_live(cache)
        cache.get_or_set("k", lambda: 4)
        before = near.hits
        assert cache.get_or_set("k", lambda: 5) == 1
        assert near.hits == before + 1
    finally:
        cache.close()


def test_delete_pattern_forgets_memory(private_redis: str, namespace: str) -> None:
    cache = QueryCache.from_url(private_redis, namespace=namespace, stats_interval=0)
    wait_live(cache)
    try:
        cache.set("a1", 1)
        assert cache.get("a1") == 1
        before = cache.stats().near["hits"]
        assert cache.get("a1") == 1
        assert cache.stats().near["hits"] == before + 1  # from memory
        cache.delete_pattern("a*")
        assert cache.get("a1") is None
        assert cache.get_or_set("a1", lambda: 2) == 2
    finally:
        cache.close()
