"""The tracked near cache: Redis values (version tokens, entries) kept in process memory and
dropped the moment Redis says they changed, so a repeated hit sends nothing to Redis.

Redis pushes an invalidation for every change under the namespace to our tracking connections
(``io._tracking``).  A lookup served from memory is only ever served like this:

1. the **lease** holds: every tracking connection is up and answered a heartbeat sent less than
   ``near_cache_lease`` seconds ago (a silent network partition ends the lease; so does a node
   that stopped being a master);
2. under the lock, every byte already waiting on the tracking sockets is read and applied
   (``drain``: one non-blocking ``recv`` per master);
3. every key the lookup needs is in memory.

Otherwise the reader takes today's validated path (``MGET`` of the entry and its tokens).

Filling memory from such a read races with invalidations: a value read from Redis may have
been changed right after Redis answered, and its invalidation drained before we store the old
value.  So a read takes a :meth:`NearValues.ticket` first; while any ticket is out, every
invalidated key is noted; :meth:`NearValues.remember` drains, then stores nothing if one of its
keys was invalidated since its ticket, or if the connections were reset or flushed meanwhile
(the *epoch*).  An invalidation that arrives after ``remember`` simply drops the key.

Whenever trust is lost (a connection error or close, a missed heartbeat, a ``FLUSHALL``, a
failover or a new cluster primary, too many bytes waiting at once: a backlog Redis may not have
finished sending) memory is emptied and the epoch moves on; a background thread reconnects and
keeps the heartbeats going, and memory fills again only from reads that began after the new
connections were tracking.  The remaining window is stated in docs/concepts.md.

Memory is bounded by ``near_cache_keys`` and ``near_cache_bytes`` (least recently used first).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._config import CacheConfig
from ..io._tracking import Endpoint, TrackingLink, TrackingLost

log = logging.getLogger("sqla_redis_cache")

#: bytes waiting at once on a tracking socket above which we assume Redis still holds more
#: (our socket buffer was full): memory is emptied and the lease waits for a new heartbeat
BACKLOG_BYTES = 1024 * 1024
#: per-key bookkeeping counted with each value's size
_KEY_OVERHEAD = 100
#: keys noted as invalidated while reads are in flight, at most (then memory is emptied)
MAX_NOTED = 100_000

#: every NearValues of this process, told when it forks (registered with the first one)
_after_fork: weakref.WeakSet[NearValues] = weakref.WeakSet()


def _forked() -> None:
    for near in list(_after_fork):
        near.forked()


_fork_hook: list[bool] = []


def _watch_forks(near: NearValues) -> None:
    if not _fork_hook:
        _fork_hook.append(True)
        os.register_at_fork(after_in_child=_forked)
    _after_fork.add(near)


Ticket = tuple[int, int]


class _Backoff:
    """Reconnection delays of the background thread (doubling up to ``cap``)."""

    first = 0.05

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.delay = self.first
        self.connected_at: float | None = None

    def wait(self, stopped: threading.Event) -> None:
        stopped.wait(self.delay)
        self.delay = min(self.delay * 2, self.cap)


def _background(ref: weakref.ref[NearValues], backoff: _Backoff) -> None:
    """The tracking thread.  It holds its NearValues only during a turn: a cache dropped
    without ``close()`` is collected, and the thread ends with it (its sockets close)."""
    while True:
        near = ref()
        if near is None or near.stopped:
            return
        near.step(backoff)
        del near


class NearValues:
    """Values of Redis keys in process memory, coherent through client tracking."""

    def __init__(
        self,
        config: CacheConfig,
        find_endpoints: Callable[[], list[Endpoint]],
        may_connect: Callable[[], bool] = lambda: True,
    ) -> None:
        self.config = config
        self.max_keys = config.near_cache_keys
        self.max_bytes = config.near_cache_bytes
        self.lease = config.near_cache_lease
        self.heartbeat_every = self.lease / 4
        self._find = find_endpoints
        #: False while Redis is known to be down (the store's breaker is open): no attempts
        self._may_connect = may_connect
        self._prefix = config.namespace + ":"
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._links: list[TrackingLink] = []
        #: changes each time memory stops being trustworthy (reset, flush, reconnect)
        self.epoch = 0
        self._seq = 0
        self._tickets = 0
        self._since: dict[str, int] = {}
        #: the oldest heartbeat send time every link has confirmed (lease start)
        self._confirmed = float("-inf")
        self._not_before = float("-inf")
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        _watch_forks(self)
        # figures for stats()
        self.hits = 0
        self.invalidated = 0
        self.resets = 0

    # the hot path ---------------------------------------------------------------------------

    def lookup(self, keys: Sequence[str]) -> list[bytes] | None:
        """The values of ``keys`` from memory, or None (then ask Redis)."""
        if self._thread is None:
            self.start()
        with self._lock:
            if not self._trusted():
                return None
            data = self._data
            out: list[bytes] = []
            for key in keys:
                value = data.get(key)
                if value is None:
                    return None
                out.append(value)
            for key in keys:
                data.move_to_end(key)
            self.hits += 1
            return out

    def _trusted(self) -> bool:
        """Lease held and every waiting invalidation applied (called under the lock)."""
        links = self._links
        if not links or time.monotonic() - self._confirmed > self.lease:
            return False
        try:
            for link in links:
                if link.poll(self._invalidate, self._flush) > BACKLOG_BYTES:
                    self._reset("a backlog of invalidations", keep_links=True)
                    return False
        except TrackingLost as exc:
            self._reset(str(exc))
            return False
        self._refresh_lease()
        return True

    # filling ------------------------------------------------------------------------------

    def ticket(self) -> Ticket:
        """Taken before reading keys from Redis; hand it to :meth:`remember`."""
        with self._lock:
            self._tickets += 1
            return self.epoch, self._seq

    def remember(
        self, ticket: Ticket, keys: Sequence[str], values: Sequence[bytes | None] | None
    ) -> None:
        """Keep what Redis answered (None: nothing to keep), unless any of it changed since
        ``ticket``; always returns the ticket."""
        with self._lock:
            self._tickets -= 1
            try:
                if values is None or not self._links:
                    return
                if not self._trusted() or self.epoch != ticket[0]:
                    return
                since, seq = self._since, ticket[1]
                if since and any(since.get(k, -1) > seq for k in keys):
                    return
                for key, value in zip(keys, values, strict=True):
                    if value is not None:
                        self._put(key, value)
            finally:
                if not self._tickets:
                    self._since.clear()

    def forget(self, keys: Iterable[str]) -> None:
        """Drop keys now (this process just changed them; Redis's message follows)."""
        with self._lock:
            self._invalidate(keys)

    def forget_all(self) -> None:
        """Drop everything now (this process deleted keys it cannot name)."""
        with self._lock:
            self._clear()

    def _put(self, key: str, value: bytes) -> None:
        data = self._data
        size = len(value) + len(key) + _KEY_OVERHEAD
        if size > self.max_bytes:
            return
        old = data.pop(key, None)
        if old is not None:
            self._bytes -= len(old) + len(key) + _KEY_OVERHEAD
        data[key] = value
        self._bytes += size
        while len(data) > self.max_keys or self._bytes > self.max_bytes:
            gone, dropped = data.popitem(last=False)
            self._bytes -= len(dropped) + len(gone) + _KEY_OVERHEAD

    # invalidation messages (under the lock) -----------------------------------------------

    def _invalidate(self, keys: Iterable[bytes | str]) -> None:
        self._seq += 1
        seq, data, tracking = self._seq, self._data, self._tickets > 0
        for raw in keys:
            key = raw.decode(errors="surrogateescape") if isinstance(raw, bytes) else raw
            value = data.pop(key, None)
            if value is not None:
                self._bytes -= len(value) + len(key) + _KEY_OVERHEAD
                self.invalidated += 1
            if tracking:
                self._since[key] = seq
        if len(self._since) > MAX_NOTED:  # reads overlapping for long: distrust them all
            self._since.clear()
            self._clear()

    def _flush(self) -> None:
        self._clear()

    def forked(self) -> None:
        """In a child process: the inherited sockets are the parent's (reading them would
        steal its messages) and the thread did not survive; start over."""
        self._lock = threading.Lock()
        self._links = []  # not closed: closing a TLS socket could talk on the parent's behalf
        self._clear()
        self._confirmed = float("-inf")
        self._tickets = 0
        self._since.clear()
        self._thread = None

    def _clear(self) -> None:
        self._data.clear()
        self._bytes = 0
        self.epoch += 1

    def _reset(self, why: str, keep_links: bool = False) -> None:
        """Memory can no longer be trusted: empty it; without ``keep_links``, drop the
        connections (the background thread reconnects)."""
        self._clear()
        self.resets += 1
        self._confirmed = float("-inf")
        self._not_before = time.monotonic()  # the lease needs a heartbeat sent from now on
        if not keep_links:
            for link in self._links:
                link.close()
            self._links = []
            self._wake.set()
            log.info("near cache: tracking lost (%s); validating every read until it is back", why)

    def _refresh_lease(self) -> None:
        confirmed = min(link.confirmed for link in self._links)
        self._confirmed = confirmed if confirmed >= self._not_before else float("-inf")

    def reset(self) -> None:
        """Empty memory and reconnect (Redis may be another server: failover, restart)."""
        with self._lock:
            if self._links:
                self._reset("the data connection to Redis was lost")

    # background: connect, heartbeats, draining -----------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            self._thread = threading.Thread(
                target=_background,
                args=(weakref.ref(self), _Backoff(self.config.breaker_cooldown)),
                name="sqla-redis-cache-tracking",
                daemon=True,
            )
            self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def step(self, backoff: _Backoff) -> None:
        """One turn of the background thread: (re)connect, or wait, drain and heartbeat."""
        if self._links:
            self._tick()
            return
        if backoff.connected_at is not None:  # a connection was lost
            if time.monotonic() - backoff.connected_at >= 1.0:
                backoff.delay = backoff.first  # it had lasted: reconnect promptly
            else:  # it did not (a refused heartbeat, a flapping node): back off
                backoff.wait(self._stopped)
            backoff.connected_at = None
        if self._may_connect() and self._connect():
            backoff.connected_at = time.monotonic()
        else:
            backoff.wait(self._stopped)

    def _connect(self) -> bool:
        links: list[TrackingLink] = []
        try:
            for endpoint in self._find():
                links.append(TrackingLink(self.config, endpoint, self._prefix))
        except Exception as exc:
            for link in links:
                link.close()
            log.debug("near cache: cannot track yet (%s)", exc)
            return False
        now = time.monotonic()
        with self._lock:
            self._clear()  # values read before tracking began may have missed a message
            self._links = links
            for link in links:
                link.heartbeat(now)
            self._wake.clear()
        return True

    def _tick(self) -> None:
        """Wait for messages or the next heartbeat; drain; check the endpoints."""
        links = self._links
        try:
            readable, _, _ = select.select(links, [], [], self.heartbeat_every)
        except (OSError, ValueError):
            readable = links
        with self._lock:
            if links is not self._links or not links:
                return
            now = time.monotonic()
            try:
                for link in links:
                    if link in readable or link.oldest_unanswered is not None:
                        link.poll(self._invalidate, self._flush)
                    oldest = link.oldest_unanswered
                    if oldest is not None and now - oldest > self.lease:
                        raise TrackingLost(f"no heartbeat reply from {link.endpoint}")
                    if oldest is None and now - link.confirmed >= self.heartbeat_every:
                        link.heartbeat(now)
            except TrackingLost as exc:
                self._reset(str(exc))
                return
            self._refresh_lease()
        if self.config.cluster and not readable:
            self._check_topology(links)

    def _check_topology(self, links: list[TrackingLink]) -> None:
        try:
            current = set(self._find())
        except Exception:
            return
        with self._lock:
            if links is self._links and current != {link.endpoint for link in links}:
                self._reset("the cluster's primaries changed")

    # lifecycle and figures ---------------------------------------------------------------

    @property
    def live(self) -> bool:
        with self._lock:
            return bool(self._links) and time.monotonic() - self._confirmed <= self.lease

    def figures(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "keys": len(self._data),
                "bytes": self._bytes,
                "invalidated": self.invalidated,
                "resets": self.resets,
                "live": int(bool(self._links) and time.monotonic() - self._confirmed <= self.lease),
            }

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            for link in self._links:
                link.close()
            self._links = []
            self._clear()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def __repr__(self) -> str:
        return f"NearValues(keys={len(self._data)}, epoch={self.epoch})"


def figures_or_empty(near: Any) -> dict[str, int]:
    return near.figures() if near is not None else {}
