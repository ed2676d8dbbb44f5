"""Measure whether the event loop keeps running while Redis is busy (a server-side Lua loop)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis

T = TypeVar("T")

BUSY_SCRIPT = """
local t0 = redis.call('TIME')
local start = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
while true do
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) - start > tonumber(ARGV[1]) then break end
end
return 1
"""


def _busy(url: str, micros: int) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.eval(BUSY_SCRIPT, 0, micros)
    finally:
        client.close()


async def while_redis_is_busy(
    url: str, action: Callable[[], Awaitable[T]], seconds: float = 0.6
) -> tuple[T, float, list[float]]:
    """Run ``action`` while Redis at ``url`` is busy for ``seconds``.

    Returns its result, how long it took, and the gaps between the ticks of a coroutine that
    tried to run every 2 ms meanwhile.
    """
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    thread = threading.Thread(target=_busy, args=(url, int(seconds * 1_000_000)))
    thread.start()
    await asyncio.sleep(0.05)  # the script is running: Redis answers nobody now
    started = time.perf_counter()
    result = await action()
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await asyncio.to_thread(thread.join)
    during = [t for t in ticks if started <= t <= started + elapsed]
    return result, elapsed, [b - a for a, b in itertools.pairwise(during)]
