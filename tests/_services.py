"""Resolve the Redis and PostgreSQL services the test suite talks to.

Plain functions only (no pytest fixtures): ``conftest.py`` decides how to expose them.

Resolution order, for Redis (``redis_url()``) and PostgreSQL (``postgres_url()``):

1. the environment variable ``SQLA_CACHE_TEST_REDIS_URL`` / ``SQLA_CACHE_TEST_DATABASE_URL``
   (used as given, not probed);
2. the local service (``redis://127.0.0.1:6379/0`` / ``postgresql+psycopg2://postgres@
   127.0.0.1:5432/test``) if it answers a real protocol round trip quickly;
3. a testcontainers container, if a Docker engine answers (started once per process,
   stopped at interpreter exit);
4. otherwise :class:`ServiceUnavailable` (a ``RuntimeError``) explaining how to provide one.

Results, including failures, are memoized for the life of the process.

The module also starts throwaway ``redis-server`` processes for fault-injection, eviction
and cluster tests: :func:`free_port`, :func:`start_redis_server`, :func:`stop`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

__all__ = [
    "DATABASE_URL_ENV",
    "LOCAL_POSTGRES_URL",
    "LOCAL_REDIS_URL",
    "REDIS_URL_ENV",
    "ServiceUnavailable",
    "docker_available",
    "free_port",
    "postgres_async_url",
    "postgres_url",
    "redis_url",
    "start_redis_server",
    "stop",
]

REDIS_URL_ENV = "SQLA_CACHE_TEST_REDIS_URL"
DATABASE_URL_ENV = "SQLA_CACHE_TEST_DATABASE_URL"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"

REDIS_IMAGE = "redis:7-alpine"
POSTGRES_IMAGE = "postgres:16-alpine"

_PROBE_TIMEOUT = 0.5


class ServiceUnavailable(RuntimeError):
    """No usable Redis / PostgreSQL could be found for the tests."""


# --------------------------------------------------------------------------- memoization

_lock = threading.Lock()
_resolved: dict[str, str | ServiceUnavailable] = {}


def _memoized(name: str, resolve: Callable[[], str]) -> str:
    with _lock:
        if name not in _resolved:
            try:
                _resolved[name] = resolve()
            except ServiceUnavailable as exc:
                _resolved[name] = exc
        result = _resolved[name]
    if isinstance(result, ServiceUnavailable):
        raise result
    return result


# --------------------------------------------------------------------------- probes


def _tcp_open(host: str, port: int, timeout: float = _PROBE_TIMEOUT) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _redis_answers(host: str, port: int, timeout: float = _PROBE_TIMEOUT, **kw: Any) -> str:
    """Return "" if ``PING`` is answered within *timeout*, else the reason it was not."""
    if not _tcp_open(host, port, timeout):
        return f"nothing listening on {host}:{port}"
    import redis

    client = redis.Redis(
        host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout, **kw
    )
    try:
        return "" if client.ping() else "PING returned a falsy reply"
    except redis.RedisError as exc:
        return f"PING failed: {exc!r}"
    finally:
        client.close()


def _postgres_answers(url: str) -> str:
    """Return "" if *url* accepts a psycopg2 connection and ``SELECT 1``, else the reason."""
    u = make_url(url)
    host, port = u.host or "127.0.0.1", u.port or 5432
    if not _tcp_open(host, port):
        return f"nothing listening on {host}:{port}"
    import psycopg2

    try:
        conn = psycopg2.connect(
            host=host,
            port=port,
            user=u.username,
            password=u.password,
            dbname=u.database,
            connect_timeout=3,
        )
    except psycopg2.Error as exc:
        return f"connect failed: {str(exc).strip()}"
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            row = cur.fetchone()
        return "" if row == (1,) else f"SELECT 1 returned {row!r}"
    except psycopg2.Error as exc:
        return f"SELECT 1 failed: {str(exc).strip()}"
    finally:
        conn.close()


def docker_available() -> bool:
    """True if a Docker engine answers (not just that a ``docker`` client is installed)."""
    try:
        import docker  # type: ignore[import-untyped,import-not-found,unused-ignore]

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


# --------------------------------------------------------------------------- containers

_containers: list[Any] = []


def _stop_containers() -> None:
    while _containers:
        container = _containers.pop()
        with contextlib.suppress(Exception):
            container.stop()


atexit.register(_stop_containers)


def _start_container(container: Any) -> Any:
    container.start()
    _containers.append(container)
    return container


def _redis_container_url() -> str:
    try:
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # testcontainers < 4.14
        from testcontainers.redis import RedisContainer

    container = _start_container(RedisContainer(REDIS_IMAGE))
    host = container.get_container_host_ip()
    return f"redis://{host}:{container.get_exposed_port(6379)}/0"


def _postgres_container_url() -> str:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.14
        from testcontainers.postgres import PostgresContainer

    container = _start_container(
        PostgresContainer(
            POSTGRES_IMAGE,
            username="postgres",
            password="postgres",
            dbname="test",
            driver="psycopg2",
        )
    )
    return str(container.get_connection_url())


# --------------------------------------------------------------------------- public API


def _resolve_redis() -> str:
    env = os.environ.get(REDIS_URL_ENV)
    if env:
        return env
    reason = _redis_answers("127.0.0.1", 6379)
    if not reason:
        return LOCAL_REDIS_URL
    if docker_available():
        return _redis_container_url()
    raise ServiceUnavailable(
        "No Redis server for the tests.\n"
        f"  - {LOCAL_REDIS_URL}: {reason}\n"
        "  - testcontainers: no Docker engine answers\n"
        "Provide one of:\n"
        f"  * export {REDIS_URL_ENV}=redis://HOST:PORT/DB\n"
        "  * start a local server: redis-server --daemonize yes --bind 127.0.0.1 "
        '--port 6379 --save "" --appendonly no   (or: scripts/services.sh up)\n'
        "  * a working Docker engine (testcontainers will start one)"
    )


def _resolve_postgres() -> str:
    env = os.environ.get(DATABASE_URL_ENV)
    if env:
        return _as_driver(env, "psycopg2")
    reason = _postgres_answers(LOCAL_POSTGRES_URL)
    if not reason:
        return LOCAL_POSTGRES_URL
    if docker_available():
        return _postgres_container_url()
    raise ServiceUnavailable(
        "No PostgreSQL server for the tests.\n"
        f"  - {LOCAL_POSTGRES_URL}: {reason}\n"
        "  - testcontainers: no Docker engine answers\n"
        "Provide one of:\n"
        f"  * export {DATABASE_URL_ENV}=postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB\n"
        "  * start the local cluster and create the database: scripts/services.sh up\n"
        "  * a working Docker engine (testcontainers will start one)"
    )


def _as_driver(url: str, driver: str) -> str:
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        raise ServiceUnavailable(f"{DATABASE_URL_ENV} must be a postgresql URL, got {u!r}")
    return u.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def redis_url() -> str:
    """URL of the Redis server to test against (see module docstring for the order)."""
    return _memoized("redis", _resolve_redis)


def postgres_url() -> str:
    """Sync SQLAlchemy URL (``postgresql+psycopg2://...``) of the test database."""
    return _memoized("postgres", _resolve_postgres)


def postgres_async_url() -> str:
    """Same database as :func:`postgres_url`, with the asyncpg driver.

    Only the driver name changes; psycopg2-only query options (``sslmode``...) are not
    translated.
    """
    return _as_driver(postgres_url(), "asyncpg")


# --------------------------------------------------------------------------- throwaway redis


def free_port(*, cluster_bus: bool = False) -> int:
    """A TCP port on 127.0.0.1 that is free right now (racy by nature, as always).

    With ``cluster_bus=True`` the port is chosen in 20000-55535 so that ``port + 10000``
    (the Redis Cluster bus port) is valid and free too.
    """
    if not cluster_bus:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = random.randint(20000, 55535)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("could not find a free port pair (port, port + 10000)")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_servers: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}


def start_redis_server(
    port: int, *extra_args: str, wait: bool = True, timeout: float = 5.0
) -> subprocess.Popen[bytes]:
    """Start a throwaway ``redis-server`` on 127.0.0.1:*port* (no persistence).

    It runs in its own temporary directory (so cluster ``nodes.conf`` files land there);
    *extra_args* are appended after the defaults and therefore override them, e.g.
    ``start_redis_server(p, "--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru")``.
    Unless ``wait=False`` (e.g. a TLS-only server), it returns once the server answers
    ``PING``, or raises ``RuntimeError`` with the server log after *timeout* seconds.
    Always pair with :func:`stop` (leftovers are also stopped at interpreter exit).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not on PATH; install Redis (e.g. apt-get install redis-server) "
            "to run the tests that start their own Redis servers"
        )
    workdir = Path(tempfile.mkdtemp(prefix=f"sqla-redis-cache-redis-{port}-"))
    log_path = workdir / "redis.log"
    args = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(workdir),
        *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    _servers[proc.pid] = (proc, workdir)
    if not wait:
        return proc

    deadline = time.monotonic() + timeout
    reason = "not started"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = f"exited with code {proc.returncode}"
            break
        reason = _redis_answers("127.0.0.1", port, timeout=0.25)
        if not reason:
            return proc
        time.sleep(0.05)
    log_tail = _tail(log_path)
    stop(proc)
    raise RuntimeError(
        f"redis-server on 127.0.0.1:{port} did not answer PING within {timeout:g}s "
        f"({reason}).\ncommand: {' '.join(args)}\nlog:\n{log_tail}"
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop a server from :func:`start_redis_server` (SIGTERM, then SIGKILL); idempotent."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    entry = _servers.pop(proc.pid, None)
    if entry is not None:
        shutil.rmtree(entry[1], ignore_errors=True)


def _stop_servers() -> None:
    for proc, _ in list(_servers.values()):
        with contextlib.suppress(Exception):
            stop(proc)


atexit.register(_stop_servers)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
