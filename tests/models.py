"""The test schema: organisations, users, orders, and a view-like report table."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import DateTime, ForeignKey, Numeric, String, delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Org(Base):
    __tablename__ = "org"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    users: Mapped[list[User]] = relationship(back_populates="org", order_by="User.id")


class User(Base):
    __tablename__ = "app_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id"))
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=datetime(2024, 1, 1))
    org: Mapped[Org] = relationship(back_populates="users")
    orders: Mapped[list[Order]] = relationship(back_populates="user", order_by="Order.id")


class Order(Base):
    __tablename__ = "app_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_user.id"))
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    user: Mapped[User] = relationship(back_populates="orders")


TABLES = [Order.__table__, User.__table__, Org.__table__]


def seed(engine: Engine) -> None:
    """Reset the data to a known state (bypassing any cache: plain Core on the engine)."""
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(delete(table))
        conn.execute(insert(Org), [{"id": 1, "name": "acme"}, {"id": 2, "name": "globex"}])
        conn.execute(
            insert(User),
            [
                {
                    "id": i,
                    "name": f"user{i}",
                    "org_id": 1 if i <= 3 else 2,
                    "balance": Decimal(i * 10),
                    "created_at": datetime(2024, 1, i),
                }
                for i in range(1, 7)
            ],
        )
        conn.execute(
            insert(Order),
            [{"id": i, "user_id": (i % 6) + 1, "total": Decimal(i)} for i in range(1, 13)],
        )
