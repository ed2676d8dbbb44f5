"""The entity cache holds what loading the row from the database returns, nothing else.

Each test first uses the entity cache for the class (write-through is for hierarchies this
process reads through the cache), writes the row in a way whose committed result differs from
what the flush saw or what the application assigned, commits, and then compares a cached
``session.get`` with a load from the database.  Statements are counted at the driver: where the
row exists, the cached get must be a hit (written through from the database's values).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, event, inspect, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import QueryCache, cached

from ._counting import Counter, make_counted_engine
from .conftest import Database
from .models_fresh import (
    Author,
    Book,
    Gadget,
    Item,
    Note,
    create_fresh_schema,
    enable_foreign_keys,
    seed_fresh,
)
from .models_writes import Employee, Manager

C = [cached()]
SYNC = ["auto", "fetch", "evaluate", False]

_ENGINES: dict[str, tuple[Engine, Counter]] = {}


@pytest.fixture(scope="module", autouse=True)
def _dispose() -> Iterator[None]:
    yield
    for engine, _ in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def _fresh_database(name: str, url: str) -> Database:
    if name not in _ENGINES:
        engine, counter = make_counted_engine(url)
        enable_foreign_keys(engine)
        create_fresh_schema(engine)
        _ENGINES[name] = (engine, counter)
    engine, counter = _ENGINES[name]
    seed_fresh(engine)
    counter.reset()
    return Database(name, url, engine, counter, sessionmaker(engine))


@pytest.fixture(params=["postgresql", "sqlite"])
def fdb(request: pytest.FixtureRequest, postgres_url: str, sqlite_url: str) -> Database:
    url = postgres_url if request.param == "postgresql" else sqlite_url
    return _fresh_database(request.param, url)


@pytest.fixture
def fpg(postgres_url: str) -> Database:
    return _fresh_database("postgresql", postgres_url)


def _row(obj: Any) -> dict[str, str] | None:
    if obj is None:
        return None
    return {
        prop.key: repr(getattr(obj, prop.key))
        for prop in inspect(type(obj)).column_attrs
        if not prop.deferred
    }


def _in_use(db: Database, cache: QueryCache, cls: Any = Item) -> None:
    """Use the entity cache for ``cls`` (it writes through only what this process reads)."""
    cache.attach(db.Session)
    with db.Session() as s:
        s.get(cls, 2, options=C)


def assert_as_in_database(db: Database, cls: Any, pk: Any, *, hit: bool = True) -> None:
    """A cached get returns what the database holds (and is a hit when ``hit``)."""
    with db.Session() as s, db.counter.measure() as window:
        got = _row(s.get(cls, pk, options=C))
    with db.Session() as s:
        expected = _row(s.get(cls, pk))
    assert got == expected
    assert window.count == (0 if hit else 1), window.statements


# the row as the transaction committed it, not as a flush saw it ------------------------------


def test_a_flush_in_a_rolled_back_savepoint_is_not_published(
    fdb: Database, cache: QueryCache
) -> None:
    _in_use(fdb, cache)
    with fdb.Session() as s:
        item = s.get_one(Item, 1)
        item.qty = 5
        s.flush()
        savepoint = s.begin_nested()
        item.name = "x"
        s.flush()
        savepoint.rollback()
        s.commit()
    assert_as_in_database(fdb, Item, 1)


def test_a_released_savepoint_publishes_nothing_before_the_outer_commit(
    fdb: Database, cache: QueryCache
) -> None:
    """SQLAlchemy fires ``after_commit`` at a savepoint's release: nothing is committed then."""
    _in_use(fdb, cache)
    name = select(Item.name).where(Item.id == 1).options(cached())
    with fdb.Session() as s:
        s.execute(text("SELECT 1"))  # the transaction is open before the SAVEPOINT (SQLite)
        s.execute(update(Item).where(Item.id == 3).values(qty=9))  # (pysqlite: BEGIN)
        savepoint = s.begin_nested()
        s.get_one(Item, 1).name = "x"
        s.flush()
        savepoint.commit()
        # still the transaction's own write: read from the database, never stored
        assert s.execute(name).scalar_one() == "x"
        s.rollback()
    assert_as_in_database(fdb, Item, 1, hit=False)  # nothing written through
    with fdb.Session() as s:
        assert s.execute(name).scalar_one() == "item1"


def test_a_released_savepoint_is_published_by_the_outer_commit(
    fdb: Database, cache: QueryCache
) -> None:
    _in_use(fdb, cache)
    name = select(Item.name).where(Item.id == 1).options(cached())
    with fdb.Session() as s:
        assert s.execute(name).scalar_one() == "item1"  # cached
    with fdb.Session() as s:
        s.execute(update(Item).where(Item.id == 3).values(qty=9))
        savepoint = s.begin_nested()
        s.get_one(Item, 1).name = "x"
        s.flush()
        savepoint.commit()
        s.commit()
    assert_as_in_database(fdb, Item, 1)
    with fdb.Session() as s:
        assert s.execute(name).scalar_one() == "x"


@pytest.mark.parametrize("sync", SYNC)
def test_a_later_bulk_update_of_the_flushed_row_wins(
    fdb: Database, cache: QueryCache, sync: Any
) -> None:
    _in_use(fdb, cache)
    with fdb.Session() as s:
        s.get_one(Item, 1).name = "x"
        s.flush()
        s.execute(
            update(Item).where(Item.id == 1).values(name="bulk"),
            execution_options={"synchronize_session": sync},
        )
        s.commit()
    assert_as_in_database(fdb, Item, 1)


@pytest.mark.parametrize("sync", SYNC)
def test_a_later_bulk_delete_of_the_flushed_row_wins(
    fdb: Database, cache: QueryCache, sync: Any
) -> None:
    _in_use(fdb, cache)
    with fdb.Session() as s:
        s.get_one(Item, 1).name = "x"
        s.flush()
        s.execute(delete(Item).where(Item.id == 1), execution_options={"synchronize_session": sync})
        s.commit()
    assert_as_in_database(fdb, Item, 1, hit=False)


def test_a_later_text_update_of_the_flushed_row_wins(fdb: Database, cache: QueryCache) -> None:
    _in_use(fdb, cache)
    with fdb.Session() as s:
        s.get_one(Item, 1).name = "x"
        s.flush()
        s.execute(text("UPDATE f_item SET name = 'text' WHERE id = 1"))
        s.commit()
    assert_as_in_database(fdb, Item, 1)


def test_a_row_removed_by_on_delete_cascade_is_not_published(
    fdb: Database, cache: QueryCache
) -> None:
    _in_use(fdb, cache, Book)
    with fdb.Session() as s:
        s.get_one(Book, 1).title = "x"
        s.flush()
        s.delete(s.get_one(Author, 1))  # passive_deletes: the database removes the books
        s.commit()
    assert_as_in_database(fdb, Book, 1, hit=False)


# the values the database stored, not the values the application assigned ------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("price", Decimal("1.005")),  # Numeric(10, 2) rounds (PostgreSQL) or truncates (SQLite)
        ("qty", "7"),  # an Integer column given a string
        ("data", {1: "x"}),  # JSON object keys become strings
    ],
)
def test_values_are_published_as_the_database_stored_them(
    fdb: Database, cache: QueryCache, column: str, value: Any
) -> None:
    _in_use(fdb, cache)
    with fdb.Session() as s:
        setattr(s.get_one(Item, 1), column, value)
        s.commit()
    assert_as_in_database(fdb, Item, 1)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("seen_at", datetime(2024, 5, 1, 12, 30)),  # a naive datetime into timestamptz
        ("code", "ab"),  # CHAR(5) pads
    ],
)
def test_postgresql_coercions_are_published_as_stored(
    fpg: Database, cache: QueryCache, column: str, value: Any
) -> None:
    _in_use(fpg, cache)
    with fpg.Session() as s:
        setattr(s.get_one(Item, 1), column, value)
        s.commit()
    assert_as_in_database(fpg, Item, 1)


def test_a_column_a_trigger_rewrites_is_published_as_stored(
    fdb: Database, cache: QueryCache
) -> None:
    _in_use(fdb, cache, Note)
    with fdb.Session() as s:
        s.get_one(Note, 1).shout = "quiet"
        s.add(Note(id=3, shout="hey"))
        s.commit()
    assert_as_in_database(fdb, Note, 1)
    assert_as_in_database(fdb, Note, 3)


def test_server_defaults_and_computed_columns_are_published_as_stored(
    fdb: Database, cache: QueryCache
) -> None:
    """These were never wrong (the ORM expires or fetches declared server-side values, and
    rows with expired columns were dropped rather than written through): now published."""
    _in_use(fdb, cache, Gadget)
    with fdb.Session() as s:
        s.get_one(Gadget, 1).qty = 21  # the computed column follows
        s.add(Gadget(id=3, qty=4))  # the server default fills the label
        s.commit()
    assert_as_in_database(fdb, Gadget, 1)
    assert_as_in_database(fdb, Gadget, 3)


# a column read from another table -----------------------------------------------------------


def test_an_entity_depends_on_the_tables_its_column_properties_read(
    fdb: Database, cache: QueryCache
) -> None:
    _in_use(fdb, cache, Author)
    with fdb.Session() as s:
        assert s.get_one(Author, 1, options=C).book_count == 2
    with fdb.Session() as s:
        s.add(Book(id=9, author_id=1, title="new"))
        s.commit()
    assert_as_in_database(fdb, Author, 1, hit=False)
    with fdb.Session() as s:  # a write of the author publishes the count the database computes
        s.get_one(Author, 1).name = "x"
        s.add(Book(id=10, author_id=1, title="newer"))
        s.commit()
    assert_as_in_database(fdb, Author, 1)


# what it costs, and what else it guarantees ------------------------------------------------


def test_the_commit_reloads_once_per_class_and_only_classes_in_use(
    fdb: Database, cache: QueryCache
) -> None:
    cache.attach(fdb.Session)
    with fdb.Session() as s:  # no entity cache in use: the commit sends the UPDATEs only
        item, book = s.get_one(Item, 1), s.get_one(Book, 1)
        item.name, book.title = "a", "b"
        with fdb.counter.measure() as window:
            s.commit()
    assert [q.split()[0] for q in window.statements] == ["UPDATE", "UPDATE"]
    _in_use(fdb, cache, Book)
    with fdb.Session() as s:
        for book in s.scalars(select(Book)).all():
            book.title += "!"
        s.get_one(Item, 1).name = "c"
        s.flush()
        with fdb.counter.measure() as window:
            s.commit()
    assert len(window.statements) == 1 and "FROM f_book" in window.statements[0]
    for pk in (1, 2, 3):
        assert_as_in_database(fdb, Book, pk)


def test_a_write_after_the_reload_publishes_no_rows(fdb: Database, cache: QueryCache) -> None:
    _in_use(fdb, cache)

    def late_write(conn: Any) -> None:  # a commit listener registered after the cache's
        if conn.info.pop("test.late_write", False):
            conn.exec_driver_sql("UPDATE f_item SET name = 'late' WHERE id = 1")

    event.listen(fdb.engine, "commit", late_write)
    try:
        with fdb.Session() as s:
            s.get_one(Item, 1).name = "x"
            s.connection().info["test.late_write"] = True
            s.commit()
    finally:
        event.remove(fdb.engine, "commit", late_write)
    assert_as_in_database(fdb, Item, 1, hit=False)


def test_a_late_publish_never_wins_over_a_later_bulk_update(
    fdb: Database, cache: QueryCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit publishes after a later one that no flush made (no pending marker of its own):
    the late entry must not be served."""
    _in_use(fdb, cache)
    commit_path = cache._wiring.commit_path
    real_publish = commit_path.after_session_commit
    release = threading.Event()
    held: list[Session] = []

    def publish(session: Session) -> None:
        if session in held:
            assert release.wait(10)
        real_publish(session)

    monkeypatch.setattr(commit_path, "after_session_commit", publish)

    def older_writer() -> None:
        with fdb.Session() as s:
            held.append(s)
            s.get_one(Item, 1).name = "older"
            s.commit()

    thread = threading.Thread(target=older_writer)
    thread.start()
    try:
        for _ in range(500):  # until the older commit is in the database
            with fdb.Session() as s:
                if s.get_one(Item, 1).name == "older":
                    break
            threading.Event().wait(0.01)
        with fdb.Session() as s:
            s.execute(update(Item).where(Item.id == 1).values(name="bulk"))
            s.commit()
    finally:
        release.set()
        thread.join()
    assert_as_in_database(fdb, Item, 1, hit=False)


def test_no_write_through_from_a_repeatable_read_snapshot(fpg: Database, cache: QueryCache) -> None:
    """The reload would read the transaction's snapshot, older than the tokens it is stamped
    with: another commit's book would be missing from a 'fresh' count."""
    _in_use(fpg, cache, Author)
    snapshot = sessionmaker(fpg.engine.execution_options(isolation_level="REPEATABLE READ"))
    cache.attach(snapshot)
    with snapshot() as s:
        author = s.get_one(Author, 1)  # the snapshot: two books
        with fpg.Session() as other:
            other.add(Book(id=9, author_id=1, title="n"))
            other.commit()
        author.name = "x"
        s.commit()
    assert_as_in_database(fpg, Author, 1, hit=False)


def test_a_commit_between_the_reload_and_the_publish_leaves_a_miss(
    fpg: Database, cache: QueryCache
) -> None:
    """Tokens are read before the reload: a book committed after it makes the count stale."""
    _in_use(fpg, cache, Author)
    armed: list[bool] = []

    def meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if armed and " IN (" in statement:  # right after the reload SELECT, once
            armed.clear()
            with fpg.Session() as other:
                other.add(Book(id=9, author_id=1, title="n"))
                other.commit()

    event.listen(fpg.engine, "after_cursor_execute", meanwhile)
    try:
        with fpg.Session() as s:
            s.get_one(Author, 1).name = "x"
            s.flush()
            armed.append(True)
            s.commit()
    finally:
        event.remove(fpg.engine, "after_cursor_execute", meanwhile)
    assert not armed
    assert_as_in_database(fpg, Author, 1, hit=False)


def test_each_class_of_a_hierarchy_is_reloaded_as_itself(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    with wdb.Session() as s:
        s.get(Employee, 1, options=C)
    with wdb.Session() as s:
        s.get_one(Employee, 1).name = "ann2"
        s.get_one(Manager, 2).budget = 7
        s.flush()
        with wdb.counter.expect(2):  # one reload per mapped class
            s.commit()
    assert_as_in_database(wdb, Employee, 1)
    assert_as_in_database(wdb, Employee, 2)
    with wdb.Session() as s:  # the row changes class behind the ORM's back: not written through
        s.get_one(Manager, 2).name = "bob2"
        s.flush()
        s.execute(text("UPDATE w_employee SET kind = 'employee' WHERE id = 2"))
        s.commit()
    with wdb.Session() as s, wdb.counter.expect(1):
        assert type(s.get(Employee, 2, options=C)) is Employee
