"""The application side of the example: a cached query over the migrated table.

python app.py        # prints the items, twice: the second time from Redis
"""

from __future__ import annotations

import os

from env_settings import DATABASE_URL, NAMESPACE
from sqlalchemy import Column, Integer, MetaData, Numeric, String, Table, create_engine, select
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

metadata = MetaData()
item = Table(
    "item",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50)),
    Column("price", Numeric(10, 2)),
)

ITEMS = select(item.c.id, item.c.name).order_by(item.c.id).options(cached())


def main() -> None:
    engine = create_engine(DATABASE_URL)
    Session = sessionmaker(engine)
    cache = QueryCache.from_env(namespace=NAMESPACE).attach(Session)
    for _ in range(2):
        with Session() as session:
            print(session.execute(ITEMS).all())
    print(f"hits {cache.stats().hits}, misses {cache.stats().misses}")
    cache.close()


if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    main()
