"""Throwaway Redis deployments started by the tests: Cluster, Sentinel, TLS (+ ACL users).

Everything runs as local ``redis-server`` processes on free loopback ports, in temporary
directories, and is stopped by the fixture that started it (leftovers at interpreter exit).
Certificates are made by ``openssl`` for each run: a CA, a server certificate for 127.0.0.1 /
localhost, a client certificate, and an unrelated CA to prove verification really happens.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from . import _services
from ._services import free_port, start_redis_server, stop

Proc = subprocess.Popen[bytes]

#: cache settings for the deployment suites: they test behaviour, not latency, and a TLS
#: handshake or a cluster pipeline can exceed the 50 ms default on a loaded 2-core machine
STEADY_TIMEOUTS = {"socket_timeout": 0.5, "connect_timeout": 0.5}


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def admin(port: int) -> redis.Redis:
    return redis.Redis(port=port, host="127.0.0.1", socket_timeout=2, decode_responses=True)


def _crash(proc: Proc) -> None:
    proc.kill()
    proc.wait(5)
    stop(proc)  # removes its directory


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    procs: dict[int, Proc]
    replicas: int

    @property
    def ports(self) -> list[int]:
        return sorted(self.procs)

    @property
    def nodes(self) -> str:
        """``REDIS_CLUSTER_NODES`` form."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        """Ports of the masters that own slots, as seen by a live node."""
        lines = admin(self.alive()[0]).execute_command("CLUSTER", "NODES")
        if isinstance(lines, str):
            lines = lines.splitlines()
        ports = []
        for line in lines:
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2] and len(fields) > 8:
                ports.append(int(fields[1].split(":")[1].split("@")[0]))
        return sorted(ports)

    def kill(self, port: int) -> None:
        """SIGKILL, as a crash (SIGTERM would make Redis 7 wait for its replicas first)."""
        _crash(self.procs[port])

    def wait_healthy(self, timeout: float = 20.0) -> None:
        def healthy() -> bool:
            for port in self.alive():
                if "cluster_state:ok" not in admin(port).execute_command("CLUSTER", "INFO"):
                    return False
            return True

        wait_until(healthy, timeout, "cluster_state:ok on every node")

    def wait_replicated(self, timeout: float = 20.0) -> None:
        def synced() -> bool:
            for port in self.masters():
                info = admin(port).info("replication")
                if int(info.get("connected_slaves", 0)) < self.replicas:
                    return False
            return True

        wait_until(synced, timeout, "every master to have its replicas")

    def close(self) -> None:
        for proc in self.procs.values():
            stop(proc)


def start_cluster(masters: int = 3, replicas: int = 1, first_port: int | None = None) -> Cluster:
    """``masters`` masters with ``replicas`` replicas each, via ``redis-cli --cluster create``
    (``first_port``: the port of the first node, e.g. one a client was configured with)."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not on PATH (needed for --cluster create)")
    procs: dict[int, Proc] = {}
    cluster = Cluster(procs, replicas)
    try:
        for i in range(masters * (1 + replicas)):
            port = first_port if i == 0 and first_port else free_port(cluster_bus=True)
            procs[port] = start_redis_server(
                port,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000",
                "--cluster-replica-validity-factor", "0",
            )  # fmt: skip
        command = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in procs)]
        command += ["--cluster-replicas", str(replicas), "--cluster-yes"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}"
            )
        cluster.wait_healthy()
        cluster.wait_replicated()
    except BaseException:
        cluster.close()
        raise
    return cluster


# --------------------------------------------------------------------------- sentinel


@dataclass
class SentinelSetup:
    master: int
    replica: int
    sentinels: list[int]
    procs: dict[int, Proc] = field(default_factory=dict)
    name: str = "mymaster"

    @property
    def nodes(self) -> str:
        """``REDIS_SENTINEL_NODES`` form."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinels)

    def master_port(self) -> int:
        host_port = admin(self.sentinels[0]).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name
        )
        return int(host_port[1])

    def kill(self, port: int) -> None:
        _crash(self.procs[port])

    def close(self) -> None:
        for proc in self.procs.values():
            stop(proc)


def _start_sentinel_process(port: int, master: int, quorum: int) -> Proc:
    binary = shutil.which("redis-server")
    assert binary is not None
    workdir = Path(tempfile.mkdtemp(prefix=f"sqla-redis-cache-sentinel-{port}-"))
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor mymaster 127.0.0.1 {master} {quorum}\n"
        "sentinel down-after-milliseconds mymaster 400\n"
        "sentinel failover-timeout mymaster 4000\n"
        "sentinel parallel-syncs mymaster 1\n"
    )
    with (workdir / "sentinel.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, str(conf), "--sentinel"],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    _services._servers[proc.pid] = (proc, workdir)  # stopped by stop() or at exit
    return proc


def start_sentinel(sentinels: int = 3) -> SentinelSetup:
    """A master, one replica and ``sentinels`` sentinels (quorum: a majority)."""
    master, replica = free_port(), free_port()
    setup = SentinelSetup(master, replica, [])
    try:
        setup.procs[master] = start_redis_server(master)
        setup.procs[replica] = start_redis_server(replica, "--replicaof", "127.0.0.1", str(master))
        wait_until(
            lambda: admin(replica).info("replication").get("master_link_status") == "up",
            10,
            "the replica to sync",
        )
        for _ in range(sentinels):
            port = free_port()
            setup.sentinels.append(port)
            setup.procs[port] = _start_sentinel_process(port, master, sentinels // 2 + 1)

        def ready() -> bool:
            for port in setup.sentinels:
                state = admin(port).execute_command("SENTINEL", "MASTER", setup.name)
                info = (
                    state if isinstance(state, dict) else dict(zip(*[iter(state)] * 2, strict=True))
                )
                if int(info["num-slaves"]) < 1 or int(info["num-other-sentinels"]) < sentinels - 1:
                    return False
            return True

        wait_until(ready, 20, "sentinels to see the replica and each other")
    except BaseException:
        setup.close()
        raise
    return setup


# --------------------------------------------------------------------------- TLS


@dataclass
class Certs:
    dir: Path
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path) -> Certs:
    """A CA, server and client certificates signed by it, and an unrelated CA (PEM files)."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not on PATH (needed to make the TLS test certificates)")
    d = directory
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN=sqla-redis-cache {ca}",
            cwd=d,
        )  # fmt: skip
    for leaf, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:client")):
        (d / f"{leaf}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{leaf}.key",
            "-out", f"{leaf}.csr", "-subj", f"/CN={leaf}", cwd=d,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{leaf}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{leaf}.ext", "-out", f"{leaf}.crt",
            cwd=d,
        )  # fmt: skip
    return Certs(
        d,
        str(d / "ca.crt"),
        str(d / "server.crt"),
        str(d / "server.key"),
        str(d / "client.crt"),
        str(d / "client.key"),
        str(d / "other-ca.crt"),
    )


@dataclass
class TlsServer:
    proc: Proc
    plain_port: int
    tls_port: int

    def close(self) -> None:
        stop(self.proc)


def start_tls_server(certs: Certs, auth_clients: str = "optional", *extra: str) -> TlsServer:
    """A server with a TLS port (and a plain one, for the test's own administration)."""
    plain, tls = free_port(), free_port()
    proc = start_redis_server(
        plain,
        "--tls-port", str(tls),
        "--tls-cert-file", certs.server_cert,
        "--tls-key-file", certs.server_key,
        "--tls-ca-cert-file", certs.ca,
        "--tls-auth-clients", auth_clients,
        *extra,
    )  # fmt: skip
    return TlsServer(proc, plain, tls)


# --------------------------------------------------------------------------- ACL

#: the ACL rule set docs/deployment.md recommends for a cache user, minus the key pattern
CACHE_USER_RULES = ("+@read", "+@write", "+@keyspace", "+@scripting", "+@connection", "-@dangerous")


#: and on Redis Cluster, reading the slot map
CLUSTER_USER_RULES: tuple[str, ...] = ("+cluster|slots", "+cluster|nodes")


def add_cache_user(client: Any, user: str, password: str, namespace: str) -> None:
    """An ACL user limited to ``<namespace>:*`` keys (the rules docs/deployment.md gives);
    ``namespace`` may be a glob (``t*``)."""
    client.execute_command(
        "ACL", "SETUSER", user, "reset", "on", f">{password}", f"~{namespace}:*",
        "resetchannels", *CACHE_USER_RULES,
    )  # fmt: skip


# the deployments the ``redis_target`` fixture builds caches on --------------------------------

#: the ACL user the TLS deployment runs the contract as (limited to the tests' ``t*`` keys)
TLS_USER, TLS_PASSWORD = "cacheuser", "s3cret-pw"


def tls_settings(certs: Certs, **extra: object) -> dict[str, object]:
    """Cache settings for the test TLS server: its CA, and the client certificate."""
    return {
        "tls_ca_certs": certs.ca,
        "tls_certfile": certs.client_cert,
        "tls_keyfile": certs.client_key,
        **extra,
    }


def namespace_keys(target: Any, cache: Any) -> list[str]:
    """Every key of ``cache``'s namespace on ``target`` (a conftest.RedisTarget), all nodes."""
    client = target.client()
    try:
        return sorted(k.decode() for k in client.scan_iter(match=cache.config.namespace + ":*"))
    finally:
        client.close()
