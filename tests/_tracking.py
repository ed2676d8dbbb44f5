"""Helpers for tests of the tracked near cache."""

from __future__ import annotations

import time

from sqla_redis_cache import QueryCache


def wait_live(cache: QueryCache, timeout: float = 10.0) -> None:
    """Wait until ``cache``'s tracking connections are up and their lease holds."""
    near = cache._storage.near
    assert near is not None, "tracking is off"
    near.start()
    deadline = time.monotonic() + timeout
    while not near.live:
        assert time.monotonic() < deadline, "the tracking connection never came up"
        time.sleep(0.01)
