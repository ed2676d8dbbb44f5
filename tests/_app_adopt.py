"""An application that attaches its cache once, at import, with a policy (for the CLI tests).

It reads its Redis, database and namespace from the environment, as a deployed application
would; ``tests/test_cli_adopt.py`` runs the CLI against it in a subprocess.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

from .models import Base, Order, Org, User

__all__ = ["Base", "Order", "Org", "SessionLocal", "User", "cache", "engine", "org_report"]

engine = create_engine(os.environ["SQLA_CACHE_TEST_DATABASE_URL"])
SessionLocal = sessionmaker(engine)
cache = QueryCache.from_url(
    os.environ["REDIS_URL"], namespace=os.environ["SQLA_CACHE_NAMESPACE"], stats_interval=0
)
cache.attach(SessionLocal, default=cached(ttl=60), tables={"org": None})


def org_report(org_id: int) -> object:
    """A query builder of the application's own (callable with --unsafe-eval only)."""
    return select(User).where(User.org_id == org_id)
