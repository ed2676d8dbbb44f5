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


#: prefix of a *pending* token, set for the commits of Core connections, whose end cannot be
#: observed (``_core_commit``).  Entries are never stamped with one, so nothing is cached or
#: served for those tables while it stands.  Its value is ``pending:<token>`` followed by one
#: ``;<commit id>@<deadline, ms>`` per commit in flight.
PENDING = b"pending:"

#: Replace one version token (one key, so Cluster-safe).  ``ARGV``: the new random token, the
#: TTL (ms) of an ordinary token, how long (ms) an added commit keeps the token pending, then
#: ``+<commit id>`` (a commit about to happen: pending until it ends) and ``-<commit id>`` (that
#: commit is over).  The token stays pending while any listed commit is alive (not ended, deadline
#: not passed), with a fresh random part; otherwise it becomes an ordinary token.  A plain
#: replacement (no ids) of a pending token therefore keeps it pending: only the end of the last
#: commit in flight, or its deadline, makes the table cacheable again.
REPLACE_TOKEN = """
local cur = redis.call('GET', KEYS[1])
local pending = cur and string.sub(cur, 1, 8) == 'pending:'
if not pending and #ARGV == 3 then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ended, adds = {}, {}
for i = 4, #ARGV do
  local id = string.sub(ARGV[i], 2)
  if string.sub(ARGV[i], 1, 1) == '-' then ended[id] = true else adds[#adds + 1] = id end
end
local seen, parts, last = {}, {}, 0
local function keep(id, deadline)
  if deadline > now and not ended[id] and not seen[id] then
    seen[id] = true
    parts[#parts + 1] = ';' .. id .. '@' .. string.format('%d', deadline)
    if deadline > last then last = deadline end
  end
end
for _, id in ipairs(adds) do keep(id, now + tonumber(ARGV[3])) end
if pending then
  for id, deadline in string.gmatch(cur, ';([^;@]+)@(%d+)') do keep(id, tonumber(deadline)) end
end
if #parts == 0 then
  return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return redis.call('SET', KEYS[1], 'pending:' .. ARGV[1] .. table.concat(parts), 'PX', last - now)
"""


def replace_token(
    current: bytes | None, token: bytes, ttl_ms: int, commit_ms: int, ops: list[str], now_ms: int
) -> tuple[bytes, int]:
    """:data:`REPLACE_TOKEN` in Python (value, TTL ms), for the in-process store."""
    ended = {op[1:] for op in ops if op.startswith("-")}
    alive: dict[str, int] = {}
    for op in ops:
        if op.startswith("+") and op[1:] not in ended:
            alive.setdefault(op[1:], now_ms + commit_ms)
    if current is not None and current.startswith(PENDING):
        for part in current.split(b";")[1:]:
            ident, _, deadline = part.decode().partition("@")
            if int(deadline) > now_ms and ident not in ended:
                alive.setdefault(ident, int(deadline))
    if not alive:
        return token, ttl_ms
    parts = "".join(f";{ident}@{deadline}" for ident, deadline in alive.items())
    return PENDING + token + parts.encode(), max(alive.values()) - now_ms


def new_token() -> bytes:
    return os.urandom(TOKEN_LENGTH // 2).hex().encode()


class Versions:
    def __init__(self, store: Store, token_ttl: float, commit_ttl: float) -> None:
        self.store = store
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
    ) -> bool:
        """Replace the tokens of ``keys``; remember them as owed if Redis fails.

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
        ttl_ms, commit_ms = self._ttl_ms, self._commit_ms
        commands: list[tuple[Any, ...]] = [
            ("EVAL", REPLACE_TOKEN, 1, key, token, ttl_ms, commit_ms, *sorted(work[key]))
            for key, token in tokens.items()
        ]
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
        return ok

    def _owe(self, keys: Iterable[str], op: frozenset[str] = frozenset()) -> None:
        with self._lock:
            for key in keys:
                self._generation += 1
                previous = self._owed.get(key)
                self._owed[key] = (
                    self._generation,
                    op if previous is None else previous[1] | op,
                )

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
