"""migrations_example/: `alembic upgrade head` applies its migrations and invalidates the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.wiring import _capture_ddl as ddl

from . import _services
from ._counting import make_counted_engine

EXAMPLE = Path(__file__).resolve().parent.parent / "migrations_example"
item = Table("item", MetaData(), Column("id", Integer), Column("name", String))
ITEMS = select(item.c.id, item.c.name).order_by(item.c.id).options(cached())


def alembic(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'example.db'}"
        return
    engine = make_counted_engine(postgres_url)[0]

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS item, alembic_version"))
            conn.execute(text("DROP FUNCTION IF EXISTS sqla_redis_cache_notify()"))

    drop()
    yield postgres_url
    drop()
    engine.dispose()


def test_upgrade_head_makes_cached_rows_unreachable(
    database_url: str, redis_url: str, namespace: str
) -> None:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "SQLA_CACHE_NAMESPACE": namespace}
    first = alembic(env, "upgrade", "0001")
    assert first.returncode == 0, first.stderr
    engine, counter = make_counted_engine(database_url)
    cache = QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0)
    Session = sessionmaker(engine)
    cache.attach(Session)

    def read() -> list[tuple[int, str]]:
        with Session() as session:
            return [tuple(row) for row in session.execute(ITEMS)]  # type: ignore[misc]

    try:
        with counter.expect(1):
            assert read() == [(1, "Apple"), (2, "Pear")]
        with counter.expect(0):
            assert read() == [(1, "Apple"), (2, "Pear")]
        upgrade = alembic(env, "upgrade", "head")
        assert upgrade.returncode == 0, upgrade.stderr
        assert f"query cache namespace '{namespace}' invalidated" in upgrade.stdout
        with counter.expect(1):
            assert read() == [(1, "apple"), (2, "pear")]
        with counter.expect(0):
            assert read() == [(1, "apple"), (2, "pear")]
        if engine.dialect.name == "postgresql":  # 0003: outside writes are captured
            with engine.connect() as conn:
                assert ("public", "item") in ddl.captured(conn)
        again = alembic(env, "upgrade", "head")  # nothing to apply: the cache stays warm
        assert again.returncode == 0 and "invalidated" not in again.stdout
        with counter.expect(0):
            read()
    finally:
        cache.clear()
        cache.close()
        engine.dispose()


def test_unreachable_redis_fails_the_command_loudly(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}",
        "REDIS_URL": f"redis://127.0.0.1:{_services.free_port()}/0",
        "SQLA_CACHE_NAMESPACE": "unreachable",
    }
    result = alembic(env, "upgrade", "head")
    assert result.returncode == 1
    assert "could not be invalidated: Redis is unreachable" in result.stderr
    assert "sqla-redis-cache clear --all --yes --namespace unreachable" in result.stderr
