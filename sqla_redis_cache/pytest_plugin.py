"""A pytest plugin for applications' own test suites: a cache per test, or the app's own cache.

Installed with the package (entry point ``pytest11``), so nothing needs enabling::

    def test_report(sqla_cache, SessionLocal):
        sqla_cache.attach(SessionLocal)
        ...

Each test gets a :class:`~sqla_redis_cache.QueryCache` on a random namespace of the Redis named
by ``--sqla-cache-redis-url``, else ``SQLA_CACHE_REDIS_URL``, else ``REDIS_URL``, else
``redis://localhost:6379/15``; its keys are deleted afterwards.  Shared statistics are off
(``stats_interval=0``) so tests leave nothing behind.  With ``--sqla-cache-memory`` (or when the
option says so, e.g. in CI without Redis) the cache is in-process instead.  When Redis does not
answer the fixture fails the test with a message saying how to point it elsewhere, rather than
silently testing an uncached application.

Applications that build their cache and ``attach()`` it once, at import (the usual shape:
``cache = QueryCache.from_env(); cache.attach(SessionLocal, default=cached())`` in a module),
cannot be handed a new cache per test.  For them, name that cache in the pytest configuration::

    [pytest]
    sqla_cache_app = myapp.cache:cache

Before any ``conftest.py`` (and so the application) is imported, the plugin then sets
``SQLA_CACHE_NAMESPACE`` to a namespace of this test session, ``pytest-<random>``, which
``QueryCache.from_env()`` reads; the variable is restored when the session ends.  The
``sqla_app_cache`` fixture gives each test that cache, cleared (every entry invalidated, its keys
deleted) and with its statistics zeroed before the test, and fails with an explanation when the
application's cache is not on the session's namespace (it then would clear another
namespace).  The session's keys are deleted at the end.  ``sqla_cache_namespace`` is the
namespace itself.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ._cache import QueryCache

DEFAULT_URL = "redis://localhost:6379/15"
NAMESPACE_ENV = "SQLA_CACHE_NAMESPACE"
_NAMESPACE = pytest.StashKey[str]()
_PREVIOUS = pytest.StashKey[str | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sqla-redis-cache")
    group.addoption(
        "--sqla-cache-redis-url",
        default=None,
        help="Redis for the sqla_cache fixture (default: $SQLA_CACHE_REDIS_URL, $REDIS_URL, "
        f"{DEFAULT_URL})",
    )
    group.addoption(
        "--sqla-cache-memory",
        action="store_true",
        default=False,
        help="sqla_cache uses the in-process backend instead of Redis",
    )
    group.addoption(
        "--sqla-cache-app",
        default=None,
        help="the application's QueryCache, 'module:attribute' (for sqla_app_cache)",
    )
    parser.addini(
        "sqla_cache_app",
        "the application's QueryCache, 'module:attribute' (for sqla_app_cache)",
        default="",
    )


def _app_spec(config: pytest.Config) -> str:
    # early (before the options are fully parsed) only the known arguments are there
    early = getattr(config.known_args_namespace, "sqla_cache_app", None)
    return str(
        early or config.getoption("--sqla-cache-app", None) or config.getini("sqla_cache_app")
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: Any, args: Any) -> None:
    """Give the session its namespace before conftest.py files import the application."""
    namespace = "pytest-" + uuid.uuid4().hex[:12]
    early_config.stash[_NAMESPACE] = namespace
    if _app_spec(early_config):
        early_config.stash[_PREVIOUS] = os.environ.get(NAMESPACE_ENV)
        os.environ[NAMESPACE_ENV] = namespace


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PREVIOUS in config.stash:
        previous = config.stash[_PREVIOUS]
        if previous is None:
            os.environ.pop(NAMESPACE_ENV, None)
        else:
            os.environ[NAMESPACE_ENV] = previous


def _redis_url(config: pytest.Config) -> str:
    return str(
        config.getoption("--sqla-cache-redis-url")
        or os.environ.get("SQLA_CACHE_REDIS_URL")
        or os.environ.get("REDIS_URL")
        or DEFAULT_URL
    )


@pytest.fixture
def sqla_cache(request: pytest.FixtureRequest) -> Iterator[QueryCache]:
    """A QueryCache on a throwaway namespace; cleared and closed after the test."""
    namespace = "pytest-" + uuid.uuid4().hex[:12]
    if request.config.getoption("--sqla-cache-memory"):
        cache = QueryCache.in_memory(namespace=namespace)
    else:
        url = _redis_url(request.config)
        cache = QueryCache.from_url(url, namespace=namespace, stats_interval=0)
        from ._operator import connection_error

        problem = connection_error(cache)
        if problem:
            cache.close()
            pytest.fail(
                f"sqla_cache: {problem} (set --sqla-cache-redis-url, SQLA_CACHE_REDIS_URL or "
                "REDIS_URL, or use --sqla-cache-memory)",
                pytrace=False,
            )
    try:
        yield cache
    finally:
        cache.clear()
        cache.close()


@pytest.fixture(scope="session")
def sqla_cache_namespace(request: pytest.FixtureRequest) -> str:
    """The namespace of this test session (``SQLA_CACHE_NAMESPACE`` with ``sqla_cache_app``)."""
    config = request.config
    if _NAMESPACE not in config.stash:  # the plugin was registered late (``-p``)
        config.stash[_NAMESPACE] = "pytest-" + uuid.uuid4().hex[:12]
    return config.stash[_NAMESPACE]


@pytest.fixture(scope="session")
def _sqla_app_cache_session(
    request: pytest.FixtureRequest, sqla_cache_namespace: str
) -> Iterator[QueryCache]:
    spec = _app_spec(request.config)
    if not spec:
        pytest.fail(
            "sqla_app_cache: name the application's QueryCache with `sqla_cache_app = "
            "module:attribute` in the pytest configuration (or --sqla-cache-app)",
            pytrace=False,
        )
    module_name, _, attribute = spec.partition(":")
    try:
        cache: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            cache = getattr(cache, part)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"sqla_app_cache: cannot load {spec}: {exc}", pytrace=False)
    if not isinstance(cache, QueryCache):
        pytest.fail(f"sqla_app_cache: {spec} is a {type(cache).__name__}", pytrace=False)
    if cache.config.namespace != sqla_cache_namespace:
        pytest.fail(
            f"sqla_app_cache: {spec} uses namespace {cache.config.namespace!r}, not the test "
            f"session's {sqla_cache_namespace!r}: build it with QueryCache.from_env() (which "
            f"reads {NAMESPACE_ENV}) or pass namespace=os.environ[{NAMESPACE_ENV!r}]",
            pytrace=False,
        )
    yield cache
    cache.clear()


@pytest.fixture
def sqla_app_cache(_sqla_app_cache_session: QueryCache) -> QueryCache:
    """The application's own QueryCache (``sqla_cache_app``), attached at import, on the test
    session's namespace: cleared and with zeroed statistics before each test."""
    cache = _sqla_app_cache_session
    if cache.clear() < 0:
        pytest.fail("sqla_app_cache: Redis is unavailable, the cache could not be cleared")
    cache.reset_stats()
    return cache
