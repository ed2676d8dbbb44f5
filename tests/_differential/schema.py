"""The differential test's own schema (``d_`` tables, own MetaData) and its seed data.

Small on purpose, but every shape the cache has to follow is here: tenants and their users
(a tenant filter is the fine-grained invalidation case), a many-to-many through an association
table, joined-table inheritance, ``ON DELETE CASCADE`` foreign keys the ORM leaves to the
database (``passive_deletes``), a deferred and a nullable column, and a per-tenant counter that
only a trigger writes (declared to the cache with an ``invalidates`` rule, ``RULES``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    delete,
    event,
    insert,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship


class DBase(DeclarativeBase):
    pass


membership = Table(
    "d_membership",
    DBase.metadata,
    Column("user_id", ForeignKey("d_user.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("d_group.id", ondelete="CASCADE"), primary_key=True),
)


class Tenant(DBase):
    __tablename__ = "d_tenant"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(30))
    users: Mapped[list[User]] = relationship(
        back_populates="tenant",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="User.id",
    )
    items: Mapped[list[Item]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Item.id"
    )


class TenantStat(DBase):
    """Users per tenant, maintained by triggers on ``d_user`` only (see ``RULES``)."""

    __tablename__ = "d_tenant_stat"
    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("d_tenant.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    n_users: Mapped[int] = mapped_column(Integer)


class User(DBase):
    __tablename__ = "d_user"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("d_tenant.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(30))
    score: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    nickname: Mapped[str | None] = mapped_column(String(30), nullable=True)
    bio: Mapped[str] = deferred(mapped_column(Text, default=""))
    tenant: Mapped[Tenant] = relationship(back_populates="users")
    groups: Mapped[list[Group]] = relationship(
        secondary=membership, order_by="Group.id", back_populates="users"
    )


class Group(DBase):
    __tablename__ = "d_group"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(30))
    users: Mapped[list[User]] = relationship(
        secondary=membership, order_by="User.id", back_populates="groups"
    )


class Item(DBase):
    __tablename__ = "d_item"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("d_tenant.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    label: Mapped[str] = mapped_column(String(30))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "item",
    }


class SpecialItem(Item):
    __tablename__ = "d_special_item"
    id: Mapped[int] = mapped_column(
        ForeignKey("d_item.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    power: Mapped[int] = mapped_column(Integer)
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "special"}


class Audit(DBase):
    """Archive rows written by ``INSERT ... SELECT`` and data-modifying CTEs."""

    __tablename__ = "d_audit"
    id: Mapped[int] = mapped_column(primary_key=True)  # autoincrement: ids are not compared
    user_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(30))


#: the trigger-maintained counter, declared to both caches
RULES = {"d_user": {"tables": ["d_tenant_stat"]}}

SEED_TENANTS = (1, 2, 3, 4)
SEED_USERS = tuple(range(1, 13))
SEED_GROUPS = (1, 2, 3)
SEED_ITEMS = tuple(range(1, 9))

_PG_TRIGGER = [
    """CREATE OR REPLACE FUNCTION d_user_stat() RETURNS trigger AS $$
    BEGIN
      IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE d_tenant_stat SET n_users = n_users - 1 WHERE tenant_id = OLD.tenant_id;
      END IF;
      IF TG_OP IN ('UPDATE', 'INSERT') THEN
        UPDATE d_tenant_stat SET n_users = n_users + 1 WHERE tenant_id = NEW.tenant_id;
      END IF;
      RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER d_user_stat AFTER INSERT OR DELETE OR UPDATE OF tenant_id ON d_user
    FOR EACH ROW EXECUTE FUNCTION d_user_stat()""",
]
_SQLITE_TRIGGER = [
    """CREATE TRIGGER d_user_stat_i AFTER INSERT ON d_user BEGIN
    UPDATE d_tenant_stat SET n_users = n_users + 1 WHERE tenant_id = NEW.tenant_id; END""",
    """CREATE TRIGGER d_user_stat_d AFTER DELETE ON d_user BEGIN
    UPDATE d_tenant_stat SET n_users = n_users - 1 WHERE tenant_id = OLD.tenant_id; END""",
    """CREATE TRIGGER d_user_stat_u AFTER UPDATE OF tenant_id ON d_user BEGIN
    UPDATE d_tenant_stat SET n_users = n_users - 1 WHERE tenant_id = OLD.tenant_id;
    UPDATE d_tenant_stat SET n_users = n_users + 1 WHERE tenant_id = NEW.tenant_id; END""",
]


def sqlite_foreign_keys(engine: Engine) -> None:
    """``PRAGMA foreign_keys=ON`` on every connection (SQLite leaves them off by default)."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _fk(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys=ON")


def create_schema(engine: Engine) -> None:
    """Drop and create the ``d_`` tables and the trigger (plain engine, no cache attached)."""
    DBase.metadata.drop_all(engine)
    DBase.metadata.create_all(engine)
    with engine.begin() as conn:
        for ddl in _PG_TRIGGER if engine.dialect.name == "postgresql" else _SQLITE_TRIGGER:
            conn.execute(text(ddl))


def seed(engine: Engine) -> None:
    """Reset the rows to the same known state (plain Core on an unattached engine)."""
    users = [
        {
            "id": i,
            "tenant_id": SEED_TENANTS[i % len(SEED_TENANTS)],
            "name": f"u{i}",
            "score": Decimal(i * 125) / 100,
            "nickname": None if i % 3 == 0 else f"n{i}",
            "bio": f"bio{i}",
        }
        for i in SEED_USERS
    ]
    with engine.begin() as conn:
        for table in reversed(DBase.metadata.sorted_tables):
            conn.execute(delete(table))
        conn.execute(insert(Tenant), [{"id": t, "name": f"t{t}"} for t in SEED_TENANTS])
        conn.execute(insert(TenantStat), [{"tenant_id": t, "n_users": 0} for t in SEED_TENANTS])
        conn.execute(insert(User.__table__), users)  # the trigger counts them
        conn.execute(insert(Group), [{"id": g, "name": f"g{g}"} for g in SEED_GROUPS])
        conn.execute(
            insert(membership),
            [
                {"user_id": u, "group_id": g}
                for u in SEED_USERS
                for g in SEED_GROUPS
                if (u + g) % 3 == 0
            ],
        )
        conn.execute(
            insert(Item.__table__),
            [
                {
                    "id": i,
                    "tenant_id": SEED_TENANTS[i % len(SEED_TENANTS)],
                    "kind": "special" if i % 2 == 0 else "item",
                    "label": f"i{i}",
                }
                for i in SEED_ITEMS
            ],
        )
        conn.execute(
            insert(SpecialItem.__table__),
            [{"id": i, "power": i * 10} for i in SEED_ITEMS if i % 2 == 0],
        )
