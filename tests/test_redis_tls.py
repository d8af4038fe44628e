"""Redis with a password over TLS, end to end: a real worker, the controller's client and the
sender all talk to a `rediss://` server that verifies nothing but requires its password, and
they verify the server's certificate. Skipped where the machine's redis-server or openssl
cannot do TLS."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.embedded import LocalCluster

pytestmark = pytest.mark.slow
PASSWORD = "tls-test-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if not server or not openssl:
        pytest.skip("redis-server or openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.skip(f"this redis-server cannot serve TLS: {out[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port, cert
    finally:
        proc.kill()
        proc.wait(5)


def test_worker_and_clients_work_over_tls_with_a_password(
        tmp_path: Path, tls_redis: tuple[int, Path]) -> None:
    from workers.app import app, configure

    port, cert = tls_redis
    url = (f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required"
           f"&ssl_ca_certs={cert}")
    client = redis.Redis.from_url(url)
    assert client.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace(PASSWORD, "wrong")).ping()
    with pytest.raises(redis.ConnectionError):  # plain text to a TLS port
        redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2).ping()

    configure(url)
    cluster = LocalCluster(tmp_path / "cluster", url, pools=(("generate", "threads", 2),))
    cluster.start()
    try:
        cluster.wait_ready(60)
        app.send_task("distillq.ping", args=["over-tls", "tls:replies"], queue="generate")
        got = client.blpop(["tls:replies"], timeout=30)
        assert got is not None and got[1] == b"over-tls"
        log = (tmp_path / "cluster" / "logs" / "worker-generate-0.log").read_text()
        assert PASSWORD not in log, "the password never reaches a log"
    finally:
        cluster.stop()
