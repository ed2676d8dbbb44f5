"""Shared fixtures: real Redis, real PostgreSQL and SQLite, counted engines, fresh namespaces.

Services are resolved by ``tests/_services.py`` (env URLs, then local ports, then
testcontainers); when none is available the tests fail with a message saying how to provide one.

Deployments: caches are built through the ``redis_target`` fixture, on the standalone Redis by
default.  A module marked ``@pytest.mark.deployments("standalone", "cluster", ...)`` runs each
test that uses ``redis_target`` (or ``cache``) once per deployment named: a Redis Cluster, a
Sentinel-managed master, or a TLS server with a restricted ACL user, each started by the tests
once per session (``tests/_deployments.py``).  Those runs carry the ``cluster`` marker.  A test
that asks for ``redis_url`` inspects the standalone server directly, so it runs there only.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import QueryCache

from . import _deployments, _services
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


#: every deployment the suite can run the cache on; a module names its own with the marker
DEPLOYMENTS = ("standalone", "cluster", "sentinel", "tls")
EVERY_DEPLOYMENT = pytest.mark.deployments(*DEPLOYMENTS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run tests that build caches through ``redis_target`` on the deployments their module
    names (see the module docstring)."""
    if "redis_target" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("deployments")
    if marker is None:
        return  # the standalone Redis, as an unparametrised fixture
    names = list(marker.args)
    if "redis_url" in inspect.signature(metafunc.function).parameters:
        names = [n for n in names if n == "standalone"]
    if not names:
        pytest.fail(f"{metafunc.function.__name__} asks for redis_url on {marker.args}")
    params = [
        pytest.param(n, id=n, marks=() if n == "standalone" else (pytest.mark.cluster,))
        for n in names
    ]
    metafunc.parametrize("redis_target", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The deployment caches are built on (``request.param``: one of :data:`DEPLOYMENTS`)."""
    name = getattr(request, "param", "standalone")
    if name == "standalone":
        return RedisTarget(request.getfixturevalue("redis_url"))
    if name == "cluster":
        cluster: _deployments.Cluster = request.getfixturevalue("cluster")
        url = f"redis://127.0.0.1:{cluster.ports[0]}/0"
        return RedisTarget(url, {"cluster": True, **_deployments.STEADY_TIMEOUTS})
    if name == "sentinel":
        sentinel: _deployments.SentinelSetup = request.getfixturevalue("sentinel")
        url = f"redis+sentinel://{sentinel.nodes}/{sentinel.name}/0"
        return RedisTarget(url, dict(_deployments.STEADY_TIMEOUTS))
    if name == "tls":
        server: _deployments.TlsServer = request.getfixturevalue("tls_server")
        certs: _deployments.Certs = request.getfixturevalue("certs")
        settings = _deployments.tls_settings(
            certs,
            username=_deployments.TLS_USER,
            password=_deployments.TLS_PASSWORD,
            **_deployments.STEADY_TIMEOUTS,
        )
        return RedisTarget(f"rediss://127.0.0.1:{server.tls_port}/0", settings)
    raise ValueError(f"unknown deployment {name!r}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[_deployments.Cluster]:
    """A Redis Cluster (3 masters, 1 replica each), for the session."""
    deployment = _deployments.start_cluster(masters=3, replicas=1)
    yield deployment
    deployment.close()


@pytest.fixture(scope="session")
def sentinel() -> Iterator[_deployments.SentinelSetup]:
    """A master, a replica and three sentinels, for the session."""
    deployment = _deployments.start_sentinel(sentinels=3)
    yield deployment
    deployment.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> _deployments.Certs:
    return _deployments.make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def tls_server(certs: _deployments.Certs) -> Iterator[_deployments.TlsServer]:
    """A TLS server (client certificates optional) with the tests' restricted ACL user."""
    server = _deployments.start_tls_server(certs, auth_clients="optional")
    admin = _deployments.admin(server.plain_port)
    _deployments.add_cache_user(admin, _deployments.TLS_USER, _deployments.TLS_PASSWORD, "t*")
    yield server
    server.close()


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
