"""Deployment settings from URLs and the environment, and the one clear error for each
combination that cannot work.  No server needed: these run everywhere, fast."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import redis

from sqla_redis_cache import CacheConfig, ConfigurationError, QueryCache
from sqla_redis_cache.io._clients import make_async_client, make_sync_client


def env(**values: str) -> dict[str, str]:
    return values


def test_env_cluster() -> None:
    config = CacheConfig.from_env(
        env(REDIS_CLUSTER_ENABLED="true", REDIS_CLUSTER_NODES="r1:7000, r2:7001,[::1]:7002")
    )
    assert config.cluster is True
    assert config.cluster_nodes == (("r1", 7000), ("r2", 7001), ("::1", 7002))
    assert config.sentinel_nodes == ()


def test_env_cluster_nodes_ignored_unless_enabled() -> None:
    """A configuration may list REDIS_CLUSTER_NODES while REDIS_CLUSTER_ENABLED is false."""
    config = CacheConfig.from_env(env(REDIS_CLUSTER_ENABLED="false", REDIS_CLUSTER_NODES="a:1"))
    assert config.cluster is False and config.cluster_nodes == ()


def test_env_sentinel_tls_and_acl(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = CacheConfig.from_env(
        env(
            REDIS_SENTINEL_NODES="s1:26379,s2",
            REDIS_SENTINEL_MASTER="mymaster",
            REDIS_SENTINEL_PASSWORD="spw",
            REDIS_TLS_ENABLED="1",
            REDIS_TLS_CA_CERTS=str(ca),
            REDIS_USERNAME="app",
            REDIS_PASSWORD="p@ss:word/",
            REDIS_DB="2",
        )
    )
    assert config.sentinel_nodes == (("s1", 26379), ("s2", 6379))
    assert config.sentinel_master == "mymaster" and config.sentinel_password == "spw"
    assert config.tls_enabled and config.tls_ca_certs == str(ca)
    assert (config.username, config.password) == ("app", "p@ss:word/")
    assert config.url == "rediss://localhost:6379/2"
    assert "p@ss" not in repr(config) and "spw" not in repr(config)


def test_explicit_settings_win_over_env() -> None:
    config = CacheConfig.from_env(env(REDIS_PASSWORD="from-env"), password="explicit")
    assert config.password == "explicit"


def test_sentinel_url() -> None:
    config = CacheConfig.from_url("redis+sentinel://app:pw@s1:26379,s2:26380/mymaster/3")
    assert config.sentinel_nodes == (("s1", 26379), ("s2", 26380))
    assert config.sentinel_master == "mymaster"
    assert CacheConfig.from_url("rediss+sentinel://s1/m").tls_enabled
    client = make_sync_client(config)  # connects lazily: nothing listens there
    pool = client.connection_pool
    assert pool.service_name == "mymaster" and pool.is_master
    assert pool.connection_kwargs["db"] == 3
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == (
        "app",
        "pw",
    )
    assert pool.connection_kwargs["retry"].get_retries() == 0


def test_cluster_url_with_several_hosts() -> None:
    config = CacheConfig.from_url("redis://a:7000,b:7001/0", cluster=True)
    assert config.cluster_nodes == (("a", 7000), ("b", 7001))


def test_rediss_url_builds_a_verifying_tls_client(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = CacheConfig.from_url(
        "rediss://u:pw@127.0.0.1:1/0", tls_ca_certs=str(ca), password="override"
    )
    kwargs = make_sync_client(config).connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED and kwargs["ssl_check_hostname"]
    assert kwargs["ssl_ca_certs"] == str(ca)
    assert (kwargs["username"], kwargs["password"]) == ("u", "override")
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.05, 0.05)


def test_async_client_mirrors_the_sync_one() -> None:
    async def build() -> Any:
        client = make_async_client(CacheConfig.from_url("redis+sentinel://s1/mymaster/1"))
        kwargs = dict(client.connection_pool.connection_kwargs)
        await client.aclose()
        return type(client).__module__, kwargs

    module, kwargs = asyncio.run(build())
    assert module.startswith("redis.asyncio") and kwargs["db"] == 1


@pytest.mark.parametrize(
    ("url", "settings", "message"),
    [
        ("redis://h:1", {"cluster": True, "sentinel_nodes": (("s", 1),), "sentinel_master": "m"},
         "not both"),
        ("redis+sentinel://s:1/m", {"cluster": True}, "cannot be used with cluster"),
        ("redis+sentinel://s:1", {}, "must end in /<master name>"),
        ("redis://h:1", {"sentinel_nodes": (("s", 1),)}, "master's name"),
        ("redis://h:1", {"sentinel_master": "m"}, "no sentinel nodes"),
        ("redis://a:1,b:2", {}, "pass cluster=True"),
        ("redis://h:1/3", {"cluster": True}, "only has database 0"),
        ("redis://h:1", {"cluster_nodes": (("a", 1),)}, "pass cluster=True"),
        ("unix:///tmp/r.sock", {"cluster": True}, "TCP addresses"),
        ("unix:///tmp/r.sock", {"tls": True}, "unix:// socket"),
        ("redis://h:1", {"tls_ca_certs": "/etc/hostname"}, "TLS is off"),
        ("rediss://h:1", {"tls_ca_certs": "/nonexistent/ca.pem"}, "no such file"),
        ("rediss://h:1", {"tls_keyfile": "/etc/hostname"}, "needs tls_certfile"),
        ("redis://h:1", {"username": "app"}, "needs a password"),
        ("redis://a:1,b", {"cluster": True}, None),
        ("http://h:1", {}, "unsupported Redis URL"),
        ("redis://a:99999", {"cluster": True, "cluster_nodes": ()}, None),
    ],
)  # fmt: skip
def test_invalid_combinations_fail_at_construction(
    url: str, settings: dict[str, Any], message: str | None
) -> None:
    if message is None:
        CacheConfig.from_url(url, **settings)  # valid: must not raise
        return
    with pytest.raises(ConfigurationError, match=message):
        QueryCache.from_url(url, **settings)


def test_bad_env_values_fail_clearly() -> None:
    with pytest.raises(ConfigurationError, match="REDIS_CLUSTER_NODES"):
        CacheConfig.from_env(env(REDIS_CLUSTER_ENABLED="yes", REDIS_CLUSTER_NODES="a:b:c"))
    with pytest.raises(ConfigurationError, match="out of range"):
        CacheConfig.from_env(env(REDIS_SENTINEL_NODES="s:70000", REDIS_SENTINEL_MASTER="m"))
    with pytest.raises(ConfigurationError, match="REDIS_SENTINEL_NODES is not"):
        CacheConfig.from_env(env(REDIS_SENTINEL_MASTER="m"))
    with pytest.raises(ConfigurationError, match="master's name"):
        CacheConfig.from_env(env(REDIS_SENTINEL_NODES="s:1"))
    with pytest.raises(ConfigurationError, match="not both"):
        CacheConfig.from_env(
            env(REDIS_CLUSTER_ENABLED="1", REDIS_SENTINEL_NODES="s:1", REDIS_SENTINEL_MASTER="m")
        )


def test_error_messages_hide_passwords() -> None:
    with pytest.raises(ConfigurationError) as info:
        CacheConfig.from_url("redis://app:hunter2@a:1,b:2/0")
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_unreachable_redis_at_startup_is_not_an_error(namespace: str) -> None:
    """Only a refusal (credentials, TLS) stops startup; an outage is a fail-open."""
    from ._services import free_port

    qc = QueryCache.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    try:
        assert qc.set("k", 1) is False and qc.stats().errors == 1
    finally:
        qc.close()


def test_wrong_password_on_plain_redis_is_a_startup_error(namespace: str) -> None:
    from ._services import free_port, start_redis_server, stop

    port = free_port()
    proc = start_redis_server(port)
    try:
        redis.Redis(port=port).config_set("requirepass", "right")  # a throwaway server
        with pytest.raises(ConfigurationError, match=r"default user.*(WRONGPASS|invalid)"):
            QueryCache.from_url(f"redis://127.0.0.1:{port}/0", namespace=namespace, password="x")
        with pytest.raises(ConfigurationError, match=r"default user: AuthenticationError"):
            QueryCache.from_url(f"redis://127.0.0.1:{port}/0", namespace=namespace)
        qc = QueryCache.from_env(
            namespace=namespace,
            environ={"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": "right"},
        )
        try:
            assert qc.set("k", 1) and qc.get("k") == 1
        finally:
            qc.close()
    finally:
        stop(proc)
