"""Version tokens: the invalidation core.

Each table, each tag and the namespace as a whole has a *token* in Redis: a random 16-character
string.  An entry records the tokens of everything it depends on as they were read *before* its
value was built; it is valid only while all of them are unchanged.  Invalidating is replacing a
token with a new random one: one single-key script (:data:`REPLACE_TOKEN`: a ``GET`` and a
``SET``) per table or tag, whatever the number of entries, and nothing to scan.  The script only
differs from a plain ``SET`` for tables a Core commit is in flight on (``_core_commit``).

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
from typing import Any

from redis.exceptions import RedisError

from ._store import FAILED, Store

TOKEN_LENGTH = 16

#: background retries of owed replacements: the first wait, and the growth of each next one
RETRY_FIRST = 0.005
RETRY_GROWTH = 1.5


#: prefix of a *pending* token, set for the commits of Core connections, whose end cannot be
#: observed (``_core_commit``).  Entries are never stamped with one, so nothing is cached or
#: served for those tables while it stands.  Its value is ``pending:<token>`` followed by one
#: ``;<commit id>@<ms>`` per commit in flight, where ``ms`` says how long before the key expires
#: that commit's claim expires: the key's own TTL is the clock (no ``TIME`` command, which the
#: ACL rules docs/deployment.md gives do not allow, and no client clocks).
PENDING = b"pending:"

#: Replace one version token (one key, so Cluster-safe).  ``ARGV``: the new random token, the
#: TTL (ms) of an ordinary token, how long (ms) an added commit keeps the token pending, then
#: ``+<commit id>`` (a commit about to happen: pending until it ends) and ``-<commit id>`` (that
#: commit is over).  The token stays pending while any listed commit is alive (not ended, claim
#: not expired), with a fresh random part, and lives as long as the longest claim; otherwise it
#: becomes an ordinary token.  A plain replacement (no ids) of a pending token therefore keeps
#: it pending: only the end of the last commit in flight, or its expiry, makes the table
#: cacheable again.  ``=<token>`` and ``!<token>`` make it a compare-and-swap (entity
#: write-through): the new token is ``ARGV[1]`` only if the current one still equals the ``=``
#: value (a missing token reads as empty), else the ``!`` one, so an entry stamped with
#: ``ARGV[1]`` is valid only if nobody replaced the token since the caller read it.
REPLACE_TOKEN = """
local cur = redis.call('GET', KEYS[1])
local pending = cur and string.sub(cur, 1, 8) == 'pending:'
if not pending and #ARGV == 3 then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local token, ended, adds = ARGV[1], {}, {}
local expected, otherwise = nil, nil
for i = 4, #ARGV do
  local kind, id = string.sub(ARGV[i], 1, 1), string.sub(ARGV[i], 2)
  if kind == '-' then ended[id] = true
  elseif kind == '+' then adds[#adds + 1] = id
  elseif kind == '=' then expected = id
  elseif kind == '!' then otherwise = id end
end
if expected ~= nil and (cur or '') ~= expected then token = otherwise end
local left, order = {}, {}
local function keep(id, ms)
  if ms > 0 and not ended[id] and left[id] == nil then
    left[id] = ms
    order[#order + 1] = id
  end
end
for _, id in ipairs(adds) do keep(id, tonumber(ARGV[3])) end
if pending then
  local ttl = redis.call('PTTL', KEYS[1])
  for id, before in string.gmatch(cur, ';([^;@]+)@(%d+)') do keep(id, ttl - tonumber(before)) end
end
if #order == 0 then
  return redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
end
local last, parts = 0, {}
for _, id in ipairs(order) do if left[id] > last then last = left[id] end end
for _, id in ipairs(order) do
  parts[#parts + 1] = ';' .. id .. '@' .. string.format('%d', last - left[id])
end
return redis.call('SET', KEYS[1], 'pending:' .. token .. table.concat(parts), 'PX', last)
"""


def replace_token(
    current: bytes | None, pttl_ms: int, token: bytes, ttl_ms: int, commit_ms: int, ops: list[str]
) -> tuple[bytes, int]:
    """:data:`REPLACE_TOKEN` in Python: (value, TTL ms), for the in-process store.

    ``pttl_ms`` is the current key's remaining TTL (as ``PTTL`` reports it).
    """
    ended = {op[1:] for op in ops if op.startswith("-")}
    expected = next((op[1:] for op in ops if op.startswith("=")), None)
    if expected is not None and (current or b"").decode() != expected:
        token = next(op[1:] for op in ops if op.startswith("!")).encode()
    left: dict[str, int] = {}

    def keep(ident: str, ms: int) -> None:
        if ms > 0 and ident not in ended and ident not in left:
            left[ident] = ms

    for op in ops:
        if op.startswith("+"):
            keep(op[1:], commit_ms)
    if current is not None and current.startswith(PENDING):
        for part in current.split(b";")[1:]:
            ident, _, before = part.decode().partition("@")
            keep(ident, pttl_ms - int(before))
    if not left:
        return token, ttl_ms
    last = max(left.values())
    parts = "".join(f";{ident}@{last - ms}" for ident, ms in left.items())
    return PENDING + token + parts.encode(), last


def new_token() -> bytes:
    return os.urandom(TOKEN_LENGTH // 2).hex().encode()


class Versions:
    def __init__(
        self, store: Store, token_ttl: float, commit_ttl: float, retry_cap: float = 2.0
    ) -> None:
        self.store = store
        self._retry_cap = retry_cap
        self._retrying = False
        self._stopped = threading.Event()
        self._ttl_ms = int(token_ttl * 1000)
        #: how long a Core commit in flight may keep tokens pending (``lock_timeout``)
        self._commit_ms = max(1, int(commit_ttl * 1000))
        #: replacements Redis has not confirmed: key -> (generation, commit ids to add/end)
        self._owed: dict[str, tuple[int, frozenset[str]]] = {}
        self._generation = 0
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
        pending: str | None = None,
        committed: str | None = None,
        expected: Mapping[str, bytes] | None = None,
    ) -> bool:
        """Replace the tokens of ``keys``; remember them as owed if Redis fails.

        ``expected`` (key -> token read earlier) makes those replacements compare-and-swaps:
        the token handed to ``extra`` becomes current only if the key still held that value.

        ``extra(new_tokens)`` may append commands to the same pipeline (entity write-through).
        ``pending``: the id of a Core commit about to happen; the tokens stay pending until
        ``bump(..., committed=id)`` or ``lock_timeout``.  A token pending for another commit
        stays pending (see :data:`REPLACE_TOKEN`).
        """
        op: frozenset[str] = frozenset()
        if pending is not None:
            op = frozenset({"+" + pending})
        elif committed is not None:
            op = frozenset({"-" + committed})
        keys = set(keys)
        with self._lock:
            owed = dict(self._owed)
        work = {key: ops for key, (_, ops) in owed.items()}
        for key in keys:
            work[key] = work.get(key, frozenset()) | op
        if not work:
            return True
        tokens = {key: new_token() for key in sorted(work)}
        if expected and pending is None:
            for key, value in expected.items():
                if key in work:
                    swap = {"=" + value.decode(), "!" + new_token().decode()}
                    work[key] = work[key] | swap
        commands = self._commands(work, tokens)
        if extra is not None:
            commands.extend(extra(tokens))
        started = time.perf_counter()
        replies = self.store.pipeline(commands)
        ok = replies is not FAILED
        self.store.stats.invalidated(len(tokens), ok, time.perf_counter() - started)
        if ok:
            self._settled(owed)
        else:
            self._owe(keys, op)
            if keys:  # other processes serve the old entries until this is delivered
                self._start_retrying()
        return ok

    def _commands(
        self, work: Mapping[str, frozenset[str]], tokens: Mapping[str, bytes]
    ) -> list[tuple[Any, ...]]:
        ttl_ms, commit_ms = self._ttl_ms, self._commit_ms
        return [
            ("EVAL", REPLACE_TOKEN, 1, key, token, ttl_ms, commit_ms, *sorted(work[key]))
            for key, token in tokens.items()
        ]

    def _owe(self, keys: Iterable[str], op: frozenset[str] = frozenset()) -> None:
        with self._lock:
            for key in keys:
                self._generation += 1
                previous = self._owed.get(key)
                self._owed[key] = (
                    self._generation,
                    op if previous is None else previous[1] | op,
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
        commands = self._commands({key: ops for key, (_, ops) in owed.items()}, tokens)
        store = self.store
        started = time.perf_counter()
        try:
            store.io.pipeline(commands)
        except (RedisError, OSError):
            store.stats.errors += 1
            return False
        store.stats.invalidated(len(tokens), True, time.perf_counter() - started)
        store.breaker.success()  # Redis answers: requests may use it again at once
        self._settled(owed)
        return True

    def close(self) -> None:
        """Stop retrying in the background, after one last attempt."""
        self._stopped.set()
        if self._owed:
            self.settle()

    def _settled(self, sent: Mapping[str, tuple[int, frozenset[str]]]) -> None:
        """Forget what was sent, unless it was owed again meanwhile (a newer generation)."""
        with self._lock:
            for key, (generation, _) in sent.items():
                current = self._owed.get(key)
                if current is not None and current[0] == generation:
                    del self._owed[key]

    def mark_pending(self, keys: Iterable[str]) -> None:
        """Replace these tokens before this process serves anything again."""
        self._owe(keys)

    @property
    def has_pending(self) -> bool:
        return bool(self._owed)

    def settle(self) -> bool:
        """Retry owed replacements; True when none remain."""
        return not self._owed or self.bump(())
