"""A second schema for the write-path tests: every shape a flush can take.

Kept apart from ``tests/models.py`` (own MetaData) so that these tables, their foreign-key
actions and their seed data evolve without touching the core tests.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import Column, ForeignKey, Integer, String, Table, delete, event, insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class WBase(DeclarativeBase):
    pass


# joined-table inheritance: a Manager row lives in two tables
class Employee(WBase):
    __tablename__ = "w_employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "employee",
    }


class Manager(Employee):
    __tablename__ = "w_manager"
    id: Mapped[int] = mapped_column(ForeignKey("w_employee.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(default=0)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}


# single-table inheritance
class Vehicle(WBase):
    __tablename__ = "w_vehicle"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    wheels: Mapped[int] = mapped_column(default=4)
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "vehicle",
    }


class Truck(Vehicle):
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "truck"}


# many-to-many through an association table
enrollment = Table(
    "w_enrollment",
    WBase.metadata,
    Column("student_id", ForeignKey("w_student.id"), primary_key=True),
    Column("course_id", ForeignKey("w_course.id"), primary_key=True),
)


class Student(WBase):
    __tablename__ = "w_student"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    courses: Mapped[list[Course]] = relationship(secondary=enrollment, order_by="Course.id")


class Course(WBase):
    __tablename__ = "w_course"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))


# ORM cascades: the ORM deletes the children itself
class Folder(WBase):
    __tablename__ = "w_folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    files: Mapped[list[File]] = relationship(
        cascade="all, delete-orphan", order_by="File.id", back_populates="folder"
    )


class File(WBase):
    __tablename__ = "w_file"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("w_folder.id"))
    name: Mapped[str] = mapped_column(String(50))
    folder: Mapped[Folder] = relationship(back_populates="files")


# database-side cascades the ORM never sees (passive_deletes), two levels deep
class Account(WBase):
    __tablename__ = "w_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    entries: Mapped[list[Entry]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Entry.id"
    )


class Entry(WBase):
    __tablename__ = "w_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("w_account.id", ondelete="CASCADE"))
    amount: Mapped[int] = mapped_column(Integer)


class EntryNote(WBase):
    __tablename__ = "w_entry_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("w_entry.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(String(50))


class Emission(WBase):
    """A table with a declared write rule in the tests (its writes also invalidate a summary)."""

    __tablename__ = "w_emission"
    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(Integer)
    kg: Mapped[int] = mapped_column(Integer)


class Seat(WBase):
    """Composite primary key."""

    __tablename__ = "w_seat"
    room: Mapped[str] = mapped_column(String(10), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    holder: Mapped[str] = mapped_column(String(50))


class Doc(WBase):
    """A deferred column and a version counter."""

    __tablename__ = "w_doc"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    body: Mapped[str] = mapped_column(String(500), deferred=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": version}


# foreign-key actions the database applies to rows no SQL names (reached by textual SQL too)
class R3Parent(WBase):
    __tablename__ = "r3_parents"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(String(10), unique=True)


class R3Child(WBase):
    """ON DELETE CASCADE on the parent's id, ON UPDATE CASCADE on its code."""

    __tablename__ = "r3_children"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("r3_parents.id", ondelete="CASCADE"))
    parent_code: Mapped[str | None] = mapped_column(
        ForeignKey("r3_parents.code", onupdate="CASCADE")
    )


class R3Grandchild(WBase):
    """Reached transitively, through r3_children."""

    __tablename__ = "r3_grandchildren"
    id: Mapped[int] = mapped_column(primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("r3_children.id", ondelete="CASCADE"))


class R3Ref(WBase):
    """ON DELETE SET NULL."""

    __tablename__ = "r3_refs"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("r3_parents.id", ondelete="SET NULL"))


class R3Plain(WBase):
    """No action: only ``TRUNCATE r3_parents CASCADE`` changes it."""

    __tablename__ = "r3_plain"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("r3_parents.id"))


class R3Archive(WBase):
    __tablename__ = "r3_archive"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(String(10))


def enable_sqlite_foreign_keys(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _fk(dbapi_connection, record):  # type: ignore[no-untyped-def]
            dbapi_connection.execute("PRAGMA foreign_keys=ON")


def seed_writes(engine: Engine) -> None:
    """Reset the write-path tables to a known state (plain Core, no cache attached)."""
    with engine.begin() as conn:
        for table in reversed(WBase.metadata.sorted_tables):
            conn.execute(delete(table))
        conn.execute(
            insert(Employee),
            [
                {"id": 1, "name": "ann", "kind": "employee"},
                {"id": 2, "name": "bob", "kind": "manager"},
            ],
        )
        conn.execute(insert(Manager.__table__), [{"id": 2, "budget": 100}])
        conn.execute(insert(Vehicle), [{"id": 1, "kind": "truck", "wheels": 6}])
        conn.execute(insert(Student), [{"id": 1, "name": "sue"}])
        conn.execute(insert(Course), [{"id": 1, "title": "math"}, {"id": 2, "title": "art"}])
        conn.execute(insert(enrollment), [{"student_id": 1, "course_id": 1}])
        conn.execute(insert(Folder), [{"id": 1}])
        conn.execute(
            insert(File),
            [{"id": 1, "folder_id": 1, "name": "a"}, {"id": 2, "folder_id": 1, "name": "b"}],
        )
        conn.execute(insert(Account), [{"id": 1}, {"id": 2}])
        conn.execute(
            insert(Entry),
            [
                {"id": 1, "account_id": 1, "amount": 10},
                {"id": 2, "account_id": 1, "amount": 20},
                {"id": 3, "account_id": 2, "amount": 30},
            ],
        )
        conn.execute(insert(EntryNote), [{"id": 1, "entry_id": 1, "text": "n1"}])
        conn.execute(
            insert(Emission), [{"id": 1, "org_id": 1, "kg": 5}, {"id": 2, "org_id": 1, "kg": 7}]
        )
        conn.execute(insert(Seat), [{"room": "a", "number": 1, "holder": "x"}])
        conn.execute(insert(Doc), [{"id": 1, "title": "t", "body": "long", "version": 1}])
        conn.execute(insert(R3Parent), [{"id": 1, "code": "a"}, {"id": 2, "code": "b"}])
        conn.execute(
            insert(R3Child),
            [
                {"id": 1, "parent_id": 1, "parent_code": "a"},
                {"id": 2, "parent_id": 2, "parent_code": "b"},
            ],
        )
        conn.execute(insert(R3Grandchild), [{"id": 1, "child_id": 1}])
        conn.execute(insert(R3Ref), [{"id": 1, "parent_id": 1}])
        conn.execute(insert(R3Plain), [{"id": 1, "parent_id": 2}])
