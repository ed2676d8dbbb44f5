"""The ``sqla-redis-cache`` command line.

Each command is a thin shell over the public API; errors that a user can fix (a bad URL, an
unreachable server) are printed as one line with a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import click

from ._config import ConfigurationError


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
@click.option("--database-url", default="postgresql+psycopg2://postgres@127.0.0.1/test")
@click.option("--redis-url", envvar="REDIS_URL", default="redis://127.0.0.1:6379/0")
@click.option("--rounds", default=30, show_default=True)
@click.option("--block", default=10, show_default=True)
@click.option("--rows", default=200_000, show_default=True)
def bench(database_url: str, redis_url: str, rounds: int, block: int, rows: int) -> None:
    """Side-by-side benchmark: uncached, the plain SQLAlchemy recipe, this library."""
    from .bench import main as bench_main

    bench_main(
        [
            f"--database-url={database_url}",
            f"--redis-url={redis_url}",
            f"--rounds={rounds}",
            f"--block={block}",
            f"--rows={rows}",
        ]
    )


if __name__ == "__main__":
    main()
