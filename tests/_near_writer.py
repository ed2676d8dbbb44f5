"""A peer process of test_near_tracking: ``python -m tests._near_writer MODE DB REDIS NS``.

``writer``: for each line ``N`` on stdin, set the counter row to N, commit through its own
QueryCache, then print ``N`` (``commit()`` has returned).  ``reader``: for each line, read the
counter through a cached query (near cache on) and print the value and whether Redis was asked.
"""

from __future__ import annotations

import sys

from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select, update
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

metadata = MetaData()
counter = Table(
    "near_counter", metadata, Column("id", Integer, primary_key=True), Column("n", Integer)
)


def main() -> None:
    mode, db_url, redis_url, namespace = sys.argv[1:5]
    engine = create_engine(db_url)
    session = sessionmaker(engine)
    cache = QueryCache.from_url(
        redis_url, namespace=namespace, connect_timeout=2, socket_timeout=2, stats_interval=0
    )
    cache.attach(session)
    stmt = select(counter.c.n).where(counter.c.id == 1).options(cached())
    print("ready", flush=True)
    for line in sys.stdin:
        if mode == "writer":
            with session() as s:
                s.execute(update(counter).where(counter.c.id == 1).values(n=int(line)))
                s.commit()
            print(line.strip(), flush=True)
        else:
            before = cache.stats().near.get("hits", 0)
            with session() as s:
                value = s.execute(stmt).scalar_one()
            print(value, cache.stats().near.get("hits", 0) - before, flush=True)
    cache.close()


if __name__ == "__main__":
    main()
