"""The adoption commands: ``stats --by``, ``explain`` (a safe expression over the app's models)
and ``top`` (driven in a real pseudo-terminal, its screen read with a terminal emulator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pyte
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.cli import main

from .conftest import Database
from .models import Org, User

ROOT = Path(__file__).resolve().parent.parent


def app_env(redis_url: str, database_url: str, namespace: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "SQLA_CACHE_TEST_DATABASE_URL": database_url,
        "SQLA_CACHE_NAMESPACE": namespace,
        "PYTHONPATH": str(ROOT),
    }


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqla_redis_cache.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@pytest.fixture
def env(pg: Database, redis_url: str, namespace: str) -> dict[str, str]:
    return app_env(redis_url, pg.url, namespace)


def test_explain_a_statement_from_stdin_and_from_a_file(
    pg: Database, cache: QueryCache, env: dict[str, str], tmp_path: Path
) -> None:
    app = ("explain", "--app", "tests._app_adopt:cache")
    done = cli(env, *app, "-", stdin="select(User).where(User.org_id == 1)\n")
    assert done.returncode == 0, done.stderr
    assert "cacheable : yes" in done.stdout
    assert "decided by: policy of the session (the default)" in done.stdout
    assert "tables    : app_user" in done.stdout
    assert "region    : db_query, ttl 60 s" in done.stdout
    assert "entry     : not stored" in done.stdout
    cache.attach(pg.Session)  # the same namespace: fill the entry the app would read
    with pg.Session() as s:
        s.scalars(select(User).where(User.org_id == 1).options(cached(ttl=60))).all()
    statement = tmp_path / "stmt.py"
    statement.write_text("# users of acme\nselect(User)\n  .where(User.org_id == 1)\n")
    statement.write_text("(\n" + statement.read_text() + ")\n")
    done = cli(env, *app, "--json", str(statement))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cacheable"] and report["stored"] and report["fresh"]
    assert [d["kind"] for d in report["dependencies"]] == ["namespace", "unknown rows", "value"]
    done = cli(env, *app, "-", stdin="select(Org.name).join(User.org)")
    assert "cacheable : no" in done.stdout and "table org is never cached" in done.stdout
    with pg.Session() as s:
        s.execute(update(User).where(User.id == 6).values(name="x"))
        s.commit()
    done = cli(env, *app, "--json", str(statement))
    assert json.loads(done.stdout)["fresh"] is False


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("__import__('os').system('true')", "unknown name '__import__'"),
        ("User.__class__", "private attribute"),
        ("Base.metadata.drop_all(engine)", "calling Base.metadata.drop_all is not allowed"),
        ("SessionLocal()", "calling SessionLocal is not allowed"),
        ("org_report(1)", "calling org_report is not allowed"),
        ("[x for x in User.__table__.c]", "ListComp is not allowed"),
        ("(lambda: 1)()", "Lambda is not allowed"),
        ("select(User).where(User.id == 1 and User.id == 2)", "use and_() / or_()"),
        ("select(User", "not one Python expression"),
        ("User", "not a statement"),
        ("", "empty"),
    ],
)
def test_explain_refuses_what_is_not_a_statement(
    env: dict[str, str], source: str, message: str
) -> None:
    done = cli(env, "explain", "--app", "tests._app_adopt:cache", "-", stdin=source)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_explain_evaluates_sqlalchemy_constructs_and_unsafe_eval_on_request(
    env: dict[str, str],
) -> None:
    source = (
        "select(User.org_id, func.count()).where(and_(User.id > 1, User.name.in_(['user2'])))"
        ".where(User.created_at >= datetime(2024, 1, 1)).group_by(User.org_id)"
        ".options(cached(region='db_aggregate', tags=['report']))"
    )
    done = cli(env, "explain", "--app", "tests._app_adopt:cache", "-", stdin=source)
    assert done.returncode == 0, done.stderr
    assert "decided by: cached() option" in done.stdout and "tags      : report" in done.stdout
    done = cli(
        env,
        "explain",
        "--app",
        "tests._app_adopt:cache",
        "--unsafe-eval",
        "-",
        stdin="org_report(2)",
    )
    assert done.returncode == 0, done.stderr
    assert "cacheable : yes" in done.stdout


def _fill(pg: Database, cache: QueryCache) -> None:
    cache.attach(pg.Session, default=cached())
    for _ in range(3):
        with pg.Session() as s:
            s.scalars(select(User).where(User.org_id == 1)).all()
            s.scalars(select(Org)).all()
    cache.invalidate_tables("org")
    with pg.Session() as s:
        s.scalars(select(Org)).all()


def test_stats_by_table_and_region(
    pg: Database, cache: QueryCache, redis_url: str, namespace: str
) -> None:
    _fill(pg, cache)
    cache.flush_stats()
    base = ("stats", "--redis-url", redis_url, "--namespace", namespace)
    result = CliRunner().invoke(main, [*base, "--by", "table"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("by table:") and "invalidations" in lines[1]
    users = next(line.split() for line in lines if line.strip().startswith("app_user"))
    org = next(line.split() for line in lines if line.strip().startswith("org "))
    assert users[1:5] == ["3", "66.7%", "2", "1"]  # lookups, hit rate, hits, misses
    assert org[1:5] == ["4", "50.0%", "2", "2"] and org[6] == "1"  # one invalidation
    result = CliRunner().invoke(main, [*base, "--by", "region", "--json"])
    assert json.loads(result.output)["db_query"]["lookups"] == 7
    with pg.Session() as s:
        s.scalars(select(User).with_for_update()).all()
    cache.flush_stats()
    result = CliRunner().invoke(main, list(base))
    assert "uncacheable by reason: locking_read 1" in result.output


def test_top_names_the_extra_when_rich_is_missing(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    result = CliRunner().invoke(main, ["top", "--redis-url", redis_url, "--namespace", namespace])
    assert result.exit_code == 1
    assert "pip install 'sqla-redis-cache[cli]'" in result.output


class Terminal:
    """A command in a pseudo-terminal, its output fed to a VT100 emulator."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 40, cols: int = 150):
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(rows, cols), timeout=30)

    def pump(self) -> None:
        try:
            while True:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.1))
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, check: Callable[[str], bool], seconds: float = 20.0) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump()
            if check(self.text()):
                return self.text()
            if not self.child.isalive():
                break
        raise AssertionError(f"screen never matched; it shows:\n{self.text()}")


def test_top_in_a_pseudo_terminal(
    pg: Database, cache: QueryCache, redis_url: str, namespace: str
) -> None:
    _fill(pg, cache)
    cache.flush_stats()
    argv = [sys.executable, "-m", "sqla_redis_cache.cli", "top", "--interval", "0.3"]
    argv += ["--redis-url", redis_url, "--namespace", namespace]
    term = Terminal(argv, {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"})
    try:
        first = term.wait_for(lambda t: "most misses" in t and "app_user" in t)
        assert f"namespace {namespace}" in first
        assert "hit rate  57.14% overall" in first  # 4 hits of 7 lookups
        for _ in range(5):  # new misses on org only: it tops the list
            cache.invalidate_tables("org")
            with pg.Session() as s:
                s.scalars(select(Org)).all()
            cache.flush_stats()
            time.sleep(0.1)

        def org_leads(text: str) -> bool:
            lines = text.splitlines()
            start = next((i for i, line in enumerate(lines) if "most misses" in line), None)
            if start is None:
                return False
            rows = [line.split() for line in lines[start + 1 :]]
            data = [r for r in rows if len(r) > 2 and r[0] == "│"]  # body rows, not headings
            return bool(data) and data[0][1] == "org" and data[0][5] == "7"  # its misses

        screen = term.wait_for(org_leads)
        assert "most invalidations" in screen and "ops/s" in screen
        term.child.sendintr()  # Ctrl-C
        term.child.expect(pexpect.EOF, timeout=15)
        term.child.close()
        assert term.child.exitstatus == 0
    finally:
        if term.child.isalive():
            term.child.terminate(force=True)
