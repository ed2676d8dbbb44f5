"""The operator CLI against a real Redis (and PostgreSQL where data is involved)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.cli import main

from .conftest import Database
from .models import User


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def fill(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    with db.Session() as s:
        s.scalars(select(User).where(User.org_id == 1).options(cached())).all()
        s.scalars(select(User).where(User.org_id == 2).options(cached(tags=["org:2"]))).all()
    cache.set("user:1", {"name": "a"})
    cache.set("other", 1)


def test_status_json_counts_entries_by_kind(
    pg: Database, cache: QueryCache, redis_url: str, namespace: str
) -> None:
    fill(pg, cache)
    cache.flush_stats()
    code, out = run("status", "--json", "--redis-url", redis_url, "--namespace", namespace)
    assert code == 0, out
    report = json.loads(out)
    assert report["connected"] is True
    assert report["server"]["version"]
    assert report["server"]["role"] == "master"
    assert report["entries"]["queries"] == 2
    assert report["entries"]["generic"] == 2
    assert report["entries"]["tokens"] >= 3  # all, app_user, org:2
    assert report["memory_bytes"] > 0
    assert report["shared_stats"]["misses"] == 2
    code, out = run("status", "--redis-url", redis_url, "--namespace", namespace)
    assert code == 0 and "queries 2" in out and "hit rate" in out


def test_clear_table_makes_cached_results_miss(
    pg: Database, cache: QueryCache, redis_url: str, namespace: str
) -> None:
    fill(pg, cache)
    stmt = select(User).where(User.org_id == 1).options(cached())
    opts = ("--redis-url", redis_url, "--namespace", namespace)
    code, out = run("clear", "--table", "app_user", *opts, "--yes")
    assert code == 0, out
    with pg.counter.expect(1), pg.Session() as s:
        s.scalars(stmt).all()
    with pg.counter.expect(0), pg.Session() as s:
        s.scalars(stmt).all()


def test_clear_tag_queries_and_pattern(cache: QueryCache, pg: Database, redis_url: str) -> None:
    fill(pg, cache)
    ns = cache.config.namespace
    opts = ("--redis-url", redis_url, "--namespace", ns, "-y")
    client = redis.Redis.from_url(redis_url)
    assert run("clear", "--pattern", "user:*", *opts)[0] == 0
    assert cache.get("user:1") is None and cache.get("other") == 1
    code, out = run("clear", "--queries", *opts)
    assert code == 0 and "cleared queries: 2" in out
    assert not list(client.scan_iter(match=f"{ns}:q:*"))
    cache.set("tagged", 1, tags=["t"])
    assert run("clear", "--tag", "t", *opts)[0] == 0
    assert cache.get("tagged") is None and cache.get("other") == 1
    assert run("clear", "--all", *opts)[0] == 0
    assert cache.get("other") is None
    client.close()


def test_clear_asks_first_and_needs_a_target(cache: QueryCache, redis_url: str) -> None:
    cache.set("keep", 1)
    opts = ("--redis-url", redis_url, "--namespace", cache.config.namespace)
    code, out = run("clear", "--all", *opts, input="n\n")
    assert code != 0 and "Aborted" in out
    assert cache.get("keep") == 1
    code, out = run("clear", *opts)
    assert code != 0 and "say what to clear" in out
    code, _ = run("clear", "--all", *opts, input="y\n")
    assert code == 0 and cache.get("keep") is None


def test_stats_and_reset_stats_aggregate_processes(redis_url: str, namespace: str) -> None:
    a = QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0)
    b = QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0)
    try:
        a.set("k", 1)
        a.get("k")
        b.get("k")
        b.get("nope")
        a.flush_stats()
        b.flush_stats()
        opts = ("--redis-url", redis_url, "--namespace", namespace)
        code, out = run("stats", "--json", *opts)
        assert code == 0, out
        data = json.loads(out)
        assert (data["hits"], data["misses"], data["hit_rate"]) == (2, 1, pytest.approx(2 / 3))
        assert run("reset-stats", *opts)[0] == 0
        assert json.loads(run("stats", "--json", *opts)[1])["lookups"] == 0
    finally:
        a.clear()
        a.close()
        b.close()


def test_env_vars_are_honoured(
    cache: QueryCache, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.set("k", 1)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("SQLA_CACHE_NAMESPACE", cache.config.namespace)
    code, out = run("status", "--json")
    assert code == 0 and json.loads(out)["entries"]["generic"] == 1


def test_warm_runs_the_apps_callables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, namespace: str
) -> None:
    (tmp_path / "warm_app.py").write_text(
        textwrap.dedent(
            f"""
            from sqla_redis_cache import QueryCache

            cache = QueryCache.from_url({redis_url!r}, namespace={namespace!r})

            @cache.register_warmup
            def products():
                cache.set("hot", [1, 2, 3])
                return 3

            @cache.register_warmup(name="async one")
            async def prices():
                cache.set("prices", 1)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out = run("warm", "--app", "warm_app:cache", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["warm_app.products"] == {"ok": True, "result": 3}
    assert report["async one"]["ok"] is True
    import warm_app

    assert warm_app.cache.get("hot") == [1, 2, 3] and warm_app.cache.get("prices") == 1

    @warm_app.cache.register_warmup(name="broken")
    def broken() -> None:
        raise RuntimeError("database down")

    code, out = run("warm", "--app", "warm_app:cache")
    assert code == 1
    assert "FAIL broken RuntimeError: database down" in out and "ok   warm_app.products 3" in out
    warm_app.cache.clear()
    warm_app.cache.close()


def test_warm_without_app_and_bad_app_fail_clearly(redis_url: str, namespace: str) -> None:
    code, out = run("warm", "--redis-url", redis_url, "--namespace", namespace)
    assert code == 1 and "no warm-up callables registered" in out
    code, out = run("warm", "--app", "no_such_module_xyz:cache")
    assert code == 1 and "cannot load --app" in out
    code, out = run("status", "--app", "json:dumps")
    assert code == 1 and "not a QueryCache" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis-url", "redis://127.0.0.1:1/0"], "cannot reach Redis at redis://127.0.0.1:1/0"),
        (["--redis-url", "http://user:secret@x"], "unsupported Redis URL"),
        (["--namespace", "bad namespace!"], "namespace 'bad namespace!'"),
    ],
)
def test_bad_input_is_one_line_exit_1_no_traceback(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sqla_redis_cache.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "secret" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_bench_runs_from_the_source_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The benchmarks are not in the wheel: the command finds benchmarks/ next to the package,
    and says so clearly when it is not there (an installed package)."""
    from sqla_redis_cache import cli

    bench = cli._benchmarks("bench")
    assert callable(bench.run) and callable(cli._benchmarks("bench_async").run_async)
    code, output = run("bench", "--help")
    assert code == 0 and "--async" in output and "--no-near-cache" in output
    monkeypatch.setattr(cli, "_checkout", lambda: tmp_path)
    code, output = run_catching("bench", "--rounds", "1")
    assert code == 1 and "run this command from a source checkout" in output


def run_catching(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output
