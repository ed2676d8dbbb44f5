"""Redis client tracking: one RESP3 connection per Redis master that hears every change under
the namespace (``CLIENT TRACKING ON BCAST PREFIX <ns>:``).

Why its own socket, and not redis-py's: the near cache (``storage._near``) must read whatever
invalidation messages are already waiting, *without blocking*, before it serves anything from
process memory, on every hit, from any thread and from an asyncio application's greenlet alike.
A plain non-blocking socket does that with one ``recv`` that returns at once; redis-py's
client-side caching exists only for synchronous clients and only against Redis >= 7.4.  So this
module speaks the few RESP3 frames tracking needs itself:

- the handshake: ``HELLO 3 [AUTH user pass]``, then ``CLIENT TRACKING ON BCAST PREFIX <ns>:``
  (without ``NOLOOP``: this process's own writes must invalidate its memory too);
- push messages ``>2 invalidate [keys]``, and ``invalidate`` with a null array (``FLUSHALL``,
  ``FLUSHDB``): every key is then invalid;
- the heartbeat ``ROLE``: its reply, which Redis sends on this connection *after* every push
  it queued before handling it, is a barrier (everything changed before the heartbeat reached
  Redis has been heard once its reply is read), and says the node is still a master.  An ACL
  user that may not run ``ROLE`` gets ``PING`` heartbeats (a barrier too); ``HELLO`` still
  checks the role when connecting.

``BCAST`` tracks by prefix, not by what this connection read, so which connection (sync pool,
asyncio client, another thread) read a key does not matter.  Redis queues a broadcast
invalidation for every tracking connection in the event-loop pass that executed the write,
before it writes any reply of that pass (``beforeSleep``: ``trackingBroadcastInvalidationMessages``
then ``handleClientsWithPendingWrites``), and writes them all in that same pass: the writer's
reply never leaves Redis a pass ahead of the message.

Endpoints per deployment (:func:`endpoints`): the URL's server; Sentinel's current master; every
primary of a cluster (a key is tracked by the node that holds it, so all of them are followed).
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from .._config import CacheConfig

__all__ = ["Endpoint", "TrackingLink", "TrackingLost", "endpoints"]

#: (host, port) of a TCP endpoint, or (path, 0) for a unix socket
Endpoint = tuple[str, int]

#: bytes read per ``recv``
_CHUNK = 256 * 1024


class TrackingLost(Exception):
    """The tracking connection cannot be trusted any more (closed, error, not a master)."""


class _Incomplete(Exception):
    pass


_NULL = object()


class Resp3:
    """An incremental RESP3 decoder: feed bytes, take complete frames."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        return len(self._buf) - self._pos

    def frames(self) -> list[tuple[bool, Any]]:
        """Every complete frame as ``(is_push, value)``; a partial one stays buffered."""
        out: list[tuple[bool, Any]] = []
        while self._pos < len(self._buf):
            start = self._pos
            is_push = self._buf[start : start + 1] == b">"
            try:
                value = self._value()
            except _Incomplete:
                self._pos = start
                break
            out.append((is_push, value))
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        return out

    def _line(self) -> bytes:
        end = self._buf.find(b"\r\n", self._pos)
        if end < 0:
            raise _Incomplete
        line = bytes(self._buf[self._pos : end])
        self._pos = end + 2
        return line

    def _value(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"(", b","):
            return rest
        if kind in (b"-", b"!"):
            if kind == b"!":
                rest = self._bulk(int(rest))
            return TrackingLost(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"#":
            return rest == b"t"
        if kind == b"_":
            return None
        if kind in (b"$", b"="):
            size = int(rest)
            return None if size < 0 else self._bulk(size)
        if kind in (b"*", b">", b"~"):
            count = int(rest)
            return None if count < 0 else [self._value() for _ in range(count)]
        if kind == b"%":
            return {self._value(): self._value() for _ in range(int(rest))}
        if kind == b"|":  # attributes precede the value they describe: skip them
            for _ in range(2 * int(rest)):
                self._value()
            return self._value()
        raise TrackingLost(f"unexpected RESP3 frame {line[:20]!r}")

    def _bulk(self, size: int) -> bytes:
        end = self._pos + size
        if end + 2 > len(self._buf):
            raise _Incomplete
        data = bytes(self._buf[self._pos : end])
        self._pos = end + 2
        return data


def _command(*args: str | bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


_ROLE = _command("ROLE")
_PING = _command("PING")


def _credentials(config: CacheConfig) -> tuple[str | None, str | None]:
    parts = urlsplit(config.url)
    user = config.username or (unquote(parts.username) if parts.username else None)
    password = config.password or (unquote(parts.password) if parts.password else None)
    return user, password


def _tls_context(config: CacheConfig) -> ssl.SSLContext | None:
    if not config.tls_enabled:
        return None
    context = ssl.create_default_context(cafile=config.tls_ca_certs)
    context.check_hostname = config.tls_verify
    context.verify_mode = ssl.CERT_REQUIRED if config.tls_verify else ssl.CERT_NONE
    if config.tls_certfile:
        context.load_cert_chain(config.tls_certfile, config.tls_keyfile)
    return context


class TrackingLink:
    """One tracking connection to one Redis master.

    ``poll`` reads what is waiting without blocking and hands each invalidation to its
    callbacks; ``heartbeat`` sends ``ROLE``; ``confirmed`` is the send time of the last
    heartbeat answered (see the module docstring: a barrier).
    """

    def __init__(self, config: CacheConfig, endpoint: Endpoint, prefix: str) -> None:
        self.endpoint = endpoint
        #: heartbeats are ``ROLE`` (and a node that is no longer master ends the link), or
        #: ``PING`` when the ACL user may not run ``ROLE``
        self.checks_role = True
        self.confirmed = float("-inf")
        self._sent: deque[float] = deque()
        self._parser = Resp3()
        self._sock = self._connect(config, endpoint)
        try:
            self._handshake(config, prefix)
        except BaseException:
            self.close()
            raise
        self._sock.setblocking(False)

    @staticmethod
    def _connect(config: CacheConfig, endpoint: Endpoint) -> socket.socket:
        host, port = endpoint
        if port == 0:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(config.connect_timeout)
            sock.connect(host)
        else:
            sock = socket.create_connection((host, port), timeout=config.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = _tls_context(config)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.settimeout(max(config.socket_timeout, config.connect_timeout, 0.5))
        return sock

    def _call(self, *args: str | bytes) -> Any:
        self._sock.sendall(_command(*args))
        while True:
            for is_push, value in self._parser.frames():
                if is_push:
                    continue  # nothing is tracked yet
                if isinstance(value, TrackingLost):
                    raise value
                return value
            data = self._sock.recv(_CHUNK)
            if not data:
                raise TrackingLost("connection closed during the handshake")
            self._parser.feed(data)

    def _handshake(self, config: CacheConfig, prefix: str) -> None:
        user, password = _credentials(config)
        if password:
            hello = self._call("HELLO", "3", "AUTH", user or "default", password)
        else:
            hello = self._call("HELLO", "3")
        if isinstance(hello, dict) and hello.get(b"role", b"master") != b"master":
            raise TrackingLost(f"{self.endpoint} is not a master")
        try:
            self._call("ROLE")
        except TrackingLost:  # an ACL user without +role: PING heartbeats (docs/deployment.md)
            self.checks_role = False
        self._call("CLIENT", "SETNAME", "sqla-redis-cache-tracking:" + prefix.rstrip(":"))
        self._call("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", prefix)

    def fileno(self) -> int:
        return self._sock.fileno()

    def heartbeat(self, now: float) -> None:
        """Send ``ROLE`` (or ``PING``); its reply confirms everything Redis pushed before it."""
        try:
            self._sock.sendall(_ROLE if self.checks_role else _PING)
        except (OSError, ValueError) as exc:
            raise TrackingLost(f"heartbeat failed: {exc}") from exc
        self._sent.append(now)

    @property
    def oldest_unanswered(self) -> float | None:
        return self._sent[0] if self._sent else None

    def poll(
        self, invalidated: Callable[[Iterable[bytes]], None], flushed: Callable[[], None]
    ) -> int:
        """Read every byte waiting (never blocks); apply the pushes; bytes read.

        Raises :class:`TrackingLost` when the connection closed or the node is not a master.
        """
        received = 0
        sock = self._sock
        while True:
            try:
                data = sock.recv(_CHUNK)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except (OSError, ValueError) as exc:
                raise TrackingLost(f"tracking connection failed: {exc}") from exc
            if not data:
                raise TrackingLost("tracking connection closed by the server")
            received += len(data)
            self._parser.feed(data)
            if len(data) < _CHUNK:
                break
        if received:
            self._apply(invalidated, flushed)
        return received

    def _apply(
        self, invalidated: Callable[[Iterable[bytes]], None], flushed: Callable[[], None]
    ) -> None:
        for is_push, value in self._parser.frames():
            if is_push:
                if len(value) >= 2 and value[0] == b"invalidate":
                    if value[1] is None:
                        flushed()
                    else:
                        invalidated(value[1])
                continue
            if isinstance(value, TrackingLost):
                raise value
            sent = self._sent.popleft() if self._sent else None
            if self.checks_role and (
                not isinstance(value, list) or not value or value[0] != b"master"
            ):
                raise TrackingLost(f"{self.endpoint} is no longer a master")
            if sent is not None:
                self.confirmed = sent

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def endpoints(config: CacheConfig, client: Any) -> list[Endpoint]:
    """The masters to track for ``config``'s deployment (``client``: the sync redis-py client,
    whose cluster slot map names the primaries)."""
    if config.sentinel_nodes:
        from redis.sentinel import Sentinel

        from ._clients import _sentinel_kwargs

        assert config.sentinel_master is not None
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinel_nodes), sentinel_kwargs=_sentinel_kwargs(config)
        )
        host, port = sentinel.discover_master(config.sentinel_master)  # type: ignore[no-untyped-call]
        return [(str(host), int(port))]
    if config.cluster:
        return sorted((str(n.host), int(n.port)) for n in client.get_primaries())
    parts = urlsplit(config.url)
    if parts.scheme.lower() == "unix":
        return [(parts.path, 0)]
    return [(parts.hostname or "localhost", parts.port or 6379)]
