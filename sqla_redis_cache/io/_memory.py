"""An in-process stand-in for Redis, for the demo and single-process use without a server.

It implements :class:`~._store.RedisIO` over dogpile.cache's memory backend, interpreting the
few commands the cache sends (GET/MGET, SET with NX/PX, UNLINK, its two scripts) and keeping
expiry times itself.
It is correct for one process only: other processes cannot see its entries or invalidations, so
``QueryCache`` uses it only when asked to (``QueryCache.in_memory()``), never silently.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE
from dogpile.cache.backends.memory import MemoryBackend

from ..storage._store import CAS_SET, Mutex
from ..storage._versions import REPLACE_TOKEN, replace_token


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


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
    """:class:`~._store.RedisIO` kept in this process."""

    def __init__(self) -> None:
        self._backend: Any = MemoryBackend({})  # type: ignore[no-untyped-call]
        self._keys: set[str] = set()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _get(self, key: str) -> bytes | None:
        item = self._backend.get(key)
        if item is NO_VALUE:
            return None
        expires, value = item
        if expires is not None and expires <= time.monotonic():
            self._backend.delete(key)
            self._keys.discard(key)
            return None
        return value  # type: ignore[no-any-return]

    def _pttl(self, key: str) -> int:
        """Like Redis's PTTL: ms left, -1 without expiry, -2 when missing."""
        if self._get(key) is None:
            return -2
        expires = self._backend.get(key)[0]
        return -1 if expires is None else int((expires - time.monotonic()) * 1000)

    def _set(self, key: str, args: Sequence[Any]) -> Any:
        value, *flags = args
        options = [str(f).upper() if isinstance(f, str) else f for f in flags]
        expires = None
        if "PX" in options:
            expires = time.monotonic() + int(options[options.index("PX") + 1]) / 1000
        if "NX" in options and self._get(key) is not None:
            return None
        self._backend.set(
            key, (expires, value if isinstance(value, bytes) else str(value).encode())
        )
        self._keys.add(key)
        return True

    def _run(self, command: Sequence[Any]) -> Any:
        name, *args = command
        name = str(name).upper()
        if name == "GET":
            return self._get(args[0])
        if name == "MGET":
            return [self._get(k) for k in args]
        if name == "SET":
            return self._set(args[0], args[1:])
        if name in {"UNLINK", "DEL"}:
            found = sum(1 for k in args if self._get(k) is not None)
            for k in args:
                self._backend.delete(k)
                self._keys.discard(k)
            return found
        if name == "EVAL" and args[0] == CAS_SET:
            _, _, key, expected, new, ttl = args
            current = self._get(key)
            if current is None or current != _as_bytes(expected):
                return 0
            return self._set(key, [new, "PX", ttl])
        if name == "EVAL" and args[0] == REPLACE_TOKEN:
            _, _, key, token, ttl_ms, commit_ms, *ops = args
            value, px = replace_token(
                self._get(key),
                self._pttl(key),
                _as_bytes(token),
                int(ttl_ms),
                int(commit_ms),
                [o.decode() if isinstance(o, bytes) else str(o) for o in ops],
            )
            return self._set(key, [value, "PX", px])
        raise NotImplementedError(f"MemoryIO does not implement {name}")

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._guard:
            return [self._get(k) for k in keys]

    def pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        with self._guard:
            return [self._run(c) for c in commands]

    def _matching(self, match: str) -> list[str]:
        pattern = redis_glob(match)
        return [k for k in list(self._keys) if pattern.fullmatch(k)]

    def scan_delete(self, match: str) -> int:
        return sum(self.pipeline([("UNLINK", k) for k in self._matching(match)]))

    def count(self, match: str) -> int:
        return len(self._matching(match))

    def lock(self, name: str, timeout: float, wait: float) -> Mutex:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        return _ThreadMutex(lock, wait)

    def close(self) -> None:
        pass
