"""FastAPI: sync and async session dependencies under one policy, the response cache and the
status API, together.

- ``get_session`` yields a Session of ``SessionLocal`` (a sessionmaker) for ``def`` endpoints;
  ``get_async_session`` an AsyncSession of ``AsyncSessionLocal`` (an ``async_sessionmaker``) for
  ``async def`` ones.  Both are attached with the same policy, so neither endpoint writes
  ``cached()``; commits through either invalidate for both.
- :class:`~sqla_redis_cache.asgi.CacheMiddleware` caches whole ``GET /api/...`` responses under
  the tag ``api``; a successful POST under it drops them.
- :func:`~sqla_redis_cache.asgi.status_app` is mounted at ``/admin/cache``, behind a token.

Run it (SQLite and Redis at ``REDIS_URL``, default localhost)::

    pip install fastapi httpx aiosqlite && python -m examples.fastapi_app
"""

# no ``from __future__ import annotations``: FastAPI reads the dependencies, local to
# create_app, from the annotations at run time
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.asgi import CacheMiddleware, status_app


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "example_fastapi_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


def create_app(
    database_url: str, async_database_url: str, cache: QueryCache, token: str
) -> FastAPI:
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)
    SessionLocal = sessionmaker(engine)
    async_engine = create_async_engine(async_database_url)
    AsyncSessionLocal = async_sessionmaker(async_engine, expire_on_commit=False)
    policy = cached(ttl=60)
    cache.attach(SessionLocal, default=policy)
    cache.attach(AsyncSessionLocal, default=policy)

    def get_session() -> Iterator[Session]:
        with SessionLocal() as session:
            yield session

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        async with AsyncSessionLocal() as session:
            yield session

    app = FastAPI()

    @app.get("/items")
    def list_items(session: Annotated[Session, Depends(get_session)]) -> list[str]:
        return list(session.scalars(select(Item.name).order_by(Item.id)))

    @app.get("/async/items")
    async def list_items_async(
        session: Annotated[AsyncSession, Depends(get_async_session)],
    ) -> list[str]:
        return list(await session.scalars(select(Item.name).order_by(Item.id)))

    @app.post("/items", status_code=201)
    async def add_item(
        name: str, session: Annotated[AsyncSession, Depends(get_async_session)]
    ) -> dict[str, str]:
        session.add(Item(name=name))
        await session.commit()  # invalidates the item table for both kinds of session
        return {"added": name}

    @app.get("/api/summary")
    def summary(session: Annotated[Session, Depends(get_session)]) -> dict[str, int]:
        return {"items": session.scalar(select(func.count()).select_from(Item)) or 0}

    @app.post("/api/summary/refresh")
    def refresh_summary() -> dict[str, bool]:
        return {"ok": True}  # a successful POST under the middleware drops the "api" tag

    def admins_only(request: Request) -> bool:
        return request.headers.get("x-admin-token") == token

    app.add_middleware(CacheMiddleware, cache=cache, paths=("/api",), tags=["api"], ttl=30)
    app.mount("/admin/cache", status_app(cache, guard=admins_only))
    app.state.engines = (engine, async_engine)
    return app


def main() -> None:
    from fastapi.testclient import TestClient

    directory = tempfile.mkdtemp()
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{directory}/items.db"
    async_url = os.environ.get("ASYNC_DATABASE_URL") or f"sqlite+aiosqlite:///{directory}/items.db"
    cache = QueryCache.from_env(namespace=os.environ.get("SQLA_CACHE_NAMESPACE", "fastapi-ex"))
    app = create_app(url, async_url, cache, token="secret")
    with TestClient(app) as client:
        client.post("/items", params={"name": "widget"})
        for path in ("/items", "/items", "/async/items", "/async/items"):
            print(path, client.get(path).json())
        for _ in range(2):
            response = client.get("/api/summary")
            print("/api/summary", response.json(), response.headers.get("x-cache"))
        status = client.get("/admin/cache/status", headers={"x-admin-token": "secret"}).json()
        print("status: hit rate", status["stats"]["hit_rate"])
    cache.clear()
    cache.close()


if __name__ == "__main__":
    main()
