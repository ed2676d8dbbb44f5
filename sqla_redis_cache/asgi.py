"""ASGI response caching and the cache status API (optional extra ``asgi``: Starlette/FastAPI).

:class:`CacheMiddleware` is the seed guide's ``withCache`` as plain ASGI middleware, so it works
under Starlette, FastAPI or any ASGI app.  It caches successful ``GET`` responses under a key
made of the path, the sorted query string and the values of the headers named in
``vary_headers``; a lookup is the cache's usual single round trip (entry plus version tokens).
It never stores a response that sets a cookie, says ``Cache-Control: private``, ``no-store`` or
``no-cache``, varies on ``*``, is not a 200, or is larger than ``max_body``; by default it does
not cache requests carrying ``Authorization`` or ``Cookie`` at all (personalised responses),
unless those headers are in ``vary_headers``.  Entries carry ``tags``; a successful unsafe
request (POST, PUT, PATCH, DELETE) under the middleware invalidates those tags and the
``revalidate`` ones, so the next GET is fresh.  Version stamps are read before the app runs,
like every other fill, so a write that races the request makes its entry stale at birth.

:func:`status_app` serves ``GET /status`` and ``POST /status`` (``{"action": "clear-all" |
"clear-db" | "clear-ai" | "reset-stats" | "warm-up"}``).  It refuses to
exist without a ``guard``: an unguarded mount raises at construction, before the app starts.

Redis calls here never block the event loop: they go through the cache's asyncio I/O
(``io._asyncio``: redis.asyncio awaited from a SQLAlchemy greenlet), with the store's fail-open
rules (50 ms timeouts, circuit breaker); the slow operator actions run in a worker thread.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._cache import QueryCache, internals
from ._config import clean_names
from ._errors import ConfigurationError
from .features._generic import seal_value
from .io import Set
from .storage._store import FAILED

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
TagsFor = Iterable[str] | Callable[[Scope], Iterable[str]]

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NO_STORE = (b"private", b"no-store", b"no-cache")


def _payload(value: Any) -> Any:
    return value[1]


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
        self.ttl_ms = int(1000 * (ttl if ttl is not None else cache.config.region(region).ttl))
        if self.ttl_ms <= 0:
            raise ConfigurationError("ttl must be positive")
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
        storage = internals(self.cache).storage
        tags = self._tags(scope)
        key = storage.keys.generic(self._key(scope, headers))
        deps = storage.keys.dependencies((), tags)
        started = time.perf_counter()
        values, opened = await self._router().run(self._lookup, key, deps)
        if values is not FAILED:
            if opened is not None:
                storage.stats.hit(time.perf_counter() - started)
                status, response_headers, body = opened[1]
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [(bytes(k), bytes(v)) for k, v in response_headers]
                        + [(b"x-cache", b"HIT")],
                    }
                )
                await send({"type": "http.response.body", "body": bytes(body)})
                return
            storage.stats.misses += 1
        else:
            storage.stats.bypasses += 1
        await self._fill(scope, receive, send, key, deps, tags, values)

    def _router(self) -> Any:
        return internals(self.cache).storage.async_router()

    def _lookup(self, key: str, deps: list[str]) -> tuple[Any, Any]:
        """(values read, opened entry or None); runs in a greenlet, Redis calls awaited."""
        storage = internals(self.cache).storage
        values = storage.store.get_many([key, *deps])
        if values is FAILED:
            return values, None
        return values, storage.reader.open_entry(key, values, _payload, None)

    async def _fill(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        key: str,
        deps: list[str],
        tags: tuple[str, ...],
        values: Any,
    ) -> None:
        storage = internals(self.cache).storage
        run = self._router().run
        stamps = None if values is FAILED else await run(storage.versions.ensure, deps, values[1:])
        state: dict[str, Any] = {"keep": stamps is not None, "body": []}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                state["status"], state["headers"] = message["status"], headers
                if state["keep"] and not self._storable(message["status"], headers):
                    state["keep"] = False
                message = dict(message)
                message["headers"] = [*headers, (b"x-cache", b"MISS")]
            elif message["type"] == "http.response.body" and state["keep"]:
                state["body"].append(message.get("body", b""))
                if sum(len(b) for b in state["body"]) > self.max_body:
                    state["keep"] = False
                if not message.get("more_body", False) and state["keep"]:
                    value = [state["status"], state["headers"], b"".join(state["body"])]
                    entry = seal_value(storage, stamps or b"", tags, value, None)
                    await run(storage.store.run, [Set(key, entry, self.ttl_ms)])
            await send(message)

        await self.app(scope, receive, capture)

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
        if action == "clear-ai":
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
        if action not in {"clear-all", "clear-db", "clear-ai", "reset-stats", "warm-up"}:
            return JSONResponse({"error": f"unknown action {action!r}"}, status_code=400)
        result = await run_in_threadpool(act, action)
        return JSONResponse({"action": action, "result": result})

    return Starlette(routes=[Route("/status", endpoint, methods=["GET", "POST"])])
