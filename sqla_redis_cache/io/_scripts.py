"""The cache's two Lua scripts, and their in-process twins for :class:`~._memory.MemoryIO`.

Both touch one key, so they are safe on Redis Cluster.  They are sent with ``EVAL`` (the ACL
rules docs/deployment.md gives allow ``+@scripting``).  What they mean for the cache, and why
they exist, is told where they are used: version tokens in ``storage._versions`` (pending tokens
for Core commits in flight: ``wiring._commit``), compare-and-set in the entity write-through
(``wiring._write_through``).
"""

from __future__ import annotations

from ._ops import ReplaceToken

#: prefix of a *pending* token, set for the commits of Core connections, whose end cannot be
#: observed.  Entries are never stamped with one, so nothing is cached or served for those
#: tables while it stands.  Its value is ``pending:<token>`` followed by one
#: ``;<commit id>@<ms>`` per commit in flight, where ``ms`` says how long before the key expires
#: that commit's claim expires: the key's own TTL is the clock (no ``TIME`` command, which the
#: ACL rules docs/deployment.md gives do not allow, and no client clocks).
PENDING = b"pending:"

#: Single-key compare-and-set: ``EVAL CAS_SET 1 key expected new ttl_ms`` replaces the value
#: only if it still equals ``expected``.
CAS_SET = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end return 0"
)

#: Replace one version token (:class:`~._ops.ReplaceToken`).  ``ARGV``: the new random token,
#: the TTL (ms) of an ordinary token, how long (ms) an added commit keeps the token pending,
#: then ``+<commit id>`` (a commit about to happen: pending until it ends) and ``-<commit id>``
#: (that commit is over).  The token stays pending while any listed commit is alive (not ended,
#: claim not expired), with a fresh random part, and lives as long as the longest claim;
#: otherwise it becomes an ordinary token.  A plain replacement (no ids) of a pending token
#: therefore keeps it pending: only the end of the last commit in flight, or its expiry, makes
#: the table cacheable again.  ``=<token>`` and ``!<token>`` make it a compare-and-swap (entity
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


def replace_token_args(op: ReplaceToken) -> list[str | bytes | int]:
    """``KEYS`` and ``ARGV`` of :data:`REPLACE_TOKEN` for ``op``, after ``EVAL script``."""
    operands = [f"+{ident}" for ident in op.add] + [f"-{ident}" for ident in op.end]
    if op.expected is not None:
        assert op.otherwise is not None
        operands += [f"={op.expected.decode()}", f"!{op.otherwise.decode()}"]
    return [1, op.key, op.token, op.ttl_ms, op.commit_ms, *sorted(operands)]


def replace_token(op: ReplaceToken, current: bytes | None, pttl_ms: int) -> tuple[bytes, int]:
    """:data:`REPLACE_TOKEN` in Python: the new (value, TTL ms) of ``op.key``.

    ``current`` is the key's value and ``pttl_ms`` its remaining TTL (as ``PTTL`` reports it).
    """
    token = op.token
    if op.expected is not None and (current or b"") != op.expected:
        assert op.otherwise is not None
        token = op.otherwise
    left: dict[str, int] = {}

    def keep(ident: str, ms: int) -> None:
        if ms > 0 and ident not in op.end and ident not in left:
            left[ident] = ms

    for ident in sorted(op.add):
        keep(ident, op.commit_ms)
    if current is not None and current.startswith(PENDING):
        for part in current.split(b";")[1:]:
            ident, _, before = part.decode().partition("@")
            keep(ident, pttl_ms - int(before))
    if not left:
        return token, op.ttl_ms
    last = max(left.values())
    parts = "".join(f";{ident}@{last - ms}" for ident, ms in left.items())
    return PENDING + token + parts.encode(), last


def compare_and_set(current: bytes | None, expected: bytes) -> bool:
    """:data:`CAS_SET`'s condition in Python."""
    return current is not None and current == expected
