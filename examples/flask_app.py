"""Flask-SQLAlchemy: every SELECT of ``db.session`` cached by policy, one table never.

``db.session`` is a ``scoped_session`` of Flask-SQLAlchemy's own Session class; ``attach()``
takes it as it is (it stands for the sessionmaker behind it), so models' queries, ``db.get_or_404``
and ``Model.query`` all go through the cache, and every commit invalidates what it wrote.

Run it (SQLite and Redis at ``REDIS_URL``, default localhost)::

    pip install flask flask-sqlalchemy && python -m examples.flask_app
"""

from __future__ import annotations

import os
import tempfile

from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqla_redis_cache import QueryCache, cached


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Note(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "example_flask_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


class AuditEntry(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "example_flask_audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    what: Mapped[str] = mapped_column(String(200))


def create_app(database_url: str, cache: QueryCache) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db.init_app(app)
    # every SELECT through db.session, 60 s; the audit log is read fresh every time
    cache.attach(db.session, default=cached(ttl=60), tables={"example_flask_audit": None})
    app.extensions["sqla_redis_cache"] = cache

    @app.get("/notes")
    def notes() -> object:
        rows = db.session.scalars(select(Note).order_by(Note.id)).all()
        return jsonify([{"id": n.id, "text": n.text} for n in rows])

    @app.get("/notes/<int:note_id>")
    def note(note_id: int) -> object:
        found = db.get_or_404(Note, note_id)
        return jsonify({"id": found.id, "text": found.text})

    @app.post("/notes")
    def add_note() -> object:
        payload = request.get_json()
        db.session.add(Note(text=payload["text"]))
        db.session.add(AuditEntry(what=f"added {payload['text']!r}"))
        db.session.commit()  # invalidates both tables, in every process
        return jsonify({"ok": True}), 201

    @app.get("/audit")
    def audit() -> object:
        rows = db.session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        return jsonify([a.what for a in rows])

    with app.app_context():
        db.create_all()
    return app


def main() -> None:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp()}/notes.db"
    cache = QueryCache.from_env(namespace=os.environ.get("SQLA_CACHE_NAMESPACE", "flask-example"))
    app = create_app(url, cache)
    client = app.test_client()
    client.post("/notes", json={"text": "hello"})
    for _ in range(3):
        client.get("/notes")
    stats = cache.stats()
    print(f"GET /notes x3: hits {stats.hits}, misses {stats.misses}")
    with app.app_context():
        report = cache.explain(select(Note).order_by(Note.id), db.session())
    print(report)
    cache.clear()
    cache.close()


if __name__ == "__main__":
    main()
