"""Version tokens: the invalidation core.

Each table, each tag and the namespace as a whole has a *token* in Redis: a random 16-character
string.  An entry records the tokens of everything it depends on as they were read *before* its
value was built; it is valid only while all of them are unchanged.  Invalidating is replacing a
token with a new random one: one single-key script (``io._scripts.REPLACE_TOKEN``: a ``GET``
and a ``SET``) per table or tag, whatever the number of entries, and nothing to scan.  The script
only differs from a plain ``SET`` for tables a Core commit is in flight on (``wiring._commit``).

Random tokens (rather than counters) make every lost key safe: if Redis evicts or loses a token,
the next reader creates a fresh random one, which no existing entry carries, so the loss yields
misses, never a stale hit.  Recording tokens read before the database query closes the fill race:
a writer that commits while a reader is querying replaces a token the reader has already
recorded, so the reader's late write is born stale.

If replacing tokens fails (Redis unreachable or stalled at commit time) the replacements are kept
as *owed*: this process bypasses the cache for reads until they are delivered, so it never serves
what it failed to invalidate.  Other processes would serve the old entries meanwhile, so a
daemon thread retries owed replacements in the background until they are delivered or the cache
is closed: first after 5 ms, each wait 1.5 times the previous one (with jitter), capped at
``breaker_cooldown``.  Once Redis answers again, other processes therefore see the invalidation
within about half the outage's length (at most ``breaker_cooldown``, 2 s by default) plus a round
trip, whether or not this process touches the cache.  The retries go to Redis directly, not
through the circuit breaker (which only protects requests from waiting on a dead Redis); one
that succeeds closes it.  The namespace replacement owed after a lost connection
(``invalidate_after_outage``) rides along but does not start the retries by itself.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from redis.exceptions import RedisError

from ..io._ops import Get, Operation, ReplaceToken, Set, Unlink
from ..io._scripts import PENDING
from ._store import FAILED, Store

TOKEN_LENGTH = 16

#: background retries of owed replacements: the first wait, and the growth of each next one
RETRY_FIRST = 0.005
RETRY_GROWTH = 1.5


class Claims(NamedTuple):
    """Commit ids a replacement adds to a pending token, and ids it ends (``io._scripts``)."""

    add: frozenset[str]
    end: frozenset[str]

    def merge(self, other: Claims) -> Claims:
        if not other.add and not other.end:
            return self
        return Claims(self.add | other.add, self.end | other.end)


_NO_CLAIMS = Claims(frozenset(), frozenset())


def new_token() -> bytes:
    return os.urandom(TOKEN_LENGTH // 2).hex().encode()


class Versions:
    def __init__(
        self,
        store: Store,
        token_ttl: float,
        commit_ttl: float,
        retry_cap: float = 2.0,
        entry_bound: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        #: tokens created with the lifetime of the entry that needs them, not ``token_ttl``
        #: (the value tokens of fine-grained invalidation: one per value read)
        self._entry_bound = entry_bound
        self._retry_cap = retry_cap
        self._retrying = False
        self._stopped = threading.Event()
        self._ttl_ms = int(token_ttl * 1000)
        #: how long a Core commit in flight may keep tokens pending (``lock_timeout``)
        self._commit_ms = max(1, int(commit_ttl * 1000))
        #: replacements Redis has not confirmed: key -> (generation, commit ids to add/end)
        self._owed: dict[str, tuple[int, Claims]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    @staticmethod
    def stamps(values: Sequence[bytes | None]) -> bytes | None:
        """Concatenated tokens, or None if any is missing."""
        if None in values:
            return None
        return b"".join(values)  # type: ignore[arg-type]

    def ensure(
        self,
        keys: Sequence[str],
        values: Sequence[bytes | None],
        entry_ttl_ms: int | None = None,
    ) -> bytes | None:
        """Stamps for ``keys``, creating missing tokens first; None if Redis failed or a
        token is pending (a commit in flight: nothing may be stored under it).  Entry-bound
        tokens are created for ``entry_ttl_ms`` (the entry about to be stored): they never
        outlive the entries that need them, and one expiring early only costs a miss."""
        if any(v is not None and v.startswith(PENDING) for v in values):
            return None
        missing = [k for k, v in zip(keys, values, strict=True) if v is None]
        if not missing:
            return b"".join(values)  # type: ignore[arg-type]
        operations: list[Operation] = []
        bound = self._entry_bound
        for key in missing:
            ttl = self._ttl_ms
            if entry_ttl_ms is not None and bound is not None and bound(key):
                ttl = max(1, entry_ttl_ms)
            operations.append(Set(key, new_token(), ttl, only_if_absent=True))
            operations.append(Get(key))
        replies = self.store.run(operations)
        if replies is FAILED:
            return None
        created = dict(zip(missing, replies[1::2], strict=True))
        tokens = [v if v is not None else created[k] for k, v in zip(keys, values, strict=True)]
        if any(t is not None and t.startswith(PENDING) for t in tokens):
            return None
        return self.stamps(tokens)

    def invalidate(
        self,
        keys: Iterable[str],
        extra: Callable[[Mapping[str, bytes]], list[Operation]] | None = None,
        *,
        pending: str | None = None,
        committed: str | None = None,
        expected: Mapping[str, bytes] | None = None,
        counted: int | None = None,
        drop: Sequence[str] = (),
        fallback: Sequence[str] = (),
    ) -> bool:
        """Replace the tokens of ``keys`` in one round trip; owe them if Redis fails.

        ``expected`` (key -> token read earlier) makes those replacements compare-and-swaps:
        the token handed to ``extra`` becomes current only if the key still held that value.

        ``extra(new_tokens)`` may add operations to the same round trip (entity write-through).
        ``drop``: tokens deleted in the same round trip (value tokens: random tokens, so a
        deleted one is re-created with a value no entry carries); deletions are not retried:
        if Redis fails, the tokens ``fallback`` (coarser: the tables' unknown-rows tokens) are
        owed with the replacements instead.
        ``counted``: how many of them the statistics count as invalidations (table, tag and
        namespace tokens; not the bookkeeping of fine-grained invalidation), default all.
        ``pending``: the id of a Core commit about to happen; the tokens stay pending until
        ``invalidate(..., committed=id)`` or ``lock_timeout``.  A token pending for another
        commit stays pending (see ``io._scripts.REPLACE_TOKEN``).
        """
        claim = _NO_CLAIMS
        if pending is not None:
            claim = Claims(frozenset((pending,)), frozenset())
        elif committed is not None:
            claim = Claims(frozenset(), frozenset((committed,)))
        keys = set(keys)
        with self._lock:
            owed = dict(self._owed)
        work = {key: claims for key, (_, claims) in owed.items()}
        for key in keys:
            work[key] = work.get(key, _NO_CLAIMS).merge(claim)
        if not work:
            return True
        tokens = {key: new_token() for key in sorted(work)}
        swaps: dict[str, bytes] = {}
        if expected and pending is None:
            swaps = {key: value for key, value in expected.items() if key in work}
        operations = self._replacements(work, tokens, swaps)
        operations.extend(Unlink(key) for key in drop)
        if extra is not None:
            operations.extend(extra(tokens))
        started = time.perf_counter()
        replies = self.store.run(operations)
        ok = replies is not FAILED
        count = len(tokens) if counted is None else counted
        self.store.stats.invalidated(count, ok, time.perf_counter() - started)
        if ok:
            self._settled(owed)
        else:
            self._owe(keys, claim)
            self._owe(fallback)
            if keys or fallback:  # other processes serve the old entries until this is delivered
                self._start_retrying()
        return ok

    def _replacements(
        self,
        work: Mapping[str, Claims],
        tokens: Mapping[str, bytes],
        swaps: Mapping[str, bytes] | None = None,
    ) -> list[Operation]:
        ttl_ms, commit_ms = self._ttl_ms, self._commit_ms
        operations: list[Operation] = []
        for key, token in tokens.items():
            claims = work[key]
            expected = None if swaps is None else swaps.get(key)
            operations.append(
                ReplaceToken(
                    key,
                    token,
                    ttl_ms,
                    commit_ms,
                    claims.add,
                    claims.end,
                    expected,
                    None if expected is None else new_token(),
                )
            )
        return operations

    def _owe(self, keys: Iterable[str], claim: Claims = _NO_CLAIMS) -> None:
        with self._lock:
            for key in keys:
                self._generation += 1
                previous = self._owed.get(key)
                self._owed[key] = (
                    self._generation,
                    claim if previous is None else previous[1].merge(claim),
                )

    # background delivery ---------------------------------------------------------------------

    def _start_retrying(self) -> None:
        with self._lock:
            if self._retrying or self._stopped.is_set():
                return
            self._retrying = True
        threading.Thread(
            target=self._retry_loop, name="sqla-redis-cache-retry", daemon=True
        ).start()

    def _retry_loop(self) -> None:
        delay = RETRY_FIRST
        try:
            while self._owed and not self._stopped.wait(delay * (0.5 + random.random() / 2)):
                if self._deliver():
                    delay = RETRY_FIRST
                else:
                    delay = min(delay * RETRY_GROWTH, self._retry_cap)
        finally:
            with self._lock:
                self._retrying = False
        if self._owed and not self._stopped.is_set():  # owed again while this one was ending
            self._start_retrying()

    def _deliver(self) -> bool:
        """Send everything owed straight to Redis (not through the breaker); True if it went."""
        with self._lock:
            owed = dict(self._owed)
        if not owed:
            return True
        tokens = {key: new_token() for key in sorted(owed)}
        operations = self._replacements({key: claims for key, (_, claims) in owed.items()}, tokens)
        store = self.store
        started = time.perf_counter()
        try:
            store.io.run(operations)
        except (RedisError, OSError):
            store.stats.errors += 1
            return False
        finally:
            if store.near is not None:
                store.near.forget(tokens)
        store.stats.invalidated(len(tokens), True, time.perf_counter() - started)
        store.breaker.success()  # Redis answers: requests may use it again at once
        self._settled(owed)
        return True

    def close(self) -> None:
        """Stop retrying in the background, after one last attempt."""
        self._stopped.set()
        if self._owed:
            self.settle()

    def _settled(self, sent: Mapping[str, tuple[int, Claims]]) -> None:
        """Forget what was sent, unless it was owed again meanwhile (a newer generation)."""
        with self._lock:
            for key, (generation, _) in sent.items():
                current = self._owed.get(key)
                if current is not None and current[0] == generation:
                    del self._owed[key]

    def owe(self, keys: Iterable[str]) -> None:
        """Replace these tokens before this process serves anything again."""
        self._owe(keys)

    @property
    def owes(self) -> bool:
        """True while replacements Redis has not confirmed are owed (reads then bypass)."""
        return bool(self._owed)

    def settle(self) -> bool:
        """Deliver owed replacements now; True when none remain."""
        return not self._owed or self.invalidate(())
