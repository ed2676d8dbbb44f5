"""The ``sqla_cache`` fixture that the package's pytest plugin gives users' own suites."""

from __future__ import annotations

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
