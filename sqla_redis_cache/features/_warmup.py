"""Warm-up callables: what ``sqla-redis-cache warm`` and the status API's ``warm-up`` run.

An application registers the functions that fill its hottest entries (typically a few cached
queries) with ``QueryCache.register_warmup``.  Running them never raises: each outcome is
reported on its own, so one failing callable does not hide the others.  Coroutine functions are
run to completion (from synchronous code with ``asyncio.run``).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any


class WarmupRegistry:
    def __init__(self) -> None:
        self._callables: dict[str, Callable[[], Any]] = {}
        self._lock = threading.Lock()

    def register(self, fn: Callable[[], Any], name: str | None = None) -> Callable[[], Any]:
        if not callable(fn):
            raise TypeError(f"warm-up callables must be callable, got {fn!r}")
        label = name or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        with self._lock:
            self._callables[label] = fn
        return fn

    @property
    def names(self) -> list[str]:
        return list(self._callables)

    def run(self) -> dict[str, dict[str, Any]]:
        """``{name: {"ok": bool, "result" | "error": ...}}`` for each registered callable."""
        with self._lock:
            items = list(self._callables.items())
        report: dict[str, dict[str, Any]] = {}
        for name, fn in items:
            try:
                result = fn()
                if inspect.isawaitable(result):
                    result = _run_awaitable(result)
            except Exception as exc:
                report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            else:
                ok: dict[str, Any] = {"ok": True}
                if isinstance(result, int | float | str | bool) or result is None:
                    ok["result"] = result
                report[name] = ok
        return report


def _run_awaitable(awaitable: Any) -> Any:
    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    # called from inside a running loop (e.g. an ASGI handler): use a private loop in a thread
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(_capture(wait)))
    thread.start()
    thread.join()
    outcome, value = box[0]
    if not outcome:
        raise value
    return value


def _capture(make: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, asyncio.run(make())
    except Exception as exc:
        return False, exc
