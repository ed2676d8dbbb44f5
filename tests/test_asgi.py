"""ASGI response caching and the status API, through Starlette's TestClient and a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from sqla_redis_cache import ConfigurationError, QueryCache
from sqla_redis_cache.asgi import CacheMiddleware, status_app

from . import _services
from ._busy import while_redis_is_busy


def make_app(cache: QueryCache, **options: Any) -> tuple[TestClient, Counter[str]]:
    calls: Counter[str] = Counter()
    state = {"version": 1}

    async def items(request: Request) -> Response:
        calls["items"] += 1
        lang = request.headers.get("accept-language", "-")
        return JSONResponse({"v": state["version"], "q": str(request.query_params), "lang": lang})

    async def write(request: Request) -> Response:
        calls["write"] += 1
        state["version"] += 1
        return PlainTextResponse("ok", status_code=int(request.query_params.get("status", 200)))

    async def cookie(request: Request) -> Response:
        calls["cookie"] += 1
        response = PlainTextResponse("hello")
        response.set_cookie("session", "abc")
        return response

    async def private(request: Request) -> Response:
        calls["private"] += 1
        return PlainTextResponse("mine", headers={"Cache-Control": "private, max-age=60"})

    async def missing(request: Request) -> Response:
        calls["missing"] += 1
        return PlainTextResponse("no", status_code=404)

    async def big(request: Request) -> Response:
        calls["big"] += 1
        return PlainTextResponse("x" * 5000)

    app = Starlette(
        routes=[
            Route("/api/items", items),
            Route("/api/items", write, methods=["POST"]),
            Route("/api/cookie", cookie),
            Route("/api/private", private),
            Route("/api/missing", missing),
            Route("/api/big", big),
            Route("/other", items),
        ]
    )
    app.add_middleware(CacheMiddleware, cache=cache, paths=("/api",), **options)  # type: ignore[arg-type]
    return TestClient(app), calls


def test_get_is_served_from_redis_until_an_unsafe_request(cache: QueryCache) -> None:
    client, calls = make_app(cache, tags=["items"])
    first = client.get("/api/items?b=2&a=1")
    assert first.headers["x-cache"] == "MISS"
    again = client.get("/api/items?a=1&b=2")  # same query, other order: same entry
    assert again.headers["x-cache"] == "HIT"
    assert again.json() == first.json() and again.headers["content-type"] == "application/json"
    assert calls["items"] == 1
    client.get("/api/items?a=1&b=3")
    assert calls["items"] == 2
    assert client.post("/api/items").status_code == 200
    fresh = client.get("/api/items?a=1&b=2")
    assert fresh.headers["x-cache"] == "MISS" and fresh.json()["v"] == 2
    client.get("/other")
    client.get("/other")
    assert calls["items"] == 5  # outside the configured paths: never cached
    st = cache.stats()
    assert st.hits == 1 and st.misses == 3


def test_failed_unsafe_request_does_not_revalidate(cache: QueryCache) -> None:
    client, _ = make_app(cache, tags=["items"], revalidate=["dashboard"])
    client.get("/api/items")
    client.post("/api/items?status=500")
    assert client.get("/api/items").headers["x-cache"] == "HIT"
    cache.set("dash", 1, tags=["dashboard"])
    client.post("/api/items")
    assert cache.get("dash") is None  # the revalidate tags went too
    assert client.get("/api/items").headers["x-cache"] == "MISS"


def test_vary_headers_are_part_of_the_key(cache: QueryCache) -> None:
    client, calls = make_app(cache, vary_headers=["Accept-Language"])
    assert client.get("/api/items", headers={"accept-language": "fr"}).json()["lang"] == "fr"
    assert client.get("/api/items", headers={"accept-language": "de"}).json()["lang"] == "de"
    hit = client.get("/api/items", headers={"accept-language": "fr"})
    assert hit.headers["x-cache"] == "HIT" and hit.json()["lang"] == "fr"
    assert calls["items"] == 2


@pytest.mark.parametrize("path", ["/api/cookie", "/api/private", "/api/missing"])
def test_responses_that_must_not_be_shared_are_never_stored(cache: QueryCache, path: str) -> None:
    client, calls = make_app(cache)

    def get() -> Any:
        client.cookies.clear()  # a fresh visitor each time: only the response decides
        return client.get(path)

    bodies = [get().text for _ in range(2)]
    assert bodies[0] == bodies[1]
    assert sum(calls.values()) == 2
    assert get().headers["x-cache"] == "MISS"


def test_personalised_requests_and_oversized_bodies_are_not_cached(cache: QueryCache) -> None:
    client, calls = make_app(cache, max_body=1000)
    for _ in range(2):
        client.get("/api/items", headers={"Authorization": "Bearer x"})
        client.get("/api/big")
    assert calls["items"] == 2 and calls["big"] == 2
    client.cookies.set("sid", "1")
    client.get("/api/items")
    client.get("/api/items")
    assert calls["items"] == 4


def test_redis_down_passes_requests_through() -> None:
    cache = QueryCache.from_url(f"redis://127.0.0.1:{_services.free_port()}/0")
    client, calls = make_app(cache, tags=["items"])
    for _ in range(3):
        assert client.get("/api/items").status_code == 200
    assert client.post("/api/items").status_code == 200
    assert calls["items"] == 3
    assert cache.stats().bypasses == 3 and cache.stats().errors >= 1
    cache.close()


def test_concurrent_misses_of_one_url_run_the_app_once(patient_cache: QueryCache) -> None:
    """The stampede lock: the first miss runs the app, the others wait for its entry."""
    calls: Counter[str] = Counter()

    async def slow(request: Request) -> Response:
        calls["slow"] += 1
        await asyncio.sleep(0.3)
        return JSONResponse({"n": calls["slow"]})

    app = CacheMiddleware(Starlette(routes=[Route("/slow", slow)]), patient_cache)

    async def body() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            responses = await asyncio.gather(*(client.get("/slow") for _ in range(6)))
            await patient_cache.aclose()
            return list(responses)

    responses = asyncio.run(body())
    assert calls["slow"] == 1
    assert sorted(r.headers["x-cache"] for r in responses) == ["HIT"] * 5 + ["MISS"]
    assert all(r.json() == {"n": 1} for r in responses)
    assert patient_cache.stats().lock_waits == 5


# the status API --------------------------------------------------------------------------------


def admin_only(request: Request) -> bool:
    return request.headers.get("x-admin") == "yes"


def test_status_api_refuses_to_exist_unguarded(cache: QueryCache) -> None:
    with pytest.raises(ConfigurationError, match="without a guard"):
        status_app(cache, guard=None)


def test_status_api_get_and_actions(cache: QueryCache) -> None:
    async def guard(request: Request) -> bool:  # async guards work too
        return admin_only(request)

    warmed = []
    cache.register_warmup(lambda: warmed.append(1) or 1, name="hot")
    app = Starlette(routes=[Mount("/api/cache", status_app(cache, guard=guard))])
    client = TestClient(app)
    admin = {"x-admin": "yes"}
    assert client.get("/api/cache/status").status_code == 403
    assert client.post("/api/cache/status", json={"action": "clear-all"}).status_code == 403

    cache.set("k", 1)
    cache.get("k")
    body = client.get("/api/cache/status", headers=admin).json()
    assert body["connected"] is True and body["entries"]["generic"] == 1
    assert body["stats"]["hits"] == 1 and body["warmup"] == ["hot"]

    def post(action: str) -> Any:
        response = client.post("/api/cache/status", json={"action": action}, headers=admin)
        return response.status_code, response.json()

    assert post("warm-up") == (
        200,
        {"action": "warm-up", "result": {"hot": {"ok": True, "result": 1}}},
    )
    assert warmed == [1]
    assert post("reset-stats")[0] == 200 and cache.stats().hits == 0
    assert post("clear-db")[0] == 200 and cache.get("k") == 1  # generic values stay
    assert post("clear-all")[0] == 200 and cache.get("k") is None
    assert post("drop-tables")[0] == 400
    bad = client.post("/api/cache/status", content=b"nope", headers=admin)
    assert bad.status_code == 400


@pytest.mark.slow
def test_middleware_never_blocks_the_event_loop_on_a_busy_redis() -> None:
    """A cached GET while Redis is busy for 0.6 s: other coroutines keep running."""
    port = _services.free_port()
    proc = _services.start_redis_server(port)
    url = f"redis://127.0.0.1:{port}/0"
    cache = QueryCache.from_url(url, namespace="asgi" + uuid.uuid4().hex[:8], socket_timeout=5.0)

    async def items(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = CacheMiddleware(Starlette(routes=[Route("/items", items)]), cache)

    async def body() -> tuple[str, float, list[float]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/items")  # fill
            response, elapsed, gaps = await while_redis_is_busy(url, lambda: client.get("/items"))
            await cache.aclose()
            return response.headers["x-cache"], elapsed, gaps

    try:
        verdict, elapsed, gaps = asyncio.run(body())
    finally:
        _services.stop(proc)
    assert verdict == "HIT"
    assert elapsed > 0.3, "the request did not wait for the busy Redis: the test proves nothing"
    assert max(gaps) < 0.1, f"the event loop stalled for {max(gaps):.3f}s"
