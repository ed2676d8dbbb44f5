"""A pytest plugin for applications' own test suites: ``sqla_cache``, a cache on a fresh namespace.

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
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from ._cache import QueryCache

DEFAULT_URL = "redis://localhost:6379/15"


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
