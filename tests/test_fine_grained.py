"""Fine-grained invalidation (issue 12): a result filtered by equality depends on the values it
filtered on, and a commit whose rows the ORM knows invalidates only those rows' values
(``wiring._values``).  Everything else stays table-level.  Statements are counted at the driver,
on PostgreSQL and SQLite, on every Redis deployment (standalone, Cluster, Sentinel, TLS).

The mechanism tests use ``trust_loaded_values=True``: they update rows under READ COMMITTED (and
on SQLite), where by default an UPDATE/DELETE makes its table's rows unknown because another
transaction may have changed the row after it was loaded (the last tests here check that default,
and REPEATABLE READ, where the loaded values are certain)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, or_, select, text, update
from sqlalchemy.orm import aliased, selectinload

from sqla_redis_cache import QueryCache, cached

from . import test_asyncio
from .conftest import EVERY_DEPLOYMENT, Database, RedisTarget
from .models import Order, Org, User
from .test_asyncio import AsyncDb, Loop, run

pytestmark = EVERY_DEPLOYMENT


@pytest.fixture
def cache(redis_target: RedisTarget, namespace: str) -> Iterator[QueryCache]:
    qc = redis_target.cache(namespace, trust_loaded_values=True)
    yield qc
    qc.clear()
    qc.close()


@pytest.fixture
def default_cache(redis_target: RedisTarget, namespace: str) -> Iterator[QueryCache]:
    qc = redis_target.cache(namespace)
    yield qc
    qc.clear()
    qc.close()


adb = test_asyncio.adb  # the fixture: asyncpg and aiosqlite over the seeded databases


def tenant(org_id: Any) -> Any:
    return select(User.id, User.name, User.org_id).where(User.org_id == org_id).order_by(User.id)


def read(db: Database, stmt: Any) -> list[tuple[Any, ...]]:
    with db.Session() as s:
        return [tuple(r) for r in s.execute(stmt.options(cached()))]


def fresh(db: Database, stmt: Any) -> list[tuple[Any, ...]]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


def expect_hit(db: Database, stmt: Any) -> None:
    """Served from the cache (0 statements), and equal to what the database holds."""
    with db.counter.expect(0):
        got = read(db, stmt)
    assert got == fresh(db, stmt)


def expect_miss(db: Database, stmt: Any) -> None:
    """Invalidated: one statement, and then what the database holds."""
    with db.counter.expect(1):
        got = read(db, stmt)
    assert got == fresh(db, stmt)


def warm(db: Database, *stmts: Any) -> None:
    for stmt in stmts:
        read(db, stmt)
    with db.counter.expect(0):
        for stmt in stmts:
            read(db, stmt)


def rename(db: Database, user_id: int, name: str = "renamed") -> None:
    with db.Session() as s:
        s.get(User, user_id).name = name  # type: ignore[union-attr]
        s.commit()


# the behaviour -----------------------------------------------------------------------------------


def test_a_write_to_one_tenant_leaves_the_others_cached(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    warm(db, tenant(1), tenant(2))
    rename(db, 5)  # org 2
    expect_hit(db, tenant(1))
    expect_miss(db, tenant(2))
    assert "renamed" in [r[1] for r in read(db, tenant(2))]


def test_a_row_moved_between_tenants_invalidates_both(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    empty = tenant(3)  # no rows yet: depends on the value 3 all the same
    warm(db, tenant(1), tenant(2), empty)
    with db.Session() as s:
        s.get(User, 1).org_id = 2  # type: ignore[union-attr]
        s.commit()
    expect_miss(db, tenant(1))
    expect_miss(db, tenant(2))
    expect_hit(db, empty)
    assert 1 in [r[0] for r in read(db, tenant(2))]


def test_insert_and_delete_invalidate_their_tenant_only(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    warm(db, tenant(1), tenant(2))
    with db.Session() as s:
        s.add(User(id=50, name="new", org_id=2, balance=Decimal(0)))
        s.commit()
    expect_hit(db, tenant(1))
    expect_miss(db, tenant(2))
    with db.Session() as s:
        s.delete(s.get(User, 50))
        s.commit()
    expect_hit(db, tenant(1))
    expect_miss(db, tenant(2))


def test_an_attribute_set_while_its_old_value_was_never_loaded_is_unknown_rows(
    db: Database, cache: QueryCache
) -> None:
    """``session.expire(u); u.org_id = 2``: the row's old tenant is not known, so every result
    of the table misses (here org 1, where the row was, and an unrelated value)."""
    cache.attach(db.Session)
    elsewhere = tenant(99)
    warm(db, tenant(1), tenant(2), elsewhere)
    with db.Session() as s:
        user = s.get(User, 1)
        assert user is not None
        s.expire(user)
        user.org_id = 2
        s.commit()
    expect_miss(db, tenant(1))
    expect_miss(db, tenant(2))
    expect_miss(db, elsewhere)


def test_an_expired_column_the_flush_does_not_change_is_unknown_too(
    db: Database, cache: QueryCache
) -> None:
    """A column that is not loaded holds an unknown (current) value: the row might be in any
    tenant, so the unconstrained side must miss as well."""
    cache.attach(db.Session)
    warm(db, tenant(1), tenant(2))
    with db.Session() as s:
        user = s.get(User, 5)
        assert user is not None
        s.expire(user, ["org_id"])
        user.name = "renamed"
        s.commit()
    expect_miss(db, tenant(1))
    expect_miss(db, tenant(2))


def test_in_lists(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    pair = select(User.id, User.name).where(User.id.in_([1, 2])).order_by(User.id)
    long = select(User.id, User.name).where(User.id.in_([1, 2, *range(100, 138)])).order_by(User.id)
    none = select(User.id).where(User.id.in_([]))
    warm(db, pair, long, none)
    rename(db, 5)
    expect_hit(db, pair)
    expect_hit(db, none)
    expect_miss(db, long)  # more than MAX_IN values: table-level
    rename(db, 2)
    expect_miss(db, pair)
    expect_hit(db, none)


def test_is_null(db: Database, cache: QueryCache) -> None:
    """``col IS NULL`` depends on the NULL value of the column (the schema has no nullable
    integer column: a write that leaves every value non-NULL keeps the result cached)."""
    cache.attach(db.Session)
    no_user = select(Order.id).where(Order.user_id.is_(None)).order_by(Order.id)
    with db.Session() as s:
        assert cache.explain(no_user.options(cached()), s).values == ("app_order.user_id = n",)
    warm(db, no_user)
    with db.Session() as s:
        s.get(Order, 1).total = Decimal(99)  # type: ignore[union-attr]  # user_id stays set
        s.commit()
    expect_hit(db, no_user)
    with db.Session() as s:
        s.execute(text("UPDATE app_order SET total = 1 WHERE id = 2"))
        s.commit()
    expect_miss(db, no_user)


def test_every_candidate_column_is_invalidated_whatever_readers_constrain(
    db: Database, cache: QueryCache
) -> None:
    """No registry of constrained columns: a write invalidates the values of every candidate
    column of its rows, so a reader that starts filtering on a new column (here ``name``)
    concurrently with a commit can never keep a stale entry."""
    cache.attach(db.Session)
    by_name = select(User.id, User.balance).where(User.name == "user5")
    warm(db, by_name)
    with db.Session() as s:
        s.get(User, 5).balance = Decimal(7)  # type: ignore[union-attr]  # name unchanged
        s.commit()
    expect_miss(db, by_name)


@pytest.mark.parametrize(
    "write",
    [
        "orm_bulk_update",
        "orm_bulk_update_fetch",
        "orm_bulk_delete",
        "orm_bulk_insert",
        "core_engine",
        "text",
    ],
)
def test_writes_whose_rows_are_unknown_miss_the_whole_table(
    db: Database, cache: QueryCache, write: str
) -> None:
    cache.attach(db.Session)
    warm(db, tenant(1), tenant(2), tenant(99))
    if write == "core_engine":
        with db.engine.begin() as conn:
            conn.execute(update(User).where(User.id == 5).values(org_id=1))
    else:
        with db.Session() as s:
            if write == "orm_bulk_update":
                s.execute(update(User).where(User.id == 5).values(org_id=1))
            elif write == "orm_bulk_update_fetch":
                s.execute(
                    update(User).where(User.id == 5).values(org_id=1),
                    execution_options={"synchronize_session": "fetch"},
                )
            elif write == "orm_bulk_delete":
                s.execute(delete(Order))
                s.execute(delete(User).where(User.id == 5))
            elif write == "orm_bulk_insert":
                s.execute(insert(User), [{"id": 60, "name": "x", "org_id": 1}])
            else:
                s.execute(text("UPDATE app_user SET org_id = 1 WHERE id = 5"))
            s.commit()
    expect_miss(db, tenant(1))
    expect_miss(db, tenant(2))
    expect_miss(db, tenant(99))


@pytest.mark.parametrize("bulk", ["update", "insert", "legacy_mappings"])
def test_a_flush_after_bulk_dml_in_one_transaction_stays_unknown(
    db: Database, cache: QueryCache, bulk: str
) -> None:
    """Bulk INSERT / UPDATE by primary key reach the ORM's persistence as a flush does; their
    rows are still unknown when a flush of the same table follows in the transaction."""
    cache.attach(db.Session)
    warm(db, tenant(1), tenant(2))
    with db.Session() as s:
        if bulk == "update":
            s.execute(update(User), [{"id": 1, "name": "bulk"}])
        elif bulk == "insert":
            s.execute(insert(User), [{"id": 70, "name": "bulk", "org_id": 1}])
        else:
            s.bulk_insert_mappings(User, [{"id": 71, "name": "bulk", "org_id": 1}])  # type: ignore[arg-type]
        s.get(User, 4).name = "flushed"  # type: ignore[union-attr]  # org 2
        s.commit()
    expect_miss(db, tenant(1))
    expect_miss(db, tenant(2))


def test_shapes_that_stay_table_level(db: Database, cache: QueryCache) -> None:
    """Ranges, OR, a table read twice, a subquery, a value of another type: any write misses."""
    cache.attach(db.Session)
    other = aliased(User)
    shapes = [
        select(User.id).where(User.org_id > 1),
        select(User.id).where(or_(User.org_id == 1, User.id == 5)),
        select(User.id).join(other, other.id == User.id).where(User.org_id == 1),
        select(User.id).where(User.org_id == 1, User.id.in_(select(User.id).where(User.id < 4))),
        select(Org.name).outerjoin(User, User.org_id == Org.id).where(User.id.is_(None)),
        select(User.id).where(func.lower(User.name) == "user1"),
    ]
    warm(db, *shapes)
    rename(db, 5)
    for stmt in shapes:
        expect_miss(db, stmt)


def test_relationship_loads_become_parent_level(db: Database, cache: QueryCache) -> None:
    """Lazy and selectin loads filter the children by their parent's key: a write to another
    parent's children leaves them cached."""
    cache.attach(db.Session)

    def lazy(org_id: int) -> list[str]:
        with db.Session() as s:
            org = s.execute(select(Org).where(Org.id == org_id).options(cached())).scalar_one()
            return [u.name for u in org.users]

    def selectin(org_id: int) -> list[str]:
        with db.Session() as s:
            stmt = select(Org).where(Org.id == org_id).options(cached(), selectinload(Org.users))
            return [u.name for u in s.execute(stmt).scalar_one().users]

    for load in (lazy, selectin):
        before = load(1)
        with db.counter.expect(0):
            assert load(1) == before
        rename(db, 5, f"renamed-{load.__name__}")  # org 2's child
        with db.counter.expect(0):
            assert load(1) == before
        rename(db, 2, f"renamed-{load.__name__}")  # org 1's child
        with db.counter.expect(1):  # the parent is still a hit, the children miss
            assert f"renamed-{load.__name__}" in load(1)


def test_session_get_through_the_query_path_is_row_level(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    one = select(User.name).where(User.id == 1)
    warm(db, one)
    rename(db, 2)
    expect_hit(db, one)
    rename(db, 1)
    expect_miss(db, one)


def test_read_your_own_writes_and_nothing_uncommitted_stored(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session)
    warm(db, tenant(1))
    with db.Session() as s:
        s.get(User, 1).name = "pending"  # type: ignore[union-attr]
        s.flush()
        rows = [tuple(r) for r in s.execute(tenant(1).options(cached()))]
        assert "pending" in [r[1] for r in rows]  # bypassed: its own write
        s.rollback()
    expect_hit(db, tenant(1))


def test_the_switch_turns_it_off(db: Database, redis_target: RedisTarget, namespace: str) -> None:
    cache = redis_target.cache(namespace, fine_grained=False)
    try:
        cache.attach(db.Session)
        warm(db, tenant(1), tenant(2))
        rename(db, 5)
        expect_miss(db, tenant(1))
        expect_miss(db, tenant(2))
        with db.Session() as s:
            report = cache.explain(tenant(1).options(cached()), s)
        assert report.values == () and "table" in [d.kind for d in report.dependencies]
    finally:
        cache.close()


def test_fine_and_table_level_processes_share_a_namespace(
    db: Database, redis_target: RedisTarget, namespace: str
) -> None:
    """A process with the switch off still replaces unknown-rows and value tokens, so another
    process's fine-grained entries never outlive its writes."""
    fine = redis_target.cache(namespace)
    coarse = redis_target.cache(namespace, fine_grained=False)
    try:
        fine.attach(db.Session)
        warm(db, tenant(1), tenant(2))
        fine.detach(db.Session)
        coarse.attach(db.Session)
        rename(db, 5)
        with db.Session() as s:
            s.execute(update(User).where(User.id == 1).values(name="bulk"))
            s.commit()
        coarse.detach(db.Session)
        fine.attach(db.Session)
        expect_miss(db, tenant(1))
        expect_miss(db, tenant(2))
    finally:
        fine.close()
        coarse.close()


def test_explain_names_the_values(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    with db.Session() as s:
        report = cache.explain(select(User).where(User.id.in_([3, 1])).options(cached()), s)
    assert report.values == ("app_user.id = i:3", "app_user.id = i:1")
    assert [d.kind for d in report.dependencies] == ["namespace", "unknown rows", "value", "value"]


def test_async_session(adb: AsyncDb, cache: QueryCache) -> None:
    async def names(loop: Loop, org_id: int) -> list[str]:
        async with loop.Session() as s:
            stmt = select(User).where(User.org_id == org_id).order_by(User.id).options(cached())
            return [u.name for u in (await s.scalars(stmt)).all()]

    async def body(loop: Loop) -> None:
        one, two = await names(loop, 1), await names(loop, 2)
        async with loop.Session() as s:
            user = await s.get(User, 5)
            assert user is not None
            user.name = "renamed"
            await s.commit()
        with loop.counter.expect(0):
            assert await names(loop, 1) == one
        with loop.counter.expect(1):
            assert await names(loop, 2) == [n if n != "user5" else "renamed" for n in two]

    run(adb, cache, body)


def test_a_lost_update_under_read_committed(db: Database, default_cache: QueryCache) -> None:
    """By default an UPDATE under READ COMMITTED (or on SQLite) makes the table's rows unknown:
    the row may have moved since the Session loaded it."""
    cache = default_cache
    cache.attach(db.Session)
    with db.Session() as s1:
        user = s1.get(User, 5)  # org 2, as loaded here
        assert user is not None and user.org_id == 2
        with db.Session() as s2:
            s2.get(User, 5).org_id = 1  # type: ignore[union-attr]
            s2.commit()
        read(db, tenant(1))  # cached with user 5 as it is now
        user.name = "lost"
        s1.commit()  # the row is in org 1; the values believed say org 2
    assert read(db, tenant(1)) == fresh(db, tenant(1))


def test_the_tenants_benchmark_reaches_the_ideal(sqlite_url: str, redis_url: str) -> None:
    """``sqla-redis-cache bench --workload tenants``, small: the ideal model, and the library
    within the issue's 0.03 of it (Redis timeouts under load may turn a hit into a miss)."""
    from benchmarks import tenants

    ops = [("read", 1), ("read", 2), ("write", 1), ("read", 2), ("read", 1)]  # row 1: tenant 1
    assert tenants.ideal_hit_rate(ops, per_tenant=5) == 0.25  # tenant 2 stays valid
    assert tenants.table_level_hit_rate(ops) == 0
    report = tenants.run(
        sqlite_url.replace(".db", "-tenants.db"),
        redis_url,
        250,
        tenants=10,
        per_tenant=5,
        ratios=(0.2,),
        commit_sizes=(10, 100),
    )
    row = report["hit_rate"]["20%"]
    assert abs(row["fine"] - row["ideal"]) <= 0.03, row
    assert row["table_level"] < row["fine"], row
    assert report["commit"]["table_tokens_replaced_per_commit_with_100_entries"] == 1


# bounded bookkeeping ----------------------------------------------------------------------------


def test_writes_create_no_value_token_and_reads_create_them_for_their_entry(
    db: Database, cache: QueryCache, redis_url: str
) -> None:
    """A commit deletes the value tokens its rows touched (random tokens: a re-created one
    matches no entry), so writes add no key; a read creates the tokens it needs with its
    entry's lifetime, so none outlives the entries that depend on it."""
    import redis

    client = redis.Redis.from_url(redis_url)
    ns = cache.config.namespace
    cache.attach(db.Session)
    for user_id in range(1, 7):  # rows nobody reads fine-grained
        rename(db, user_id, f"renamed{user_id}")
    assert client.keys(f"{ns}:v:*") == []
    with db.Session() as s:
        s.execute(tenant(1).options(cached(ttl=30))).all()
    (key,) = client.keys(f"{ns}:v:*")
    assert 0 < client.pttl(key) <= 30_000
    rename(db, 1)  # org 1: its value token is deleted, and the entry misses
    assert client.keys(f"{ns}:v:*") == []
    expect_miss(db, tenant(1))


def test_value_tokens_not_deleted_are_made_up_by_the_unknown_rows_token(
    db: Database, redis_target: RedisTarget, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails at commit: the deletions are not retried, the tables' unknown-rows tokens
    are owed instead (coarser), and delivered in the background."""
    import time

    import redis

    from sqla_redis_cache._cache import internals

    # no namespace replacement after the failure: it would hide what is owed here
    cache = redis_target.cache(namespace, invalidate_after_outage=False)
    try:
        cache.attach(db.Session)
        warm(db, tenant(1), tenant(2))
        storage = internals(cache).storage
        io = storage.store.io
        real_run = io.run
        failing = {"on": True}

        def run(operations: Any) -> Any:
            if failing["on"]:  # a reply error: the connection itself is not lost
                raise redis.exceptions.ResponseError("BUSY")
            return real_run(operations)

        monkeypatch.setattr(io, "run", run)
        rename(db, 5)  # org 2; the invalidation is owed
        failing["on"] = False
        for _ in range(300):  # delivered in the background
            if not storage.versions.owes:
                break
            time.sleep(0.01)
        assert not storage.versions.owes
        expect_miss(db, tenant(1))  # coarser: every fine-grained result of the table
        expect_miss(db, tenant(2))
    finally:
        cache.close()


def test_a_released_savepoint_is_not_a_commit(db: Database, cache: QueryCache) -> None:
    """SQLAlchemy fires ``after_commit`` at a savepoint's release: the writes must stay
    recorded, so the real commit invalidates what another session filled meanwhile (found by
    the differential test, seed 821616485)."""
    cache.attach(db.Session)
    everyone = select(User.id, User.name).order_by(User.id)
    warm(db, everyone)
    with db.Session() as s:
        s.connection()
        with s.begin_nested():
            s.execute(text("UPDATE app_user SET name = 'sp' WHERE id = 5"))
        read(db, everyone)  # another session fills with the committed rows
        s.commit()
    if db.name == "sqlite":  # pysqlite: that RELEASE committed (invalidated then; see
        expect_hit(db, everyone)  # tests/test_sqlite_transactions.py), the fill is fresh
    else:
        expect_miss(db, everyone)


def test_loaded_values_are_certain_under_repeatable_read(
    db: Database, default_cache: QueryCache
) -> None:
    """PostgreSQL refuses to update a row changed since the snapshot, so under REPEATABLE READ
    the values the transaction loaded are the row's: only the written tenant misses.  An
    object added from outside the session is never trusted."""
    cache = default_cache
    cache.attach(db.Session)
    warm(db, tenant(1), tenant(2))
    pg = db.name == "postgresql"
    with db.Session() as s:
        if pg:
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        user = s.get(User, 5)
        assert user is not None and user.org_id == 2
        user.name = "certain"
        s.commit()
    if pg:
        expect_hit(db, tenant(1))
    else:  # SQLite: its drivers read outside the transaction until the first write
        expect_miss(db, tenant(1))
    expect_miss(db, tenant(2))
    with db.Session() as s:
        user = s.get(User, 5)
        s.expunge(user)
    warm(db, tenant(1), tenant(2))
    with db.Session() as s:
        if pg:
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        s.add(user)  # loaded by another session: its values are not this transaction's
        user.name = "foreign"
        s.commit()
    expect_miss(db, tenant(1))
    assert read(db, tenant(2)) == fresh(db, tenant(2))
