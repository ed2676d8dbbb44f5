"""The ``sqla-redis-cache`` command line.

Each command is a thin shell over the public API; errors that a user can fix (a bad URL, an
unreachable server, a wrong ``--app``) are printed as one line with a non-zero exit code, never
a traceback. The operator commands (``status``, ``clear``, ``stats``, ``reset-stats``, ``warm``,
``top``, ``explain``, ``capture``) find the cache the same way: ``--app module:attribute`` names the
application's own :class:`~sqla_redis_cache.QueryCache` (needed by ``warm``, whose callables the
application registers), else ``--redis-url``/``--namespace``, else the environment variables of
``QueryCache.from_env`` (``REDIS_URL`` or ``REDIS_HOST``/``PORT``/...,
``SQLA_CACHE_NAMESPACE``)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from ._capture_cli import capture
from ._cli_common import emit_json, load_app, operator_command
from ._errors import ConfigurationError


@click.group()
@click.version_option(package_name="sqla-redis-cache")
def main() -> None:
    """A Redis-backed query cache for SQLAlchemy 2.x."""


@main.command()
@click.option("--database-url", default=None, help="SQLAlchemy URL (default: a temporary SQLite).")
@click.option("--redis-url", envvar="REDIS_URL", default=None, help="Redis URL (env REDIS_URL).")
@click.option("--rows", default=20000, show_default=True, help="Products to create.")
def demo(database_url: str | None, redis_url: str | None, rows: int) -> None:
    """Run a report query cold, then warm, and show hits, misses and the speed-up."""
    from ._demo import run_demo

    try:
        result = run_demo(database_url, redis_url, click.echo, rows=rows)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"cache backend      : {result.backend}")
    click.echo(f"cold (database)    : {result.cold_ms:8.2f} ms, {result.statements_cold} SQL")
    click.echo(
        f"warm (cache)       : {result.warm_ms:8.2f} ms, {result.statements_warm} SQL (median)"
    )
    click.echo(f"speed-up           : {result.speedup:8.1f}x")
    click.echo(f"hits / misses      : {result.hits} / {result.misses}")
    click.echo(f"fresh after commit : {'yes' if result.fresh_after_commit else 'NO'}")


@main.command()
@click.option(
    "--database-url",
    default="postgresql+psycopg2://postgres@127.0.0.1/test",
    show_default=True,
    help="The database (the benchmark creates its own table of --rows rows).",
)
@click.option("--redis-url", envvar="REDIS_URL", default="redis://127.0.0.1:6379/0")
@click.option("--rounds", default=30, show_default=True)
@click.option("--block", default=10, show_default=True, help="Executions timed per round.")
@click.option("--rows", default=200_000, show_default=True)
@click.option(
    "--no-near-cache", is_flag=True, help="Decode every hit (no decoded results kept in process)."
)
@click.option(
    "--added-latency-ms",
    default=0.0,
    show_default=True,
    help="Round-trip delay added to Redis by a local proxy the benchmark starts.",
)
@click.option("--async", "use_async", is_flag=True, help="AsyncSession (asyncpg), with throughput.")
@click.option("--concurrency", default=100, show_default=True, help="Coroutines (--async).")
@click.option("--seconds", default=3.0, show_default=True, help="Throughput run (--async).")
@click.option(
    "--workload",
    type=click.Choice(["queries", "capture", "tenants"]),
    default="queries",
    show_default=True,
    help="capture: change-capture lag (idle, 200 commits/s) and trigger cost per UPDATE; "
    "tenants: hit rates of fine-grained and table-level invalidation next to the ideal "
    "under a multi-tenant read/write mix (benchmarks/tenants.py).",
)
@click.option(
    "--operations", default=4000, show_default=True, help="Operations per write ratio (tenants)."
)
def bench(
    database_url: str,
    redis_url: str,
    rounds: int,
    block: int,
    rows: int,
    no_near_cache: bool,
    added_latency_ms: float,
    use_async: bool,
    concurrency: int,
    seconds: float,
    workload: str,
    operations: int,
) -> None:
    """Side-by-side benchmark: uncached, the plain SQLAlchemy recipe, this library.

    The benchmarks live in the source checkout (benchmarks/), not in the installed package.
    """
    if workload == "capture":
        report = _benchmarks("capture").run(database_url, redis_url)
    elif workload == "tenants":
        report = _benchmarks("tenants").run(database_url, redis_url, operations)
    elif use_async:
        import asyncio

        run_async = _benchmarks("bench_async").run_async
        report = asyncio.run(
            run_async(database_url, redis_url, rounds, rows, block, concurrency, seconds)
        )
    else:
        run = _benchmarks("bench").run
        report = run(
            database_url,
            redis_url,
            rounds,
            rows,
            block,
            near_cache=not no_near_cache,
            added_latency_ms=added_latency_ms,
        )
    click.echo(json.dumps(report, indent=2))  # in the order measured


def _checkout() -> Path:
    """The directory holding the package: a source checkout has benchmarks/ there."""
    return Path(__file__).resolve().parent.parent


def _benchmarks(name: str) -> Any:
    """``benchmarks/<name>.py`` of the source checkout this package runs from."""
    root = _checkout()
    if not (root / "benchmarks" / f"{name}.py").is_file():
        raise click.ClickException(
            "the benchmarks are not installed with the package: run this command from a "
            f"source checkout (a clone of the repository, installed with pip install -e .); "
            f"no benchmarks/ directory next to {Path(__file__).resolve().parent}"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"benchmarks.{name}")


# operator commands ---------------------------------------------------------------------------


def _reasons_line(stats: dict[str, Any]) -> None:
    reasons = stats.get("uncacheable_by_reason") or {}
    if reasons:
        ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        click.echo("  uncacheable by reason: " + ", ".join(f"{k} {v}" for k, v in ranked))


def _stats_lines(stats: dict[str, Any]) -> None:
    click.echo(
        f"  hit rate {stats['hit_rate'] * 100:6.2f}%   hits {stats['hits']}   "
        f"misses {stats['misses']}   errors {stats['errors']}"
    )
    click.echo(
        f"  bypasses {stats['bypasses']}   uncacheable {stats['uncacheable']}   "
        f"corrupt {stats['corrupt']}   invalidations {stats['invalidations']}   "
        f"lock waits {stats['lock_waits']}"
    )
    click.echo(
        f"  hit latency ms p50 {stats['latency_p50_ms']:g}   p95 {stats['latency_p95_ms']:g}   "
        f"p99 {stats['latency_p99_ms']:g}"
    )
    _reasons_line(stats)


@main.command()
@operator_command
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(cache: Any, as_json: bool) -> None:
    """Connection, server, memory and entries of the namespace, hit rate and errors."""
    from ._operator import status as status_report

    report = status_report(cache)
    if as_json:
        emit_json(report)
        return
    server = report.get("server") or {}
    click.echo(
        f"redis      : {report['redis_url']} ({'connected' if report['connected'] else 'DOWN'})"
    )
    click.echo(
        f"server     : {server.get('version')} {server.get('mode') or ''}, "
        f"role {server.get('role')}"
    )
    click.echo(f"namespace  : {report['namespace']}")
    capture = report.get("capture")
    if capture and capture["tables"]:
        alive = capture["listener_alive"]
        click.echo(
            f"capture    : {len(capture['tables'])} table name(s), listener "
            + ("alive" if alive else "NOT ALIVE: reads of them bypass the cache")
        )
    click.echo(f"memory     : {report.get('memory_bytes', 0)} bytes in this namespace")
    entries = report.get("entries") or {}
    click.echo("entries    : " + ", ".join(f"{k} {v}" for k, v in entries.items()))
    if report["shared_stats"] is not None:
        click.echo("stats (all processes):")
        _stats_lines(report["shared_stats"])


@main.command()
@operator_command
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--by",
    type=click.Choice(["table", "region"]),
    default=None,
    help="Hits, misses, bypasses, invalidations and bytes per table or per region.",
)
def stats(cache: Any, as_json: bool, by: str | None) -> None:
    """Hits, misses, errors and latency of every process sharing the namespace."""
    shared = cache.shared_stats()
    if shared is None:
        raise click.ClickException("could not read the shared statistics from Redis")
    if by is not None:
        groups = shared.breakdown(by)
        if as_json:
            emit_json({name: figures.as_dict() for name, figures in groups.items()})
            return
        from ._operator import breakdown_lines

        for line in breakdown_lines(cache.config.namespace, by, groups):
            click.echo(line)
        return
    if as_json:
        emit_json(shared.as_dict())
        return
    click.echo(f"namespace {cache.config.namespace} (all processes):")
    _stats_lines(shared.as_dict())


@main.command()
@operator_command
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--limit", default=10, show_default=True, help="Tables shown per list.")
@click.option("--iterations", type=int, default=None, help="Stop after N frames.")
def top(cache: Any, interval: float, limit: int, iterations: int | None) -> None:
    """Live view: hit rate, operations per second, tables with most misses and invalidations."""
    from ._top import MISSING_RICH, run

    try:
        import rich  # noqa: F401
    except ImportError:
        raise click.ClickException(MISSING_RICH) from None
    if interval <= 0:
        raise click.BadParameter("must be > 0", param_hint="--interval")
    run(
        cache.shared_stats,
        cache.config.namespace,
        interval=interval,
        iterations=iterations,
        limit=limit,
    )


@main.command()
@click.option("--app", "app", envvar="SQLA_CACHE_APP", required=True, help="'module:attr'.")
@click.option(
    "--models",
    multiple=True,
    help="Module(s) whose names the statement uses (default: the --app module).",
)
@click.option("--session", "session_spec", default=None, help="'module:attr' factory to use.")
@click.option("--unsafe-eval", is_flag=True, help="Evaluate the file as plain Python.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("statement", type=click.File("r"), default="-")
def explain(
    app: str,
    models: tuple[str, ...],
    session_spec: str | None,
    unsafe_eval: bool,
    as_json: bool,
    statement: Any,
) -> None:
    """Would STATEMENT be cached, and if not why; its key, tables, tags and entry.

    STATEMENT is a file (or - for stdin) holding one Python expression over the application's
    models, e.g. select(User).where(User.org_id == 1).  Only SQLAlchemy constructs and the
    methods of statements and columns may be called (--unsafe-eval lifts that, for files you
    trust).  The statement never runs against the database.
    """
    from ._explain_cli import ExplainError, explain_source, load
    from ._expression import UnsafeExpression

    cache = load_app(app)
    module_names = models or (app.partition(":")[0],)
    try:
        modules = [load(name) for name in module_names]
        report = explain_source(
            cache, statement.read(), models=modules, session=session_spec, unsafe=unsafe_eval
        )
    except (UnsafeExpression, ExplainError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(str(report))


@main.command("reset-stats")
@operator_command
def reset_stats(cache: Any) -> None:
    """Zero the shared statistics of the namespace."""
    cache.reset_stats(shared=True)
    click.echo(f"statistics of namespace {cache.config.namespace} reset")


@main.command()
@operator_command
@click.option("--all", "everything", is_flag=True, help="Everything in the namespace.")
@click.option("--queries", is_flag=True, help="Cached query results.")
@click.option("--entities", is_flag=True, help="Cached entities.")
@click.option("--table", "tables", multiple=True, help="Results that read table T (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Entries tagged T (repeatable).")
@click.option("--pattern", "patterns", multiple=True, help="Generic keys matching glob P.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def clear(
    cache: Any,
    everything: bool,
    queries: bool,
    entities: bool,
    tables: tuple[str, ...],
    tags: tuple[str, ...],
    patterns: tuple[str, ...],
    yes: bool,
) -> None:
    """Invalidate or delete cached entries (asks first unless --yes)."""
    from ._operator import clear as clear_entries

    if not (everything or queries or entities or tables or tags or patterns):
        raise click.UsageError(
            "say what to clear: --all, --queries, --entities, --table, --tag or --pattern"
        )
    what = (
        "EVERYTHING"
        if everything
        else ", ".join(
            [*(["queries"] if queries else []), *(["entities"] if entities else [])]
            + [f"table {t}" for t in tables]
            + [f"tag {t}" for t in tags]
            + [f"pattern {p}" for p in patterns]
        )
    )
    if not yes:
        click.confirm(f"Clear {what} in namespace {cache.config.namespace}?", abort=True)
    try:
        done = clear_entries(
            cache,
            everything=everything,
            queries=queries,
            entities=entities,
            tables=tables,
            tags=tags,
            patterns=patterns,
        )
    except (TypeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for name, count in done.items():
        if count < 0:
            raise click.ClickException(f"clearing {name} failed: Redis became unavailable")
        click.echo(f"cleared {name}: {count}")


@main.command()
@operator_command
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def warm(cache: Any, as_json: bool) -> None:
    """Run the warm-up callables the application registered (needs --app)."""
    report = cache.warm()
    if not report:
        raise click.ClickException(
            "no warm-up callables registered: pass --app module:cache (the application's "
            "QueryCache, with cache.register_warmup(...) done at import)"
        )
    if as_json:
        emit_json(report)
    else:
        for name, outcome in report.items():
            detail = outcome.get("error") if not outcome["ok"] else outcome.get("result")
            mark = "ok  " if outcome["ok"] else "FAIL"
            click.echo(f"{mark} {name} {'' if detail is None else detail}".rstrip())
    if not all(o["ok"] for o in report.values()):
        raise SystemExit(1)


main.add_command(capture)

if __name__ == "__main__":
    main()
