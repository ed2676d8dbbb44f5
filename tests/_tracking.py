"""Helpers for tests of the tracked near cache."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


@contextmanager
def commands_under(nodes: list[Any], namespace: str) -> Iterator[list[str]]:
    """The commands Redis executes on ``nodes`` inside the block that name a key of
    ``namespace`` (``MONITOR``, so other clients of a shared deployment do not count).

    The list is filled when the block ends: an ``ECHO`` marker sent to each node after the
    block is the last line read, so every command the block caused has been seen."""
    seen: list[str] = []
    monitors = [node.monitor() for node in nodes]
    for monitor in monitors:
        monitor.__enter__()
    try:
        yield seen
        marker = f"end-of-window-{uuid.uuid4().hex}"
        for node, monitor in zip(nodes, monitors, strict=True):
            node.echo(marker)
            while True:
                command = monitor.next_command()["command"]
                if marker in command:
                    break
                if f"{namespace}:" in command:
                    seen.append(command)
    finally:
        for monitor in monitors:
            monitor.__exit__(None, None, None)


def hits_send_nothing(
    cache: QueryCache, nodes: list[Any], read: Callable[[], object], times: int = 50
) -> None:
    """``times`` repeated hits are served from memory and send no command naming the cache's
    namespace.

    A window in which the tracking lease lapsed (the background thread starved on a loaded
    machine) takes the validated path by design; it is retried, up to three windows."""
    namespace = cache.config.namespace
    near = cache._storage.near
    assert near is not None, "tracking is off"
    for _ in range(3):
        wait_live(cache)
        hits = near.hits
        with commands_under(nodes, namespace) as seen:
            for _ in range(times):
                read()
        if near.hits - hits == times:
            assert seen == [], f"hits from memory sent {seen}"
            return
    raise AssertionError(f"the lease lapsed in three windows of {times} hits: {seen}")


async def ahits_send_nothing(
    cache: QueryCache, nodes: list[Any], read: Callable[[], Awaitable[object]], times: int = 20
) -> None:
    """:func:`hits_send_nothing` for an asyncio read."""
    near = cache._storage.near
    assert near is not None, "tracking is off"
    for _ in range(3):
        wait_live(cache)
        hits = near.hits
        with commands_under(nodes, cache.config.namespace) as seen:
            for _ in range(times):
                await read()
        if near.hits - hits == times:
            assert seen == [], f"hits from memory sent {seen}"
            return
    raise AssertionError(f"the lease lapsed in three windows of {times} hits: {seen}")
