"""Every value type a supported driver returns round-trips through the cache, type and all.

One column of each common PostgreSQL and SQLite type is read twice with ``cached()`` through
each supported driver (psycopg2, psycopg 3 sync and async, asyncpg, pysqlite, aiosqlite): the
second read must be a hit and return equal values of exactly the same types (recursively:
array elements, range bounds, the ``tzinfo`` of datetimes).  Each column is read both untyped
(``table()``/``column()``: the raw values the driver returned reach the application) and through
SQLAlchemy types (what applications see after result processing).  A row of NULLs comes
second, so every column also carries a None.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    CHAR,
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    Time,
    Uuid,
    column,
    create_engine,
    select,
    table,
)
from sqlalchemy.dialects.postgresql import (
    ARRAY,
    CIDR,
    DATERANGE,
    INET,
    INT4RANGE,
    JSONB,
    MONEY,
    NUMRANGE,
    TSRANGE,
    TSTZRANGE,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import QueryCache, cached

U = "6f1c0b52-8a8e-4d7e-9a43-1f0c1d5e9a01"

#: name -> (SQL type, SQL literal, SQLAlchemy type)
PG_COLUMNS: dict[str, tuple[str, str, Any]] = {
    "uuid": ("uuid", f"'{U}'", Uuid()),
    "numeric": ("numeric(12,2)", "1.50", Numeric(12, 2)),
    "numeric_nan": ("numeric", "'NaN'", Numeric()),
    "timestamptz": ("timestamptz", "'2024-03-01 12:30:05.123456+02'", DateTime(timezone=True)),
    "timestamp": ("timestamp", "'2024-03-01 12:30'", DateTime()),
    "date": ("date", "'2024-03-01'", Date()),
    "time": ("time", "'12:30:05.25'", Time()),
    "timetz": ("timetz", "'12:30+02'", Time(timezone=True)),
    "interval": ("interval", "'1 day 2 hours 3.5 seconds'", Interval()),
    "json": ("json", """'{"a": [1, 2.5, null, "x"], "b": {"c": true}}'""", JSON()),
    "jsonb": ("jsonb", """'{"a": [1, 2.5, null, "x"]}'""", JSONB()),
    "int_array": ("integer[]", "'{1,2,NULL}'", ARRAY(Integer)),
    "text_array": ("text[]", """'{"x","y z"}'""", ARRAY(Text)),
    "uuid_array": ("uuid[]", f"ARRAY['{U}'::uuid]", ARRAY(Uuid)),
    "numeric_array": ("numeric[]", "'{1.5,2.25}'", ARRAY(Numeric)),
    "timestamptz_array": (
        "timestamptz[]",
        "ARRAY['2024-03-01 12:30+02'::timestamptz]",
        ARRAY(DateTime(timezone=True)),
    ),
    "bytea": ("bytea", "'\\x0102ff'::bytea", LargeBinary()),
    "bool": ("boolean", "true", Boolean()),
    "text": ("text", "'txt é'", Text()),
    "char": ("char(3)", "'ab'", CHAR(3)),
    "float": ("float8", "1.5", Float()),
    "bigint": ("bigint", "9007199254740993", BigInteger()),
    "inet": ("inet", "'10.0.0.1'", INET()),
    "inet_prefix": ("inet", "'10.0.0.1/24'", INET()),
    "inet6": ("inet", "'::1'", INET()),
    "cidr": ("cidr", "'10.0.0.0/8'", CIDR()),
    "money": ("money", "12.5", MONEY()),
    "int4range": ("int4range", "'[1,5)'", INT4RANGE()),
    "empty_range": ("int4range", "'empty'", INT4RANGE()),
    "numrange": ("numrange", "'(1.5,2.5]'", NUMRANGE()),
    "daterange": ("daterange", "'[2024-01-01,2024-02-01)'", DATERANGE()),
    "tsrange": ("tsrange", "'[2024-01-01 10:00,)'", TSRANGE()),
    "tstzrange": ("tstzrange", "'[2024-01-01 10:00+02,2024-02-01 00:00+00)'", TSTZRANGE()),
}

SQLITE_COLUMNS: dict[str, tuple[str, str, Any]] = {
    "integer": ("INTEGER", "9007199254740993", Integer()),
    "float": ("REAL", "1.5", Float()),
    "text": ("TEXT", "'txt é'", Text()),
    "blob": ("BLOB", "x'0102ff'", LargeBinary()),
    "bool": ("BOOLEAN", "1", Boolean()),
    "date": ("DATE", "'2024-03-01'", Date()),
    "datetime": ("DATETIME", "'2024-03-01 12:30:05.123456'", DateTime()),
    "time": ("TIME", "'12:30:05.250000'", Time()),
    "numeric": ("NUMERIC", "'1.50'", Numeric(12, 2, asdecimal=False)),
    "json": ("JSON", """'{"a": [1, 2.5, null, "x"]}'""", JSON()),
    "uuid": ("CHAR(32)", f"'{U.replace('-', '')}'", Uuid()),
    "interval": ("DATETIME", "'1970-01-02 02:00:03.500000'", Interval()),
}

PG_DRIVERS = ["psycopg2", "psycopg", "psycopg_async", "asyncpg"]
SQLITE_DRIVERS = ["pysqlite", "aiosqlite"]
ASYNC = {"psycopg_async", "asyncpg", "aiosqlite"}


def create(engine: Any, columns: dict[str, tuple[str, str, Any]]) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS driver_types")
        ddl = ", ".join(f"{name} {sql_type}" for name, (sql_type, _, _) in columns.items())
        conn.exec_driver_sql(f"CREATE TABLE driver_types (id integer PRIMARY KEY, {ddl})")
        values = ", ".join(literal for _, literal, _ in columns.values())
        conn.exec_driver_sql(f"INSERT INTO driver_types VALUES (1, {values})")
        conn.exec_driver_sql("INSERT INTO driver_types (id) VALUES (2)")  # all NULL


@pytest.fixture(scope="module")
def pg_types(postgres_url: str) -> Iterator[str]:
    engine = create_engine(postgres_url)
    create(engine, PG_COLUMNS)
    yield postgres_url
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE driver_types")
    engine.dispose()


@pytest.fixture(scope="module")
def sqlite_types(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('types') / 'types.db'}"
    engine = create_engine(url)
    create(engine, SQLITE_COLUMNS)
    engine.dispose()
    return url


def same(a: Any, b: Any) -> bool:
    """Equal, of the same type, recursively (containers, range bounds, tzinfo)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, str | bytes | decimal.Decimal):  # (Decimal: NaN, and the scale)
        return repr(a) == repr(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, datetime.datetime | datetime.time):
        return a == b and same(a.tzinfo, b.tzinfo) and repr(a) == repr(b)
    if isinstance(a, memoryview):
        return a.tobytes() == b.tobytes()
    if hasattr(a, "lower") and hasattr(a, "upper"):  # the ranges of each driver and SQLAlchemy
        return a == b and same(a.lower, b.lower) and same(a.upper, b.upper) and repr(a) == repr(b)
    return bool(a == b) and repr(a) == repr(b)


def statements(columns: dict[str, tuple[str, str, Any]], typed: bool) -> dict[str, Any]:
    if typed:
        meta = MetaData()
        t: Any = Table(
            "driver_types",
            meta,
            Column("id", Integer, primary_key=True),
            *(Column(name, sa_type) for name, (_, _, sa_type) in columns.items()),
        )
    else:
        t = table("driver_types", column("id"), *(column(name) for name in columns))
    return {name: select(t.c[name]).order_by(t.c.id).options(cached()) for name in columns}


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
@pytest.mark.parametrize("driver", PG_DRIVERS + SQLITE_DRIVERS)
def test_every_column_type_round_trips(
    driver: str, typed: bool, pg_types: str, sqlite_types: str, redis_url: str, namespace: str
) -> None:
    # without the in-process near cache every hit is decoded from Redis, as in another process
    # (and timeouts no loaded machine reaches: a Redis timeout would rightly not be a hit)
    cache = QueryCache.from_url(
        redis_url, namespace=namespace, near_cache_size=0, socket_timeout=2, connect_timeout=2
    )
    if driver in SQLITE_DRIVERS:
        base, columns = sqlite_types, SQLITE_COLUMNS
        url = make_url(base).set(drivername=f"sqlite+{driver}")
    else:
        base, columns = pg_types, PG_COLUMNS
        url = make_url(base).set(drivername=f"postgresql+{driver}")
    stmts = statements(columns, typed)
    problems: list[str] = []

    def check(name: str, first: list[Any], second: list[Any], hit: bool) -> None:
        if not hit:
            problems.append(f"{name}: second read was not a hit ({first!r})")
        elif not same(first, second):
            kinds = [type(v).__qualname__ for v in first], [type(v).__qualname__ for v in second]
            problems.append(f"{name}: {first!r} {kinds[0]} came back as {second!r} {kinds[1]}")

    if driver in ASYNC:

        async def main() -> None:
            engine = create_async_engine(url)
            sessions = async_sessionmaker(engine)
            cache.attach(sessions)
            try:
                for name, stmt in stmts.items():
                    async with sessions() as s:
                        first = list((await s.execute(stmt)).scalars())
                    hits = cache.stats().hits
                    async with sessions() as s:
                        second = list((await s.execute(stmt)).scalars())
                    check(name, first, second, cache.stats().hits == hits + 1)
            finally:
                cache.detach(sessions)
                await engine.dispose()

        asyncio.run(main())
    else:
        engine = create_engine(url)
        sync_sessions: sessionmaker[Session] = sessionmaker(engine)
        cache.attach(sync_sessions)
        try:
            for name, stmt in stmts.items():
                with sync_sessions() as s:
                    first = list(s.execute(stmt).scalars())
                hits = cache.stats().hits
                with sync_sessions() as s:
                    second = list(s.execute(stmt).scalars())
                check(name, first, second, cache.stats().hits == hits + 1)
        finally:
            cache.detach(sync_sessions)
            engine.dispose()
    cache.clear()
    cache.close()
    assert not problems, "\n".join(problems)


def test_driver_values_as_parameters_are_keyed(pg_types: str, patient_cache: QueryCache) -> None:
    """A value a driver returned (asyncpg's UUID subclass, psycopg's ipaddress objects) passed
    back as a parameter keeps the statement cacheable."""
    cache = patient_cache
    meta = MetaData()
    t = Table("driver_types", meta, Column("id", Integer, primary_key=True), Column("uuid", Uuid()))

    async def main() -> None:
        engine = create_async_engine(make_url(pg_types).set(drivername="postgresql+asyncpg"))
        sessions = async_sessionmaker(engine, class_=AsyncSession)
        cache.attach(sessions)
        try:
            async with sessions() as s:
                found = (await s.execute(select(t.c.uuid).where(t.c.id == 1))).scalar_one()
            assert str(found) == U
            stmt = select(t.c.id).where(t.c.uuid == found).options(cached())
            for expected_hits in (0, 1):
                async with sessions() as s:
                    assert (await s.execute(stmt)).scalar_one() == 1
                assert cache.stats().hits == expected_hits
        finally:
            cache.detach(sessions)
            await engine.dispose()

    asyncio.run(main())
    addresses = [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_interface("10.0.0.1/24")]
    from sqla_redis_cache.storage._keys import fingerprint_parameters

    for value in addresses:
        assert repr(value) in fingerprint_parameters((value,))
