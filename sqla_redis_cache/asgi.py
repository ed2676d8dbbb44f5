"""ASGI response caching and the cache status API (optional extra ``asgi``: Starlette/FastAPI).

:class:`CacheMiddleware` is plain ASGI middleware, so it works under Starlette, FastAPI or any
ASGI app.  It caches successful ``GET`` responses under a key made of the path, the sorted
query string and the values of the headers named in ``vary_headers``; a lookup is the cache's
usual read-through (``features._generic.read_through``): one round trip for the entry and its
version tokens, and on a miss the stampede lock, so concurrent misses of one URL run the app
once while the others wait for its entry.  The response of the request that runs the app is
streamed to its client as it is produced, and captured.  It is never stored when it sets a
cookie, says ``Cache-Control: private``, ``no-store`` or ``no-cache``, varies on ``*``, is not a
200, or is larger than ``max_body``; by default requests carrying ``Authorization`` or
``Cookie`` are not cached at all (personalised responses), unless those headers are in
``vary_headers``.  Entries carry ``tags``; a successful unsafe request (POST, PUT, PATCH,
DELETE) under the middleware invalidates those tags and the ``revalidate`` ones, so the next
GET is fresh.  Version stamps are read before the app runs, like every other fill, so a write
that races the request makes its entry stale at birth.

:func:`status_app` serves ``GET /status`` and ``POST /status`` (``{"action": "clear-all" |
"clear-db" | "clear-memoized" | "reset-stats" | "warm-up"}``).  It refuses to exist without a
``guard``: an unguarded mount raises at construction, before the app starts.

Redis calls here never block the event loop: they go through the cache's asyncio I/O
(``io._asyncio``: redis.asyncio awaited from a SQLAlchemy greenlet), with the store's fail-open
rules (50 ms timeouts, circuit breaker); the slow operator actions run in a worker thread.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from functools import partial
from typing import Any

from ._cache import QueryCache, internals
from ._config import clean_names, seconds
from ._errors import ConfigurationError
from .features._generic import read_through
from .io._asyncio import awaiting

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
TagsFor = Iterable[str] | Callable[[Scope], Iterable[str]]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: the status API's actions
ACTIONS = frozenset({"clear-all", "clear-db", "clear-memoized", "reset-stats", "warm-up"})
_NO_STORE = (b"private", b"no-store", b"no-cache")


class CacheMiddleware:
    """Cache GET responses in a :class:`~sqla_redis_cache.QueryCache`.

    :param ttl: seconds; default: the ``region``'s TTL (``api_response``, 120 s).
    :param vary_headers: request headers whose values are part of the key.
    :param tags: tags of every entry (or ``scope -> tags``); unsafe requests invalidate them.
    :param revalidate: more tags a successful unsafe request invalidates.
    :param paths: only paths starting with one of these are handled.
    :param private_headers: requests carrying one of these (and not varying on it) are not
        cached.
    """

    def __init__(
        self,
        app: ASGIApp,
        cache: QueryCache,
        *,
        ttl: float | None = None,
        region: str = "api_response",
        vary_headers: Iterable[str] = (),
        tags: TagsFor = (),
        revalidate: Iterable[str] = (),
        paths: Iterable[str] = ("/",),
        private_headers: Iterable[str] = ("authorization", "cookie"),
        max_body: int = 1024 * 1024,
    ) -> None:
        self.app = app
        self.cache = cache
        if ttl is None:
            ttl = cache.config.region(region).ttl
        self.ttl = seconds("ttl", ttl, error=ConfigurationError)
        self.vary = tuple(sorted({h.lower().encode("latin-1") for h in vary_headers}))
        self.private = frozenset(h.lower().encode("latin-1") for h in private_headers) - set(
            self.vary
        )
        self.tags = tags if callable(tags) else clean_names("tags", tags)
        self.revalidate = clean_names("tags", revalidate)
        self.paths = tuple(paths)
        self.max_body = max_body

    def _tags(self, scope: Scope) -> tuple[str, ...]:
        return clean_names("tags", self.tags(scope)) if callable(self.tags) else self.tags

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
        elif scope["method"] == "GET":
            await self._get(scope, receive, send)
        elif scope["method"] in UNSAFE_METHODS:
            await self._unsafe(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _key(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        query = b"&".join(sorted(scope.get("query_string", b"").split(b"&")))
        digest = hashlib.blake2b(digest_size=20)
        digest.update(scope["path"].encode())
        digest.update(b"\x00" + query)
        for name in self.vary:
            digest.update(b"\x00" + name + b"=" + headers.get(name, b""))
        return "api:" + digest.hexdigest()

    async def _get(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or ())
        if any(name in headers for name in self.private):
            await self.app(scope, receive, send)
            return
        router = internals(self.cache).storage.async_router()
        keep = [True]  # this request's response may be stored

        async def respond() -> list[Any]:
            """Run the app, streaming its response to the client; the response as stored."""
            captured: dict[str, Any] = {"status": 0, "headers": [], "body": []}

            async def capture(message: Message) -> None:
                if message["type"] == "http.response.start":
                    response_headers = list(message.get("headers") or ())
                    captured["status"], captured["headers"] = message["status"], response_headers
                    if not self._storable(message["status"], response_headers):
                        keep[0] = False
                    message = dict(message)
                    message["headers"] = [*response_headers, (b"x-cache", b"MISS")]
                elif message["type"] == "http.response.body" and keep[0]:
                    captured["body"].append(message.get("body", b""))
                    if sum(len(b) for b in captured["body"]) > self.max_body:
                        keep[0] = False
                await send(message)

            await self.app(scope, receive, capture)
            body = b"".join(captured["body"]) if keep[0] else b""
            return [captured["status"], captured["headers"], body]

        lookup = partial(
            read_through, ttl=self.ttl, tags=self._tags(scope), store_if=lambda _: keep[0]
        )
        storage = internals(self.cache).storage
        key = self._key(scope, headers)
        response, hit = await router.run(lookup, storage, key, awaiting(router, respond))
        if hit:  # the app did not run for this request: send the stored response
            status, response_headers, body = response
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(bytes(k), bytes(v)) for k, v in response_headers]
                    + [(b"x-cache", b"HIT")],
                }
            )
            await send({"type": "http.response.body", "body": bytes(body)})

    @staticmethod
    def _storable(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        if status != 200:
            return False
        for raw_name, value in headers:
            name = raw_name.lower()
            if name == b"set-cookie":
                return False
            if name == b"cache-control" and any(d in value.lower() for d in _NO_STORE):
                return False
            if name == b"vary" and value.strip() == b"*":
                return False
        return True

    async def _unsafe(self, scope: Scope, receive: Receive, send: Send) -> None:
        status: list[int] = []

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        if status and status[0] < 400:
            tags = set(self._tags(scope)) | set(self.revalidate)
            if tags:
                await self.cache.ainvalidate_tags(*tags)


Guard = Callable[[Any], bool | Awaitable[bool]]


def status_app(cache: QueryCache, *, guard: Guard | None) -> Any:
    """A Starlette app serving the status API; mount it, e.g. at ``/api/cache``.

    ``guard(request)`` (sync or async) must return True to allow the request; False answers
    403 (raise your framework's HTTP exception for anything else).  ``guard=None`` raises
    :class:`~sqla_redis_cache.ConfigurationError`: this API clears caches and must not be
    mounted open.
    """
    if guard is None or not callable(guard):
        raise ConfigurationError(
            "refusing to build the cache status API without a guard: pass guard=<callable "
            "(request) -> bool> that checks the caller is an administrator"
        )
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from . import _operator

    async def allowed(request: Request) -> bool:
        verdict = guard(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    def act(action: str) -> Any:
        if action == "clear-all":
            return _operator.clear(cache, everything=True)
        if action == "clear-db":
            return _operator.clear(cache, queries=True, entities=True)
        if action == "clear-memoized":
            return {"memoized": cache.delete_pattern("memo:*")}
        if action == "reset-stats":
            cache.reset_stats(shared=True)
            return {"reset": True}
        return cache.warm()

    async def endpoint(request: Request) -> JSONResponse:
        if not await allowed(request):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        if request.method == "GET":
            return JSONResponse(await run_in_threadpool(_operator.status, cache))
        try:
            body = await request.json()
            action = body["action"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected JSON {"action": ...}'}, status_code=400)
        if action not in ACTIONS:
            return JSONResponse({"error": f"unknown action {action!r}"}, status_code=400)
        result = await run_in_threadpool(act, action)
        return JSONResponse({"action": action, "result": result})

    return Starlette(routes=[Route("/status", endpoint, methods=["GET", "POST"])])
