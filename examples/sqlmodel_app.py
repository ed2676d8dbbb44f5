"""SQLModel: ``attach(engine, default=...)``, so ``with Session(engine)`` needs no change.

SQLModel applications open ``Session(engine)`` wherever they need one, rather than a
sessionmaker; attaching the cache to the engine with a default policy caches the SELECTs of
every session and connection on it, and invalidates on their commits.

Run it (SQLite and Redis at ``REDIS_URL``, default localhost)::

    pip install sqlmodel && python -m examples.sqlmodel_app
"""

from __future__ import annotations

import os
import tempfile

from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine, select

from sqla_redis_cache import QueryCache, cached


class Hero(SQLModel, table=True):
    __tablename__ = "example_sqlmodel_hero"
    id: int | None = Field(default=None, primary_key=True)
    name: str
    team: str = Field(index=True)


def setup(database_url: str, cache: QueryCache) -> Engine:
    engine = create_engine(database_url)
    SQLModel.metadata.create_all(engine, tables=[Hero.__table__])  # type: ignore[attr-defined]
    cache.attach(engine, default=cached(ttl=300, tags=["heroes"]))
    return engine


def heroes_of(engine: Engine, team: str) -> list[str]:
    with Session(engine) as session:
        return [h.name for h in session.exec(select(Hero).where(Hero.team == team))]


def recruit(engine: Engine, name: str, team: str) -> None:
    with Session(engine) as session:
        session.add(Hero(name=name, team=team))
        session.commit()  # invalidates the hero table: the next read is fresh


def main() -> None:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp()}/heroes.db"
    cache = QueryCache.from_env(namespace=os.environ.get("SQLA_CACHE_NAMESPACE", "sqlmodel-ex"))
    engine = setup(url, cache)
    recruit(engine, "Deadpond", "z-force")
    print(heroes_of(engine, "z-force"), heroes_of(engine, "z-force"))
    recruit(engine, "Rusty-Man", "z-force")
    print(heroes_of(engine, "z-force"))
    stats = cache.stats()
    print(f"hits {stats.hits}, misses {stats.misses}")
    cache.clear()
    cache.close()


if __name__ == "__main__":
    main()
