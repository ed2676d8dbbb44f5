"""Version tokens: the invalidation core.

Each table, each tag and the namespace as a whole has a *token* in Redis: a random 16-character
string.  An entry records the tokens of everything it depends on as they were read *before* its
value was built; it is valid only while all of them are unchanged.  Invalidating is replacing a
token with a new random one: one ``SET`` per table or tag, whatever the number of entries, and
nothing to scan.

Random tokens (rather than counters) make every lost key safe: if Redis evicts or loses a token,
the next reader creates a fresh random one, which no existing entry carries, so the loss yields
misses, never a stale hit.  Recording tokens read before the database query closes the fill race:
a writer that commits while a reader is querying replaces a token the reader has already
recorded, so the reader's late write is born stale.

If replacing tokens fails (Redis unreachable at commit time) the keys are kept as *pending*; this
process bypasses the cache for reads until a retry succeeds, so it never serves what it failed to
invalidate.  Other processes are bounded by the entry TTL in that case (see docs/reliability.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ._store import FAILED, Store

TOKEN_LENGTH = 16


#: prefix of a *pending* token: set just before a commit whose end cannot be observed (a Core
#: connection); entries are never stamped with one, so nothing is cached or served for those
#: tables until it is replaced after the commit or expires
PENDING = b"pending:"


#: Replace a token, telling whether it was still the one read earlier: ``EVAL SWAP_TOKEN 1 key
#: expected if_unchanged otherwise ttl_ms`` sets ``if_unchanged`` when the token still equals
#: ``expected`` (a missing token reads as empty), else ``otherwise``.  Either way the token is
#: replaced; an entry stamped with ``if_unchanged`` is valid only if nobody replaced the token
#: between that earlier read and this swap.  One key, so Cluster-safe.
SWAP_TOKEN = (
    "local v = ARGV[2] "
    "if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then v = ARGV[3] end "
    "redis.call('SET', KEYS[1], v, 'PX', ARGV[4]) "
    "return v == ARGV[2] and 1 or 0"
)


def new_token() -> bytes:
    return os.urandom(TOKEN_LENGTH // 2).hex().encode()


class Versions:
    def __init__(self, store: Store, token_ttl: float) -> None:
        self.store = store
        self._ttl_ms = int(token_ttl * 1000)
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def stamps(values: Sequence[bytes | None]) -> bytes | None:
        """Concatenated tokens, or None if any is missing."""
        if None in values:
            return None
        return b"".join(values)  # type: ignore[arg-type]

    def ensure(self, keys: Sequence[str], values: Sequence[bytes | None]) -> bytes | None:
        """Stamps for ``keys``, creating missing tokens first; None if Redis failed or a
        token is pending (a commit in flight: nothing may be stored under it)."""
        if any(v is not None and v.startswith(PENDING) for v in values):
            return None
        missing = [k for k, v in zip(keys, values, strict=True) if v is None]
        if not missing:
            return b"".join(values)  # type: ignore[arg-type]
        commands: list[tuple[object, ...]] = []
        for key in missing:
            commands.append(("SET", key, new_token(), "NX", "PX", self._ttl_ms))
            commands.append(("GET", key))
        replies = self.store.pipeline(commands)
        if replies is FAILED:
            return None
        created = dict(zip(missing, replies[1::2], strict=True))
        tokens = [v if v is not None else created[k] for k, v in zip(keys, values, strict=True)]
        if any(t is not None and t.startswith(PENDING) for t in tokens):
            return None
        return self.stamps(tokens)

    def bump(
        self,
        keys: Iterable[str],
        extra: Callable[[Mapping[str, bytes]], list[tuple[Any, ...]]] | None = None,
        *,
        pending_ms: int | None = None,
        expected: Mapping[str, bytes] | None = None,
    ) -> bool:
        """Replace the tokens of ``keys``; remember them as pending if Redis fails.

        ``extra(new_tokens)`` may append commands to the same pipeline (entity write-through).
        ``pending_ms`` sets *pending* tokens that expire after that many milliseconds instead.
        ``expected`` (key -> token read earlier) swaps those keys with ``SWAP_TOKEN``: the
        token handed to ``extra`` becomes current only if the key still held that value.
        """
        keys = set(keys)
        with self._lock:
            keys |= self._pending
            self._pending = set()
        if not keys:
            return True
        prefix = b"" if pending_ms is None else PENDING
        ttl_ms = self._ttl_ms if pending_ms is None else pending_ms
        tokens = {key: prefix + new_token() for key in sorted(keys)}
        expected = expected if expected and pending_ms is None else {}
        commands: list[tuple[Any, ...]] = [
            ("EVAL", SWAP_TOKEN, 1, key, expected[key], token, new_token(), ttl_ms)
            if key in expected
            else ("SET", key, token, "PX", ttl_ms)
            for key, token in tokens.items()
        ]
        if extra is not None:
            commands.extend(extra(tokens))
        started = time.perf_counter()
        replies = self.store.pipeline(commands)
        ok = replies is not FAILED
        self.store.stats.invalidated(len(tokens), ok, time.perf_counter() - started)
        if not ok:
            with self._lock:
                self._pending |= keys
        return ok

    def mark_pending(self, keys: Iterable[str]) -> None:
        """Replace these tokens before this process serves anything again."""
        with self._lock:
            self._pending |= set(keys)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def settle(self) -> bool:
        """Retry pending invalidations; True when none remain."""
        return not self._pending or self.bump(())
