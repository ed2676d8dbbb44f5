"""TLS with certificates made by the test, and a restricted ACL user.

The server has a TLS port (client certificates optional) and a plain port the test administers
it through.  The contract runs over TLS, with a client certificate, as an ACL user limited to
the test namespaces' key pattern (``~t*``) with the rules docs/deployment.md recommends, so
every feature is shown to work under those rules.  Then: what a wrong CA, a missing client
certificate, a wrong password (startup) and a revoked password or a foreign key pattern
(runtime) do.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from sqla_redis_cache import ConfigurationError, QueryCache, cached

from ._deployments import (
    TLS_PASSWORD,
    TLS_USER,
    Certs,
    TlsServer,
    add_cache_user,
    admin,
    start_tls_server,
    tls_settings,
)
from .conftest import Database, RedisTarget
from .models import User

pytestmark = [pytest.mark.cluster, pytest.mark.deployments("tls")]


def test_cache_connects_over_tls_as_the_acl_user(cache: QueryCache, tls_server: TlsServer) -> None:
    assert cache.set("probe", 1)
    clients = admin(tls_server.plain_port).client_list()
    ours = [c for c in clients if c.get("user") == TLS_USER]
    assert ours, clients
    assert all(c["laddr"].endswith(f":{tls_server.tls_port}") for c in ours)


def test_unknown_ca_is_a_startup_error(tls_server: TlsServer, certs: Certs) -> None:
    with pytest.raises(ConfigurationError, match="TLS handshake refused"):
        QueryCache.from_url(
            f"rediss://127.0.0.1:{tls_server.tls_port}/0",
            namespace="tca",
            **tls_settings(
                certs, tls_ca_certs=certs.other_ca, username=TLS_USER, password=TLS_PASSWORD
            ),
        )


def test_client_certificate_required(certs: Certs) -> None:
    """TLS 1.2, where a missing client certificate fails the handshake itself (under TLS 1.3
    the server refuses after it, and the client may only see the connection closing: then it is
    an outage to the cache, a counted fail-open; see docs/deployment.md)."""
    server = start_tls_server(certs, "yes", "--tls-protocols", "TLSv1.2")
    url = f"rediss://127.0.0.1:{server.tls_port}/0"
    try:
        with pytest.raises(ConfigurationError, match="TLS handshake refused"):
            QueryCache.from_url(url, namespace="tcert", tls_ca_certs=certs.ca)
        qc = QueryCache.from_url(url, namespace="tcert", **tls_settings(certs))
        try:
            assert qc.set("k", "v") and qc.get("k") == "v"
            assert qc.stats().errors == 0
        finally:
            qc.close()
    finally:
        server.close()


def test_wrong_password_is_a_clear_startup_error(redis_target: RedisTarget) -> None:
    with pytest.raises(ConfigurationError) as info:
        redis_target.cache("tpw", password="not-the-password")
    message = str(info.value)
    assert f"user {TLS_USER!r}" in message and "invalid username-password pair" in message
    assert "not-the-password" not in message and TLS_PASSWORD not in message


def test_keys_outside_the_users_pattern_fail_open_counted(
    db: Database, redis_target: RedisTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """The ACL user may only touch ``t*`` keys: a cache in namespace ``other`` gets NOPERM on
    every command, and must answer from the database, counting errors, never raising."""
    qc = redis_target.cache("other")  # PING at startup touches no key: accepted
    qc.attach(db.Session)
    stmt = select(User.name).where(User.id == 1).options(cached())
    try:
        with caplog.at_level(logging.WARNING, "sqla_redis_cache"):
            for _ in range(3):
                with db.counter.expect(1), db.Session() as s:
                    assert s.scalar(stmt) == "user1"
        assert qc.stats().errors >= 1 and qc.stats().hits == 0
        assert "NoPermissionError" in caplog.text
        assert qc.set("x", 1) is False
    finally:
        qc.close()


def test_revoked_password_at_runtime_fails_open_counted(
    db: Database, tls_server: TlsServer, redis_target: RedisTarget, namespace: str
) -> None:
    server = admin(tls_server.plain_port)
    add_cache_user(server, "rotating", "old-pw", "t*")
    qc = redis_target.cache(namespace, username="rotating", password="old-pw")
    qc.attach(db.Session)
    stmt = select(User.name).where(User.id == 2).options(cached())
    try:
        with db.Session() as s:
            s.scalar(stmt)
        with db.counter.expect(0), db.Session() as s:
            assert s.scalar(stmt) == "user2"
        # the password is rotated and existing connections dropped (throwaway server)
        server.execute_command("ACL", "SETUSER", "rotating", "resetpass", ">new-pw")
        server.execute_command("CLIENT", "KILL", "USER", "rotating")
        for _ in range(3):
            with db.counter.expect(1), db.Session() as s:
                assert s.scalar(stmt) == "user2"
        assert qc.stats().errors >= 1
    finally:
        qc.close()
