"""The framework examples under ``examples/``, on PostgreSQL and Redis: Flask-SQLAlchemy
(``attach(db.session)``), SQLModel (``attach(engine)``) and FastAPI (sync and async session
dependencies, the response cache and the status API together); and each runs as a script."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from sqla_redis_cache import QueryCache

from . import _services

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cache(patient_cache: QueryCache) -> QueryCache:
    """The examples' tests count hits and misses: Redis must not fail open on a loaded machine."""
    return patient_cache


def test_flask_sqlalchemy(postgres_url: str, cache: QueryCache) -> None:
    from examples import flask_app

    app = flask_app.create_app(postgres_url, cache)
    with app.app_context():
        flask_app.db.session.execute(delete(flask_app.Note))
        flask_app.db.session.execute(delete(flask_app.AuditEntry))
        flask_app.db.session.commit()
    client = app.test_client()
    assert client.post("/notes", json={"text": "one"}).status_code == 201
    assert [n["text"] for n in client.get("/notes").get_json()] == ["one"]
    assert [n["text"] for n in client.get("/notes").get_json()] == ["one"]
    assert cache.stats().by_table["example_flask_note"].hits == 1  # no cached() anywhere
    note_id = client.get("/notes").get_json()[0]["id"]
    for _ in range(2):
        assert client.get(f"/notes/{note_id}").get_json()["text"] == "one"  # db.get_or_404
    assert client.get("/notes/999999").status_code == 404
    client.post("/notes", json={"text": "two"})  # the commit invalidates: fresh at once
    assert [n["text"] for n in client.get("/notes").get_json()] == ["one", "two"]
    for _ in range(2):
        assert len(client.get("/audit").get_json()) == 2
    audit_figures = cache.stats().by_table["example_flask_audit"]
    assert (audit_figures.lookups, audit_figures.invalidations) == (0, 3)  # never cached
    with app.app_context():
        report = cache.explain(
            select(flask_app.Note).order_by(flask_app.Note.id), flask_app.db.session()
        )
        assert report.cacheable and report.stored and report.fresh
        audit = cache.explain(select(flask_app.AuditEntry), flask_app.db.session())
        assert audit.reason_code == "policy"


def test_sqlmodel(postgres_url: str, cache: QueryCache) -> None:
    from sqlmodel import Session

    from examples import sqlmodel_app

    engine = sqlmodel_app.setup(postgres_url, cache)
    try:
        with Session(engine) as session:
            session.execute(delete(sqlmodel_app.Hero))
            session.commit()
        sqlmodel_app.recruit(engine, "Deadpond", "z-force")
        before = cache.stats()
        assert sqlmodel_app.heroes_of(engine, "z-force") == ["Deadpond"]
        assert sqlmodel_app.heroes_of(engine, "z-force") == ["Deadpond"]
        after = cache.stats()
        assert (after.hits - before.hits, after.misses - before.misses) == (1, 1)
        sqlmodel_app.recruit(engine, "Rusty-Man", "z-force")
        assert sqlmodel_app.heroes_of(engine, "z-force") == ["Deadpond", "Rusty-Man"]
        cache.invalidate_tags("heroes")  # the policy's tag
        assert cache.stats().by_table["example_sqlmodel_hero"].invalidations >= 2
    finally:
        engine.dispose()


def test_fastapi_sync_and_async_dependencies_middleware_and_status(
    postgres_url: str, cache: QueryCache
) -> None:
    from fastapi.testclient import TestClient

    from examples import fastapi_app

    app = fastapi_app.create_app(postgres_url, _services.postgres_async_url(), cache, "s3cret")
    engine = app.state.engines[0]
    with engine.begin() as conn:
        conn.execute(delete(fastapi_app.Item))
    with warnings.catch_warnings(), TestClient(app) as client:
        warnings.simplefilter("ignore", DeprecationWarning)
        assert client.post("/items", params={"name": "widget"}).status_code == 201
        for path in ("/items", "/items", "/async/items", "/async/items"):
            assert client.get(path).json() == ["widget"]
        items = cache.stats().by_table["example_fastapi_item"]
        assert (items.hits, items.misses) == (2, 2)  # psycopg2 and asyncpg: entries of each
        client.post("/items", params={"name": "gadget"})  # committed by the async session
        assert client.get("/items").json() == ["widget", "gadget"]  # fresh for the sync one
        assert client.get("/async/items").json() == ["widget", "gadget"]
        first, second = client.get("/api/summary"), client.get("/api/summary")
        assert first.json() == second.json() == {"items": 2}
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert client.post("/api/summary/refresh").status_code == 200
        assert client.get("/api/summary").headers["x-cache"] == "MISS"
        assert client.get("/admin/cache/status").status_code == 403
        status = client.get("/admin/cache/status", headers={"x-admin-token": "s3cret"})
        assert status.status_code == 200 and status.json()["namespace"] == cache.config.namespace
    engine.dispose()


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("flask_app", "GET /notes x3: hits 2, misses 1"),
        ("sqlmodel_app", "['Deadpond', 'Rusty-Man']"),
        ("fastapi_app", "/api/summary {'items': 1} HIT"),
    ],
)
def test_examples_run_as_scripts(
    module: str, expected: str, redis_url: str, namespace: str
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "SQLA_CACHE_NAMESPACE": namespace}
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", f"examples.{module}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
