"""Two databases, or two views of one database, never share cached entries.

Every setting that changes what the same SQL returns is either part of the key (URL, connect
arguments, the SQLite file, in-memory databases, ``schema_translate_map``) or makes the read
bypass the cache (``SET search_path``, ``SET ROLE``, ``set_config``, temporary tables,
SQLite pragmas set at run time).  Each test reads through the cache where the database would
answer differently and checks the answer is the database's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import String, create_engine, func, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.wiring._identity import engine_identity
from sqla_redis_cache.wiring._runtime_settings import _statements

from ._counting import make_counted_engine

SCHEMAS = ("i10_tenant_a", "i10_tenant_b")


class TBase(DeclarativeBase):
    pass


class Item(TBase):
    __tablename__ = "i10_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


BY_ID = select(Item.name).where(Item.id == 1).options(cached())


@pytest.fixture
def tenants(postgres_url: str) -> Iterator[str]:
    """``public``, ``i10_tenant_a`` and ``i10_tenant_b`` each hold an ``i10_item`` row 1."""
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        for schema, name in (("public", "public"), *((s, s[-1]) for s in SCHEMAS)):
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.i10_item")
            conn.exec_driver_sql(
                f"CREATE TABLE {schema}.i10_item (id int primary key, name varchar(50))"
            )
            conn.exec_driver_sql(f"INSERT INTO {schema}.i10_item VALUES (1, '{name}')")
    engine.dispose()
    yield postgres_url


class Counted:
    def __init__(self, url: Any, **kw: Any) -> None:
        self.engine, self.counter = make_counted_engine(url, **kw)
        self.Session = sessionmaker(self.engine)

    def read(self, stmt: Any = BY_ID) -> Any:
        with self.Session() as s:
            return s.execute(stmt).scalar_one()


@pytest.fixture
def engines() -> Iterator[list[Counted]]:
    made: list[Counted] = []
    yield made
    for e in made:
        e.engine.dispose()


def counted(engines: list[Counted], url: Any, **kw: Any) -> Counted:
    made = Counted(url, **kw)
    engines.append(made)
    return made


def with_query(url: str, **query: str) -> Any:
    return make_url(url).update_query_dict(query)


# -- what the engine connects to ---------------------------------------------------------------


def test_search_path_in_url_options_is_part_of_the_key(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    a = counted(engines, with_query(tenants, options="-csearch_path=i10_tenant_a"))
    b = counted(engines, with_query(tenants, options="-csearch_path=i10_tenant_b"))
    cache.attach(a.Session).attach(b.Session)
    assert a.read() == "a"
    assert b.read() == "b"
    with a.counter.expect(0), b.counter.expect(0):
        assert (a.read(), b.read()) == ("a", "b")


def test_connect_args_are_part_of_the_key(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    plain = counted(engines, tenants)
    b = counted(engines, tenants, connect_args={"options": "-csearch_path=i10_tenant_b"})
    cache.attach(plain.Session).attach(b.Session)
    assert plain.read() == "public"
    assert b.read() == "b"
    with b.counter.expect(0):
        assert b.read() == "b"


def test_engines_with_the_same_settings_share_entries(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    """Identity is derived from settings, not from the engine object (other processes)."""
    first = counted(engines, tenants, connect_args={"application_name": "one"})
    second = counted(engines, tenants, connect_args={"application_name": "two"})
    cache.attach(first.Session).attach(second.Session)
    assert first.read() == "public"
    with second.counter.expect(0):
        assert second.read() == "public"


def test_identity_ignores_passwords_and_keeps_users_and_files(tmp_path: Any) -> None:
    def ident(url: Any, **kw: Any) -> bytes:
        engine = create_engine(url, **kw)
        try:
            identity = engine_identity(engine)
            assert identity is not None
            return identity
        finally:
            engine.dispose()

    base = "postgresql+psycopg2://app:secret@db.example:5432/shop"
    assert ident(base) == ident(base.replace("secret", "rotated"))
    assert b"secret" not in ident(base)
    assert ident(base) != ident(base.replace("app:", "reporting:"))
    assert ident(base) != ident(base + "?options=-csearch_path%3Dx")
    assert ident(base) != ident(base, connect_args={"options": "-c role=x"})
    # a relative SQLite path is resolved where the engine runs
    import os

    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        (tmp_path / "one").mkdir()
        (tmp_path / "two").mkdir()
        os.chdir(tmp_path / "one")
        first = ident("sqlite:///rel.db")
        os.chdir(tmp_path / "two")
        assert ident("sqlite:///rel.db") != first
    finally:
        os.chdir(here)


def test_custom_creator_gets_an_identity_of_its_own(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing says where a ``creator=`` connects: its entries stay with its engine."""
    import psycopg2

    params = make_url(postgres_url).translate_connect_args(username="user", database="dbname")
    engines = [
        create_engine("postgresql+psycopg2://", creator=lambda: psycopg2.connect(**params))
        for _ in range(2)
    ]
    try:
        with caplog.at_level(logging.WARNING, logger="sqla_redis_cache"):
            first, second = (engine_identity(e) for e in engines)
        assert first != second
        assert engine_identity(engines[0]) == first
        assert "creator" in caplog.text
    finally:
        for e in engines:
            e.dispose()


# -- in-memory SQLite ----------------------------------------------------------------------


def _memory_engine(engines: list[Counted], name: str, **kw: Any) -> Counted:
    made = counted(engines, "sqlite://", **kw)
    with made.engine.begin() as conn:
        TBase.metadata.create_all(conn)
        conn.execute(Item.__table__.insert(), {"id": 1, "name": name})
    return made


def test_in_memory_sqlite_engines_never_share_entries(
    cache: QueryCache, engines: list[Counted]
) -> None:
    one = _memory_engine(engines, "one", poolclass=StaticPool)
    two = _memory_engine(engines, "two", poolclass=StaticPool)
    cache.attach(one.Session).attach(two.Session)
    assert one.read() == "one"
    assert two.read() == "two"
    with one.counter.expect(0), two.counter.expect(0):  # each is still cached
        assert (one.read(), two.read()) == ("one", "two")


def test_in_memory_sqlite_is_a_database_per_connection(
    cache: QueryCache, engines: list[Counted]
) -> None:
    """The default pool gives each thread its own connection, hence its own database."""
    engine = counted(engines, "sqlite://")
    cache.attach(engine.Session)
    seen: dict[str, list[str]] = {}

    def work(name: str) -> None:
        with engine.engine.begin() as conn:
            TBase.metadata.create_all(conn)
            conn.execute(Item.__table__.insert(), {"id": 1, "name": name})
        seen[name] = [engine.read(), engine.read()]

    for name in ("first", "second"):
        thread = threading.Thread(target=work, args=(name,))
        thread.start()
        thread.join()
    assert seen == {"first": ["first", "first"], "second": ["second", "second"]}
    with pytest.raises(TypeError):  # an entity entry could not say which database it is from
        cache.get_entity(Item, 1, bind=engine.engine)


# -- settings changed at run time ----------------------------------------------------------

SESSION_LEVEL = [
    "SET search_path TO i10_tenant_b",
    "SET SESSION search_path = 'i10_tenant_b'",
    "SET SCHEMA 'i10_tenant_b'",
    "SELECT set_config('search_path', 'i10_tenant_b', false)",
    "/* tenant */ SET search_path TO i10_tenant_b",
]
TRANSACTION_LEVEL = [
    "SET LOCAL search_path TO i10_tenant_b",
    "SELECT pg_catalog.set_config('search_path', 'i10_tenant_b', true)",
]


def _one_connection(engines: list[Counted], url: str) -> Counted:
    """A pool of one: every session gets the same DBAPI connection (and its settings)."""
    return counted(engines, url, pool_size=1, max_overflow=0)


@pytest.mark.parametrize("statement", SESSION_LEVEL + TRANSACTION_LEVEL)
def test_search_path_set_at_run_time_bypasses_the_cache(
    tenants: str, cache: QueryCache, engines: list[Counted], statement: str
) -> None:
    db = _one_connection(engines, tenants)
    other = counted(engines, tenants)
    cache.attach(db.Session).attach(other.Session)
    assert db.read() == "public"
    with db.Session() as s:
        s.execute(text(statement))
        assert s.execute(BY_ID).scalar_one() == "b"
        assert s.execute(select(func.count(Item.id)).options(cached())).scalar_one() == 1
        s.commit()
    with other.counter.expect(0):  # nothing of tenant b was stored under the shared key
        assert other.read() == "public"
    if statement in TRANSACTION_LEVEL:  # ended with its transaction: cached again
        with db.counter.expect(0):
            assert db.read() == "public"
        return
    assert db.read() == "b"  # a pooled connection keeps its session settings
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("DISCARD ALL")
    with db.counter.expect(0):  # reset: the connection sees the shared view again
        assert db.read() == "public"


def test_do_blocks_and_strings_are_not_transaction_control(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    db = _one_connection(engines, tenants)
    cache.attach(db.Session)
    assert db.read() == "public"
    with db.Session() as s:
        s.execute(text("SET LOCAL search_path TO i10_tenant_b"))
        s.execute(text("SELECT 'a; END', $x$; COMMIT$x$"))  # no COMMIT in there
        assert s.execute(BY_ID).scalar_one() == "b"
    # (a DO block counts as a write to unknown tables, which bypasses anyway)
    assert _statements("DO $$ BEGIN PERFORM 1; END $$; SET x = ';'") == [
        "DO $$ BEGIN PERFORM 1; END $$",
        " SET x = ';'",
    ]


def test_reset_all_is_honoured_only_when_committed(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    db = _one_connection(engines, tenants)
    cache.attach(db.Session)
    assert db.read() == "public"
    with db.Session() as s:
        s.execute(text("SET search_path TO i10_tenant_b"))
        s.commit()
    with db.Session() as s:
        s.execute(text("RESET ALL"))
        s.rollback()  # the reset is undone: the connection still sees tenant b
    assert db.read() == "b"
    with db.Session() as s:
        s.execute(text("RESET ALL"))
        s.commit()
    with db.counter.expect(0):
        assert db.read() == "public"


def test_reset_all_in_a_rolled_back_savepoint_is_undone(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    db = _one_connection(engines, tenants)
    cache.attach(db.Session)
    assert db.read() == "public"
    with db.Session() as s:
        s.execute(text("SET search_path TO i10_tenant_b"))
        s.commit()
    with db.Session() as s:
        nested = s.begin_nested()
        s.execute(text("RESET ALL"))
        nested.rollback()
        s.commit()  # commits nothing of the reset
    assert db.read() == "b"


ROLE = "i10_identity_reader"


@pytest.fixture
def secrets(postgres_url: str) -> str:
    """A table under row-level security: the reader role sees only its own rows."""
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{ROLE}') "
            f"THEN CREATE ROLE {ROLE} NOLOGIN; END IF; END $$"
        )
        conn.exec_driver_sql("DROP TABLE IF EXISTS i10_secret")
        conn.exec_driver_sql("CREATE TABLE i10_secret (id int primary key, owner text)")
        conn.exec_driver_sql(
            f"INSERT INTO i10_secret VALUES (1, 'postgres'), (2, '{ROLE}'), (3, 'postgres')"
        )
        conn.exec_driver_sql("ALTER TABLE i10_secret ENABLE ROW LEVEL SECURITY")
        conn.exec_driver_sql("CREATE POLICY own ON i10_secret USING (owner = current_user)")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
        conn.exec_driver_sql(f"GRANT SELECT ON i10_secret TO {ROLE}")
    engine.dispose()
    return postgres_url


class Secret(TBase):
    __tablename__ = "i10_secret"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(50))


@pytest.mark.parametrize(
    "statement",
    [
        f"SET ROLE {ROLE}",
        f"SET LOCAL ROLE {ROLE}",
        f"SET SESSION AUTHORIZATION {ROLE}",
        f"SELECT set_config('role', '{ROLE}', false)",
    ],
)
def test_role_changes_bypass_the_cache(
    secrets: str, cache: QueryCache, engines: list[Counted], statement: str
) -> None:
    db = _one_connection(engines, secrets)
    cache.attach(db.Session)
    visible = select(func.count(Secret.id)).options(cached())
    assert db.read(visible) == 3  # the superuser is not subject to the policy
    with db.Session() as s:
        s.execute(text(statement))
        assert s.execute(visible).scalar_one() == 1
        s.commit()
    if "LOCAL" not in statement:
        assert db.read(visible) == 1  # the pooled connection is still that role
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("DISCARD ALL")
    with db.counter.expect(0):
        assert db.read(visible) == 3


def test_temporary_tables_shadow_cached_tables(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    db = _one_connection(engines, tenants)
    cache.attach(db.Session)
    assert db.read() == "public"
    with db.Session() as s:
        s.execute(text("CREATE TEMP TABLE i10_item (id int, name text)"))
        s.execute(text("INSERT INTO i10_item VALUES (1, 'temporary')"))
        s.commit()
    assert db.read() == "temporary"  # the session's own table, on that connection
    assert db.read() == "temporary"  # not stored: the shared entry is the real table's
    other = counted(engines, tenants)
    cache.attach(other.Session)
    assert other.read() == "public"
    with other.counter.expect(0):
        assert other.read() == "public"
    assert db.read() == "temporary"


def test_sqlite_pragma_changing_results_bypasses_the_cache(
    tmp_path: Any, cache: QueryCache, engines: list[Counted]
) -> None:
    db = counted(engines, f"sqlite:///{tmp_path / 'pragma.db'}", poolclass=StaticPool)
    with db.engine.begin() as conn:
        TBase.metadata.create_all(conn)
        conn.execute(Item.__table__.insert(), {"id": 1, "name": "name"})
    cache.attach(db.Session)
    like = select(func.count(Item.id)).where(Item.name.like("NAME")).options(cached())
    assert db.read(like) == 1
    with db.Session() as s:
        s.execute(text("PRAGMA case_sensitive_like = ON"))
        assert s.execute(like).scalar_one() == 0
    assert db.read(like) == 0  # the connection keeps the pragma
    with db.Session() as s:
        s.execute(text("PRAGMA foreign_keys = ON"))  # changes no result: ignored


# -- schema_translate_map in the entity cache ----------------------------------------------


def test_entity_cache_keys_by_schema_translate_map(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    db = counted(engines, tenants)
    cache.attach(db.Session)

    def session(schema: str | None) -> Session:
        bind: Engine = db.engine
        if schema is not None:
            bind = db.engine.execution_options(schema_translate_map={None: schema})
        return Session(bind)

    def get(schema: str | None) -> str:
        with session(schema) as s:
            cache.attach(s)
            return s.get_one(Item, 1, options=[cached()]).name

    assert [get(None), get(SCHEMAS[0]), get(SCHEMAS[1])] == ["public", "a", "b"]
    with db.counter.expect(0):
        assert [get(None), get(SCHEMAS[0]), get(SCHEMAS[1])] == ["public", "a", "b"]
    with session(SCHEMAS[0]) as s:  # a write in tenant a stays in tenant a
        cache.attach(s)
        s.get_one(Item, 1).name = "a2"
        s.commit()
    assert [get(None), get(SCHEMAS[0]), get(SCHEMAS[1])] == ["public", "a2", "b"]


def test_entity_cache_steps_aside_for_connections_with_changed_settings(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    db = _one_connection(engines, tenants)
    cache.attach(db.Session)
    with db.Session() as s:
        assert s.get_one(Item, 1, options=[cached()]).name == "public"
    with db.Session() as s:
        s.execute(text("SET search_path TO i10_tenant_b"))
        s.commit()
    for _ in range(2):  # served by the database, and not stored under the shared key
        with db.Session() as s:
            assert s.get_one(Item, 1, options=[cached()]).name == "b"
    with db.Session() as s:  # a write on that connection writes tenant b's row
        s.get_one(Item, 1).name = "b2"
        s.commit()
    fresh = counted(engines, tenants)
    cache.attach(fresh.Session)
    with fresh.Session() as s:
        assert s.get_one(Item, 1, options=[cached()]).name == "public"


def test_set_config_in_a_compiled_select_is_seen(
    tenants: str, cache: QueryCache, engines: list[Counted]
) -> None:
    db = _one_connection(engines, tenants)
    cache.attach(db.Session)
    assert db.read() == "public"
    with db.Session() as s:
        s.execute(select(func.set_config("search_path", "i10_tenant_b", True)))
        assert s.execute(BY_ID).scalar_one() == "b"
