"""AsyncSession on asyncpg and aiosqlite: the same guarantees, and the event loop never blocks.

Each test runs one event loop (``asyncio.run``) with its own async engine, counted at the driver
(``tests/_counting.py``), against the same seeded databases as the sync tests.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sqla_redis_cache import QueryCache, cached

from . import _services
from ._busy import while_redis_is_busy
from ._counting import Counter, make_counted_async_engine
from .conftest import EVERY_DEPLOYMENT, Database, RedisTarget, _database
from .models import User

#: every test building its caches through ``redis_target`` runs on each deployment
pytestmark = EVERY_DEPLOYMENT

T = TypeVar("T")


@dataclass
class AsyncDb:
    name: str
    url: str
    sync: Database


@dataclass
class Loop:
    """What one test's event loop uses."""

    engine: AsyncEngine
    counter: Counter
    Session: async_sessionmaker[AsyncSession]


@pytest.fixture(params=["postgresql", "sqlite"])
def adb(request: pytest.FixtureRequest, postgres_url: str, sqlite_url: str) -> AsyncDb:
    """Seeded data, reached through asyncpg or aiosqlite."""
    if request.param == "postgresql":
        return AsyncDb(
            "postgresql", _services.postgres_async_url(), _database("postgresql", postgres_url)
        )
    url = sqlite_url.replace("sqlite://", "sqlite+aiosqlite://", 1)
    return AsyncDb("sqlite", url, _database("sqlite", sqlite_url))


@pytest.fixture
def apg(postgres_url: str) -> AsyncDb:
    return AsyncDb(
        "postgresql", _services.postgres_async_url(), _database("postgresql", postgres_url)
    )


def run(
    adb: AsyncDb,
    cache: QueryCache,
    body: Callable[[Loop], Awaitable[T]],
    *,
    attach: bool = True,
    timeout: float = 60.0,
) -> T:
    async def main() -> T:
        engine, counter = make_counted_async_engine(adb.url)
        loop = Loop(engine, counter, async_sessionmaker(engine, expire_on_commit=False))
        if attach:
            cache.attach(loop.Session)
        try:
            return await asyncio.wait_for(body(loop), timeout)
        finally:
            await cache.aclose()
            await engine.dispose()

    return asyncio.run(main())


BY_ORG = select(User).where(User.org_id == 1).order_by(User.id)


async def names(loop: Loop, stmt: Any) -> list[str]:
    async with loop.Session() as s:
        return [u.name for u in (await s.scalars(stmt)).all()]


# --------------------------------------------------------------------------- query cache


def test_async_hit_sends_no_sql(adb: AsyncDb, cache: QueryCache) -> None:
    async def body(loop: Loop) -> None:
        stmt = BY_ORG.options(cached(tags=["org:1"]))
        with loop.counter.expect(1):
            assert await names(loop, stmt) == ["user1", "user2", "user3"]
        with loop.counter.expect(0):
            assert await names(loop, stmt) == ["user1", "user2", "user3"]
        async with loop.Session() as s:
            fresh = (await s.execute(select(User.id, User.balance).options(cached()))).all()
        with loop.counter.expect(0):
            async with loop.Session() as s:
                again = (await s.execute(select(User.id, User.balance).options(cached()))).all()
        assert again == fresh and len(fresh) == 6

    run(adb, cache, body)
    st = cache.stats()
    assert (st.hits, st.misses) == (2, 2)


def test_async_session_get_with_cached_option(adb: AsyncDb, cache: QueryCache) -> None:
    async def body(loop: Loop) -> None:
        async with loop.Session() as s:
            user = await s.get(User, 5, options=[cached()])
            assert user is not None and user.name == "user5"
        with loop.counter.expect(0):
            async with loop.Session() as s:
                user = await s.get(User, 5, options=[cached()])
                assert user is not None and user.name == "user5"

    run(adb, cache, body)


def test_async_commit_writes_through_what_the_database_stored(
    adb: AsyncDb, cache: QueryCache
) -> None:
    async def body(loop: Loop) -> None:
        async with loop.Session() as s:
            user = await s.get(User, 5, options=[cached()])
            assert user is not None
            user.balance = Decimal("1.005")  # Numeric(12, 2): rounded or truncated when stored
            with loop.counter.expect(2):  # the UPDATE, and the reload of the row
                await s.commit()
        async with loop.Session() as s:
            stored = (await s.get_one(User, 5)).balance
        with loop.counter.expect(0):
            async with loop.Session() as s:
                assert (await s.get_one(User, 5, options=[cached()])).balance == stored
        assert stored != Decimal("1.005")

    run(adb, cache, body)


def test_async_commit_invalidates_and_reads_own_writes(adb: AsyncDb, cache: QueryCache) -> None:
    stmt = BY_ORG.options(cached())

    async def body(loop: Loop) -> None:
        await names(loop, stmt)
        async with loop.Session() as s:
            user = await s.get(User, 1)
            assert user is not None
            user.name = "renamed"
            # autoflush, then the read bypasses the cache: the transaction sees its own write
            with loop.counter.expect(2):
                assert (await s.scalars(stmt)).first().name == "renamed"  # type: ignore[union-attr]
            await s.rollback()
        # nothing uncommitted was stored, and the rollback invalidated nothing
        with loop.counter.expect(0):
            assert (await names(loop, stmt))[0] == "user1"
        async with loop.Session() as s:
            await s.execute(update(User).where(User.id == 2).values(name="committed"))
            await s.commit()
        with loop.counter.expect(1):
            assert await names(loop, stmt) == ["user1", "committed", "user3"]
        with loop.counter.expect(0):
            assert await names(loop, stmt) == ["user1", "committed", "user3"]

    run(adb, cache, body)


def test_sync_commit_invalidates_async_entries(apg: AsyncDb, cache: QueryCache) -> None:
    cache.attach(apg.sync.Session)
    stmt = BY_ORG.options(cached())

    async def body(loop: Loop) -> None:
        await names(loop, stmt)
        with apg.sync.Session() as s:  # psycopg2, same cache: commit replaces the tokens
            s.execute(update(User).where(User.id == 3).values(name="from-sync"))
            s.commit()
        with loop.counter.expect(1):
            assert (await names(loop, stmt))[2] == "from-sync"

    run(apg, cache, body)


def test_async_fill_racing_a_commit_is_born_stale(apg: AsyncDb, cache: QueryCache) -> None:
    """A miss whose query started before a concurrent commit never serves its old rows."""
    slow = select(User.name, func.pg_sleep(0.4)).where(User.id == 1).options(cached())

    async def body(loop: Loop) -> None:
        async def reader() -> str:
            async with loop.Session() as s:
                return (await s.execute(slow)).one()[0]

        async def writer() -> None:
            await asyncio.sleep(0.15)
            async with loop.Session() as s:
                await s.execute(update(User).where(User.id == 1).values(name="newer"))
                await s.commit()

        old, _ = await asyncio.gather(reader(), writer())
        assert old == "user1"  # its snapshot predates the commit
        with loop.counter.expect(1):
            assert await reader() == "newer"

    run(apg, cache, body)


def test_async_fails_open_when_redis_is_down(adb: AsyncDb, namespace: str) -> None:
    dead = QueryCache.from_url(f"redis://127.0.0.1:{_services.free_port()}/0", namespace=namespace)
    calls: list[int] = []

    async def creator() -> int:
        calls.append(1)
        return 7

    async def body(loop: Loop) -> None:
        for _ in range(3):
            with loop.counter.expect(1):
                assert await names(loop, BY_ORG.options(cached())) == ["user1", "user2", "user3"]
        assert await dead.aget("k", "default") == "default"
        assert await dead.aset("k", 1) is False
        assert [await dead.aget_or_set("k", creator) for _ in range(2)] == [7, 7]
        assert await dead.ainvalidate_tags("t") is False

    try:
        run(adb, dead, body)
    finally:
        dead.close()
    assert len(calls) == 2 and dead.stats().errors > 0 and dead.stats().hits == 0


# --------------------------------------------------------------------------- the event loop


def test_concurrent_misses_run_one_query(adb: AsyncDb, patient_cache: QueryCache) -> None:
    cache = patient_cache
    stmt = BY_ORG.options(cached())

    async def body(loop: Loop) -> None:
        with loop.counter.expect(1):
            results = await asyncio.gather(*(names(loop, stmt) for _ in range(30)))
        assert all(r == ["user1", "user2", "user3"] for r in results)

    run(adb, cache, body, timeout=30)
    assert cache.stats().misses == 1 and cache.stats().hits == 29


def test_concurrent_aget_or_set_runs_creator_once(patient_cache: QueryCache) -> None:
    cache = patient_cache
    calls: list[int] = []

    async def creator() -> dict[str, int]:
        calls.append(1)
        await asyncio.sleep(0.05)
        return {"answer": 42}

    async def main() -> list[Any]:
        try:
            return await asyncio.gather(*(cache.aget_or_set("k", creator) for _ in range(20)))
        finally:
            await cache.aclose()

    results = asyncio.run(asyncio.wait_for(main(), 30))
    assert results == [{"answer": 42}] * 20 and len(calls) == 1


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A throwaway redis-server: these tests make it unresponsive on purpose."""
    port = _services.free_port()
    proc = _services.start_redis_server(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _services.stop(proc)


@pytest.mark.slow
def test_busy_redis_does_not_block_the_event_loop(apg: AsyncDb, private_redis: str) -> None:
    cache = QueryCache.from_url(
        private_redis, namespace="busy" + uuid.uuid4().hex[:8], socket_timeout=5.0
    )
    stmt = BY_ORG.options(cached())

    async def body(loop: Loop) -> tuple[float, list[float]]:
        await names(loop, stmt)  # fill
        with loop.counter.expect(0):  # still a hit, served once Redis is back
            found, elapsed, gaps = await while_redis_is_busy(
                private_redis, lambda: names(loop, stmt)
            )
        assert found == ["user1", "user2", "user3"]
        return elapsed, gaps

    try:
        elapsed, gaps = run(apg, cache, body)
    finally:
        cache.close()
    assert elapsed > 0.3, "the read did not wait for the busy Redis: the test proves nothing"
    assert len(gaps) > elapsed / 0.02, f"only {len(gaps)} ticks in {elapsed:.2f}s"
    assert max(gaps) < 0.1, f"the event loop stalled for {max(gaps):.3f}s"


# --------------------------------------------------------------------------- generic API


def test_async_generic_api(adb: AsyncDb, cache: QueryCache) -> None:
    stmt = BY_ORG.options(cached())

    async def body(loop: Loop) -> None:
        assert await cache.aget("missing", "dflt") == "dflt"
        assert await cache.aset("user:1", {"name": "a"}, ttl=60, tags=["org:1"])
        assert await cache.aset("user:2", [1, 2])
        assert await cache.aget("user:1") == {"name": "a"}
        assert cache.get("user:1") == {"name": "a"}  # the sync API reads the same entry

        async def make() -> str:
            return "built"

        assert await cache.aget_or_set("lazy", make) == "built"
        assert await cache.aget_or_set("lazy", lambda: "other") == "built"
        assert await cache.aget_or_set("sync", lambda: "plain") == "plain"

        assert await cache.ainvalidate_tags("org:1")
        assert await cache.aget("user:1") is None
        assert await cache.aget("user:2") == [1, 2]

        assert await cache.adelete("user:2") is True
        assert await cache.adelete("user:2") is False
        await cache.aset("p:1", 1)
        await cache.aset("p:2", 2)
        assert await cache.adelete_pattern("p:*") == 2
        assert await cache.aget("p:1") is None

        await names(loop, stmt)
        assert await cache.ainvalidate_tables("app_user")
        with loop.counter.expect(1):
            await names(loop, stmt)
        with pytest.raises(TypeError, match="cannot cache"):
            await cache.aset("bad", object())
        with pytest.raises(ValueError, match="ttl"):
            await cache.aset("bad", 1, ttl=-1)
        assert await cache.aget("bad") is None

    run(adb, cache, body)


# --------------------------------------------------------------------------- wiring


def test_attach_async_targets_and_detach(adb: AsyncDb, cache: QueryCache) -> None:
    stmt = select(User).where(User.id == 2).options(cached())

    async def body(loop: Loop) -> None:
        other = async_sessionmaker(loop.engine)  # never attached: no caching
        cache.attach(loop.Session)
        await names(loop, stmt)
        with loop.counter.expect(2):
            for _ in range(2):
                async with other() as s:
                    (await s.scalars(stmt)).one()
        with loop.counter.expect(0):
            await names(loop, stmt)

        cache.detach(loop.Session)
        with loop.counter.expect(1):
            await names(loop, stmt)

        single = AsyncSession(loop.engine)
        cache.attach(loop.engine).attach(single)
        with loop.counter.expect(0):
            (await single.scalars(stmt)).one()
        await single.close()
        cache.detach(single)
        cache.detach(other)  # never attached: nothing to undo

    run(adb, cache, body, attach=False)


def test_missing_greenlet_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, namespace: str
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite://")
    qc = QueryCache.from_url(redis_url, namespace=namespace)
    monkeypatch.setitem(sys.modules, "greenlet", None)
    try:
        with pytest.raises(ImportError, match=r"sqla-redis-cache\[asyncio\]"):
            qc.attach(async_sessionmaker(engine))
        with pytest.raises(ImportError, match=r"sqla-redis-cache\[asyncio\]"):
            asyncio.run(qc.aget("k"))
    finally:
        qc.close()


def test_in_memory_backend_under_asyncio(adb: AsyncDb, namespace: str) -> None:
    """Its threading locks must never be held across an await: concurrent misses of one loop
    would block the loop on them (the plain recipe's deadlock)."""
    local = QueryCache.in_memory(namespace=namespace)
    stmt = BY_ORG.options(cached())

    async def body(loop: Loop) -> None:
        with loop.counter.expect(1):
            results = await asyncio.gather(*(names(loop, stmt) for _ in range(10)))
        assert results == [["user1", "user2", "user3"]] * 10
        assert await local.aset("k", 1) and await local.aget("k") == 1

    try:
        run(adb, local, body, timeout=20)
    finally:
        local.close()
    assert (local.stats().hits, local.stats().misses) == (10, 1)  # 9 reads + aget


def test_cancelled_miss_releases_its_locks(
    apg: AsyncDb, cache: QueryCache, redis_target: RedisTarget
) -> None:
    """A request cancelled mid-miss (a client hung up) must not leave the key locked."""
    # the miss's query waits on an advisory lock this test holds: it is surely still running
    # when it is cancelled, however loaded the machine
    key = 731_001
    blocked = (
        select(User.name, func.pg_advisory_xact_lock_shared(key).label("waited"))
        .where(User.id == 2)
        .options(cached())
    )
    client = redis_target.client()

    def locks() -> list[Any]:
        return list(client.scan_iter(match=f"{cache.config.namespace}:*:lock"))

    async def read(loop: Loop) -> str:
        async with loop.Session() as s:
            return (await s.execute(blocked)).one()[0]

    async def body(loop: Loop) -> list[Any]:
        with apg.sync.engine.connect() as holder:
            holder.execute(select(func.pg_advisory_lock(key)))
            victim = asyncio.create_task(read(loop))
            while not locks():  # it holds the locks and waits on the database
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert not victim.done()
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            left = locks()
            holder.execute(select(func.pg_advisory_unlock(key)))
        assert await read(loop) == "user2"
        return left

    assert run(apg, cache, body) == []  # nothing was left locked
