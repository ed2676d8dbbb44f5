"""Schema for the entity-freshness tests: columns whose stored value differs from the assigned one.

Own MetaData (like ``models_writes``): type coercions the database applies (``Numeric``
rounding, ``CHAR`` padding, JSON keys, ``timestamptz``), a server default, a computed column,
a trigger that rewrites a column, a ``column_property`` over another table, and a
database-side ``ON DELETE CASCADE`` the ORM never sees (``passive_deletes``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CHAR,
    JSON,
    Computed,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship


class FBase(DeclarativeBase):
    pass


class Item(FBase):
    __tablename__ = "f_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    qty: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(CHAR(5))
    data: Mapped[Any] = mapped_column(JSON)


class Gadget(FBase):
    """Columns the database fills, declared as such: a server default, a computed column."""

    __tablename__ = "f_gadget"
    id: Mapped[int] = mapped_column(primary_key=True)
    qty: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(20), server_default="srv")
    doubled: Mapped[int] = mapped_column(Integer, Computed("qty * 2", persisted=True))


class Note(FBase):
    """A column a trigger rewrites, which the ORM knows nothing about."""

    __tablename__ = "f_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    shout: Mapped[str] = mapped_column(String(20))


class Author(FBase):
    __tablename__ = "f_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Book(FBase):
    __tablename__ = "f_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("f_author.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(50))


# a column read from another table: entries of Author must depend on f_book too
Author.book_count = column_property(  # type: ignore[attr-defined]
    select(func.count(Book.id)).where(Book.author_id == Author.id).scalar_subquery()
)
Author.books = relationship(Book, passive_deletes=True, order_by=Book.id)  # type: ignore[attr-defined]


_TRIGGERS = {
    "postgresql": [
        "CREATE OR REPLACE FUNCTION f_note_shout() RETURNS trigger AS $$ "
        "BEGIN NEW.shout := upper(NEW.shout); RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER f_note_shout BEFORE INSERT OR UPDATE ON f_note "
        "FOR EACH ROW EXECUTE FUNCTION f_note_shout()",
    ],
    "sqlite": [
        "CREATE TRIGGER f_note_shout AFTER UPDATE OF shout ON f_note "
        "BEGIN UPDATE f_note SET shout = upper(NEW.shout) WHERE id = NEW.id; END",
        "CREATE TRIGGER f_note_shout_ins AFTER INSERT ON f_note "
        "BEGIN UPDATE f_note SET shout = upper(NEW.shout) WHERE id = NEW.id; END",
    ],
}


def create_fresh_schema(engine: Engine) -> None:
    FBase.metadata.drop_all(engine)
    FBase.metadata.create_all(engine)
    with engine.begin() as conn:
        for statement in _TRIGGERS[engine.dialect.name]:
            conn.execute(text(statement))


def enable_foreign_keys(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _fk(dbapi_connection, record):  # type: ignore[no-untyped-def]
            dbapi_connection.execute("PRAGMA foreign_keys=ON")


def seed_fresh(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(FBase.metadata.sorted_tables):
            conn.execute(delete(table))
        conn.execute(
            insert(Item),
            [
                {
                    "id": i,
                    "name": f"item{i}",
                    "price": Decimal("1.50"),
                    "seen_at": datetime.fromisoformat("2024-01-01T12:00:00+00:00"),
                    "qty": 1,
                    "code": "abcde",
                    "data": {"k": "v"},
                }
                for i in (1, 2)
            ],
        )
        conn.execute(insert(Gadget), [{"id": i, "qty": 1} for i in (1, 2)])
        conn.execute(insert(Note), [{"id": i, "shout": "ok"} for i in (1, 2)])
        conn.execute(insert(Author), [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}])
        conn.execute(
            insert(Book),
            [
                {"id": 1, "author_id": 1, "title": "a"},
                {"id": 2, "author_id": 1, "title": "b"},
                {"id": 3, "author_id": 2, "title": "c"},
            ],
        )
