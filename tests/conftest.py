"""Shared fixtures: real Redis, real PostgreSQL and SQLite, counted engines, fresh namespaces.

Services are resolved by ``tests/_services.py`` (env URLs, then local ports, then
testcontainers); when none is available the tests fail with a message saying how to provide one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import QueryCache

from . import _services
from ._counting import Counter, make_counted_engine
from .models import Base, seed


@dataclass
class Database:
    name: str
    url: str
    engine: Engine
    counter: Counter
    Session: sessionmaker[Session]


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _services.redis_url()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return _services.postgres_url()


@dataclass
class RedisTarget:
    """The Redis deployment caches are built on: standalone here; cluster, sentinel and TLS
    modules override the ``redis_target`` fixture, so the same tests run on each of them."""

    url: str
    settings: dict[str, Any] = field(default_factory=dict)

    def cache(self, namespace: str, **settings: Any) -> QueryCache:
        return QueryCache.from_url(self.url, namespace=namespace, **{**self.settings, **settings})

    def client(self) -> Any:
        """A plain redis-py client of the deployment, for inspecting keys."""
        from sqla_redis_cache import CacheConfig
        from sqla_redis_cache.io._clients import make_sync_client

        config = CacheConfig.from_url(
            self.url, **{**self.settings, "socket_timeout": 2.0, "connect_timeout": 2.0}
        )
        return make_sync_client(config)


@pytest.fixture(scope="session")
def redis_target(redis_url: str) -> RedisTarget:
    return RedisTarget(redis_url)


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def cache(redis_target: RedisTarget, namespace: str) -> Iterator[QueryCache]:
    qc = redis_target.cache(namespace)
    yield qc
    qc.clear()
    qc.close()


@pytest.fixture
def patient_cache(redis_url: str, namespace: str) -> Iterator[QueryCache]:
    """For timing-sensitive tests: timeouts long enough that a loaded machine never makes
    Redis fail open (which would rightly skip the stampede lock and break the counts)."""
    qc = QueryCache.from_url(redis_url, namespace=namespace, connect_timeout=2, socket_timeout=2)
    yield qc
    qc.clear()
    qc.close()


_ENGINES: dict[str, tuple[Engine, Counter]] = {}


def _engine_for(name: str, url: str) -> tuple[Engine, Counter]:
    if name not in _ENGINES:
        engine, counter = make_counted_engine(url)
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        _ENGINES[name] = (engine, counter)
    return _ENGINES[name]


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "cache-tests.db"
    return f"sqlite:///{path}"


def _database(name: str, url: str) -> Database:
    engine, counter = _engine_for(name, url)
    seed(engine)
    counter.reset()
    return Database(name, url, engine, counter, sessionmaker(engine))


@pytest.fixture
def pg(postgres_url: str) -> Database:
    """PostgreSQL with fresh seed data and a new sessionmaker."""
    return _database("postgresql", postgres_url)


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest, postgres_url: str, sqlite_url: str) -> Database:
    """The same test on PostgreSQL and on SQLite (the embedded case)."""
    url = postgres_url if request.param == "postgresql" else sqlite_url
    return _database(request.param, url)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for engine, _ in [*_ENGINES.values(), *_WRITE_ENGINES.values()]:
        engine.dispose()


# write-path tests: their own schema, on PostgreSQL and SQLite --------------------------------

_WRITE_ENGINES: dict[str, tuple[Engine, Counter]] = {}


def _writes_database(name: str, url: str) -> Database:
    from .models_writes import WBase, enable_sqlite_foreign_keys, seed_writes

    if name not in _WRITE_ENGINES:
        engine, counter = make_counted_engine(url)
        enable_sqlite_foreign_keys(engine)
        WBase.metadata.drop_all(engine)
        WBase.metadata.create_all(engine)
        _WRITE_ENGINES[name] = (engine, counter)
    engine, counter = _WRITE_ENGINES[name]
    seed_writes(engine)
    counter.reset()
    return Database(name, url, engine, counter, sessionmaker(engine))


@pytest.fixture(params=["postgresql", "sqlite"])
def wdb(request: pytest.FixtureRequest, postgres_url: str, sqlite_url: str) -> Database:
    """The write-path schema, freshly seeded, on PostgreSQL and on SQLite."""
    url = postgres_url if request.param == "postgresql" else sqlite_url
    return _writes_database(request.param, url)


@pytest.fixture
def wpg(postgres_url: str) -> Database:
    return _writes_database("postgresql", postgres_url)
