"""The ``sqla_cache`` fixture that the package's pytest plugin gives users' own suites."""

from __future__ import annotations

import os
import re

import pytest
import redis

pytest_plugins = ["pytester"]

USER_TESTS = """
from sqla_redis_cache import QueryCache

SEEN = []

def test_one(sqla_cache):
    assert isinstance(sqla_cache, QueryCache)
    assert sqla_cache.config.namespace.startswith("pytest-")
    SEEN.append(sqla_cache.config.namespace)
    sqla_cache.set("k", 1)
    assert sqla_cache.get("k") == 1

def test_two(sqla_cache):
    assert sqla_cache.config.namespace not in SEEN  # a fresh namespace per test
    assert sqla_cache.get("k") is None
    sqla_cache.set("k", 2)
    print("NAMESPACES", SEEN[0], sqla_cache.config.namespace)
"""


def test_fixture_gives_a_fresh_namespace_and_cleans_up(
    pytester: pytest.Pytester, redis_url: str
) -> None:
    pytester.makepyfile(USER_TESTS)
    result = pytester.runpytest("-s", f"--sqla-cache-redis-url={redis_url}")
    result.assert_outcomes(passed=2)
    found = re.search(r"NAMESPACES (\S+) (\S+)", result.stdout.str())
    assert found is not None
    client = redis.Redis.from_url(redis_url)
    for namespace in found.groups():
        assert not list(client.scan_iter(match=f"{namespace}:*"))
    client.close()


def test_memory_option_and_unreachable_redis(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USER_TESTS)
    pytester.runpytest("--sqla-cache-memory").assert_outcomes(passed=2)
    result = pytester.runpytest("--sqla-cache-redis-url=redis://127.0.0.1:1/0")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*sqla_cache: cannot reach Redis at redis://127.0.0.1:1/0*"])


APP = """
from sqlalchemy import Integer, String, create_engine, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from sqla_redis_cache import QueryCache, cached


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(String(20))


engine = create_engine("sqlite:///{path}")
Base.metadata.create_all(engine)
with engine.begin() as conn:
    conn.execute(insert(Note), [{{"id": 1, "text": "a"}}, {{"id": 2, "text": "b"}}])
SessionLocal = sessionmaker(engine)

cache = QueryCache.from_env(stats_interval=0)  # attached once, at import
cache.attach(SessionLocal, default=cached())
"""

APP_TESTS = """
import os

from sqlalchemy import select

import adoptapp
from adoptapp import Note, SessionLocal


def read():
    with SessionLocal() as s:
        return s.scalars(select(Note).order_by(Note.id)).all()


def test_one(sqla_app_cache, sqla_cache_namespace):
    assert sqla_app_cache is adoptapp.cache
    assert sqla_cache_namespace.startswith("pytest-")
    assert adoptapp.cache.config.namespace == sqla_cache_namespace
    assert os.environ["SQLA_CACHE_NAMESPACE"] == sqla_cache_namespace
    read(); read()
    assert (sqla_app_cache.stats().misses, sqla_app_cache.stats().hits) == (1, 1)


def test_two(sqla_app_cache, sqla_cache_namespace):
    assert sqla_app_cache.stats().hits == 0  # statistics zeroed
    read()  # cleared before the test: a miss again, not test_one's entry
    assert (sqla_app_cache.stats().misses, sqla_app_cache.stats().hits) == (1, 0)
    print("NAMESPACE", sqla_cache_namespace)
"""


def test_app_cache_attached_at_import_gets_the_session_namespace(
    pytester: pytest.Pytester, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("SQLA_CACHE_NAMESPACE", "production")
    path = pytester.path / "app.db"
    pytester.makepyfile(adoptapp=APP.format(path=path))
    pytester.makeconftest("import adoptapp  # the application, imported with the conftest\n")
    pytester.makeini("[pytest]\nsqla_cache_app = adoptapp:cache\n")
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    found = re.search(r"NAMESPACE (\S+)", result.stdout.str())
    assert found is not None
    client = redis.Redis.from_url(redis_url)
    assert not list(client.scan_iter(match=f"{found.group(1)}:*"))  # deleted at the end
    client.close()
    assert os.environ["SQLA_CACHE_NAMESPACE"] == "production"  # restored


def test_app_cache_on_another_namespace_is_refused(
    pytester: pytest.Pytester, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    app = APP.format(path=pytester.path / "app.db").replace(
        "QueryCache.from_env(stats_interval=0)",
        'QueryCache.from_env(namespace="production", stats_interval=0)',
    )
    pytester.makepyfile(adoptapp=app)
    pytester.makepyfile(test_app="def test_x(sqla_app_cache):\n    pass\n")
    result = pytester.runpytest("--sqla-cache-app=adoptapp:cache", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*uses namespace 'production', not the test session's*"])
