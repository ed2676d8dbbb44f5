"""A second process that commits one kind of write: ``python -m tests._writer KIND DB REDIS NS``.

Used by tests/test_cross_process.py: the parent fills and hits a cached read, runs this, and
its next read must be fresh.  Each writer attaches its own QueryCache to the same namespace.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sqlalchemy import create_engine, event, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import QueryCache, cached

from .models import User
from .models_writes import Account

RULES = {"app_user": {"tags": ["dashboard"]}}


def _flush(engine: Engine, session: sessionmaker[Session]) -> None:
    with session() as s:  # read through the entity cache: this process then writes User through
        s.get_one(User, 1, options=[cached()]).name = "other"
        s.commit()


def _bulk(engine: Engine, session: sessionmaker[Session]) -> None:
    with session() as s:
        s.execute(update(User).where(User.id == 1).values(name="other"))
        s.commit()


def _core(engine: Engine, session: sessionmaker[Session]) -> None:
    with engine.begin() as conn:
        conn.execute(update(User).where(User.id == 1).values(name="other"))


def _autocommit(engine: Engine, session: sessionmaker[Session]) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(update(User).where(User.id == 1).values(name="other"))


def _text(engine: Engine, session: sessionmaker[Session]) -> None:
    with session() as s:
        s.execute(text("UPDATE app_user SET name = 'other' WHERE id = 1"))
        s.commit()


def _driver_sql(engine: Engine, session: sessionmaker[Session]) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE app_user SET name = 'other' WHERE id = 1")


def _cascade(engine: Engine, session: sessionmaker[Session]) -> None:
    with session() as s:
        s.delete(s.get_one(Account, 1))
        s.commit()


WRITERS: dict[str, Callable[[Engine, sessionmaker[Session]], None]] = {
    "flush": _flush,
    "bulk": _bulk,
    "core": _core,
    "autocommit": _autocommit,
    "text": _text,
    "driver_sql": _driver_sql,
    "cascade": _cascade,
}


def main(kind: str, db_url: str, redis_url: str, namespace: str) -> None:
    engine = create_engine(db_url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda c, r: c.execute("PRAGMA foreign_keys=ON"))
    cache = QueryCache.from_url(redis_url, namespace=namespace, invalidates=RULES)
    session = sessionmaker(engine)
    cache.attach(engine)
    cache.attach(session)
    try:
        WRITERS[kind](engine, session)
    finally:
        cache.close()
        engine.dispose()


if __name__ == "__main__":
    main(*sys.argv[1:5])
