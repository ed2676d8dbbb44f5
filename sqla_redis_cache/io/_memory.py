"""An in-process stand-in for Redis, for the demo and single-process use without a server.

:class:`MemoryIO` implements every typed operation (``_ops``) over dogpile.cache's memory
backend, keeping expiry times itself; the two scripts run as their Python twins
(``_scripts``).  It is correct for one process only: other processes cannot see its entries or
invalidations, so ``QueryCache`` uses it only when asked to (``QueryCache.in_memory()``), never
silently, and keeps its statistics local.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE
from dogpile.cache.backends.memory import MemoryBackend

from ._ops import (
    CompareAndSet,
    Expire,
    Get,
    HashGetAll,
    HashIncrement,
    MemoryUsage,
    Operation,
    ReplaceToken,
    Set,
    Unlink,
)
from ._protocol import Mutex
from ._scripts import compare_and_set, replace_token


def redis_glob(pattern: str) -> re.Pattern[str]:
    """Redis's glob syntax (``* ? [...]`` and backslash escapes) as a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                body = re.escape(body[1:] if negate else body).replace("\\-", "-")
                out.append(f"[{'^' if negate else ''}{body}]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class _ThreadMutex:
    __slots__ = ("__weakref__", "_lock", "_wait")

    def __init__(self, lock: threading.Lock, wait: float) -> None:
        self._lock = lock
        self._wait = wait

    def acquire(self, wait: bool = True) -> bool:
        return self._lock.acquire(blocking=wait, timeout=self._wait if wait else -1) or wait

    def release(self) -> None:
        if self._lock.locked():
            self._lock.release()


class MemoryIO:
    """:class:`~._protocol.RedisIO` kept in this process."""

    def __init__(self) -> None:
        self._backend: Any = MemoryBackend({})  # type: ignore[no-untyped-call]
        self._keys: set[str] = set()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # one key, with its expiry ------------------------------------------------------------

    def _item(self, key: str) -> tuple[float | None, Any] | None:
        item = self._backend.get(key)
        if item is NO_VALUE:
            return None
        expires = item[0]
        if expires is not None and expires <= time.monotonic():
            self._delete(key)
            return None
        return item  # type: ignore[no-any-return]

    def _get(self, key: str) -> Any:
        item = self._item(key)
        return None if item is None else item[1]

    def _pttl(self, key: str) -> int:
        """Like Redis's PTTL: ms left, -1 without expiry, -2 when missing."""
        item = self._item(key)
        if item is None:
            return -2
        return -1 if item[0] is None else int((item[0] - time.monotonic()) * 1000)

    def _put(self, key: str, value: Any, ttl_ms: int | None) -> None:
        expires = None if ttl_ms is None else time.monotonic() + ttl_ms / 1000
        self._backend.set(key, (expires, value))
        self._keys.add(key)

    def _delete(self, key: str) -> None:
        self._backend.delete(key)
        self._keys.discard(key)

    # operations --------------------------------------------------------------------------

    def _apply(self, op: Operation) -> Any:
        match op:
            case Get(key):
                return self._bytes(key)
            case Set(key, value, ttl_ms, only_if_absent):
                if only_if_absent and self._item(key) is not None:
                    return False
                self._put(key, value, ttl_ms)
                return True
            case Unlink(key):
                found = self._item(key) is not None
                self._delete(key)
                return found
            case ReplaceToken(key):
                value, ttl_ms = replace_token(op, self._bytes(key), self._pttl(key))
                self._put(key, value, ttl_ms)
                return None
            case CompareAndSet(key, expected, value, ttl_ms):
                if not compare_and_set(self._bytes(key), expected):
                    return False
                self._put(key, value, ttl_ms)
                return True
            case HashIncrement(key, field, amount):
                item = self._item(key)
                fields = dict(item[1]) if item is not None and isinstance(item[1], dict) else {}
                fields[field] = fields.get(field, 0) + amount
                self._backend.set(key, (None if item is None else item[0], fields))
                self._keys.add(key)
                return fields[field]
            case Expire(key, ttl_ms):
                item = self._item(key)
                if item is None:
                    return False
                self._put(key, item[1], ttl_ms)
                return True
            case HashGetAll(key):
                found = self._get(key)
                if not isinstance(found, dict):
                    return {}
                return {k.encode(): str(v).encode() for k, v in found.items()}
            case MemoryUsage(key):
                found = self._get(key)
                return None if found is None else len(found)
            case _:
                raise TypeError(f"not a Redis operation: {op!r}")

    def _bytes(self, key: str) -> bytes | None:
        value = self._get(key)
        return value if isinstance(value, bytes) or value is None else None

    # RedisIO -----------------------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._guard:
            return [self._bytes(k) for k in keys]

    def run(self, operations: Sequence[Operation]) -> list[Any]:
        with self._guard:
            return [self._apply(op) for op in operations]

    def scan(self, match: str) -> Iterator[str]:
        pattern = redis_glob(match)
        with self._guard:
            keys = [k for k in list(self._keys) if self._item(k) is not None]
        return iter([k for k in keys if pattern.fullmatch(k)])

    def delete_matching(self, match: str) -> int:
        return sum(self.run([Unlink(k) for k in self.scan(match)]))

    def lock(self, name: str, timeout: float, wait: float) -> Mutex:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        return _ThreadMutex(lock, wait)

    def server_info(self) -> dict[str, Any]:
        return {"version": None, "role": "in-process", "mode": "memory"}

    def close(self) -> None:
        pass
