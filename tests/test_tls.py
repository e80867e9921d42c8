"""TLS to Redis: the ``[redis] tls_*`` keys against a real ``redis-server --tls-port`` with a
CA made here (good certificate, wrong CA, wrong host name, no client certificate), for the
CLI, the server's master and children, and the cluster client."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from conftest import free_port, stop_all, wait_until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from test_server import Server, run_one_job_and_stop  # the real-process harness of the server tests

from prefork_work.config import config_warnings, load_config
from prefork_work.connection import redis_from_url
from prefork_work.embedded import find_redis_server
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import RedisUnavailable
from prefork_work.keys import Keys

NS = "tls"


# --- a throwaway PKI --------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(directory: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_cert(cert, directory / f"{name}.pem")
    return key, cert


def issue(directory: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], name: str,
          *, hosts: list[str] | None = None, client: bool = False) -> tuple[Path, Path]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                   critical=False))
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_cert(cert, directory / f"{name}.pem")
    _write_key(key, directory / f"{name}.key")
    return directory / f"{name}.pem", directory / f"{name}.key"


@dataclass
class Pki:
    dir: Path
    ca: Path
    wrong_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    cluster_cert: Path
    cluster_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    make_ca(directory, "wrong-ca")
    # the server's certificate names "localhost" only: 127.0.0.1 is the wrong host name
    server_cert, server_key = issue(directory, ca, "server", hosts=["localhost"])
    client_cert, client_key = issue(directory, ca, "client", client=True)
    cluster_cert, cluster_key = issue(directory, ca, "cluster", hosts=["localhost", "127.0.0.1"])
    return Pki(directory, directory / "ca.pem", directory / "wrong-ca.pem", server_cert,
               server_key, client_cert, client_key, cluster_cert, cluster_key)


# --- TLS redis-servers ------------------------------------------------------------------------
def start_tls_redis(pki: Pki, directory: Path, *, cluster: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port(bus=cluster)
    # redis-py's cluster client turns "localhost" into 127.0.0.1 (and the node announces its
    # IP), so a cluster node's certificate must name the address
    cert, key = (pki.cluster_cert, pki.cluster_key) if cluster else (pki.server_cert, pki.server_key)
    argv = [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "yes",
            "--save", "", "--appendonly", "no", "--dir", str(directory)]
    if cluster:
        argv += ["--cluster-enabled", "yes", "--tls-cluster", "yes",
                 "--cluster-config-file", str(directory / "nodes.conf")]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=str(pki.ca),
                        ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key),
                        socket_timeout=5)

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"redis-server --tls-port exited with {process.returncode} "
                        "(built without TLS?)")
        try:
            return bool(admin.ping())
        except redis.RedisError:
            return False

    wait_until(up, 10, 0.05, "the TLS redis-server")
    if cluster:
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        wait_until(lambda: admin.cluster("info")["cluster_state"] == "ok", 15, 0.05, "cluster ok")
    admin.close()
    return process, port


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    process, port = start_tls_redis(pki, tmp_path_factory.mktemp("tls-redis"))
    yield port
    process.kill()
    process.wait(5)


def plain(pki: Pki, port: int) -> redis.Redis:
    """A client that bypasses prefork-work's config, to look at what the tests wrote."""
    return redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=str(pki.ca),
                       ssl_certfile=str(pki.client_cert), ssl_keyfile=str(pki.client_key),
                       socket_timeout=5)


APP = textwrap.dedent('''
    import os
    from prefork_work.app import App

    app = App()

    @app.job("record")
    def record(job):
        with open(os.environ["EVIDENCE"], "a") as handle:
            handle.write(job.id + "\\n")
''')


def write_config(tmp_path: Path, url: str, **redis_keys: str) -> Path:
    (tmp_path / "tls_jobs.py").write_text(APP)
    lines = ["[redis]", f'url = "{url}"']
    lines += [f'{key} = "{value}"' for key, value in redis_keys.items()]
    lines += ["[server]", f'namespace = "{NS}"', 'app = "tls_jobs:app"', 'python_path = ["."]',
              "concurrency = 1", "shutdown_timeout = 5.0", "[log]", 'format = "json"']
    path = tmp_path / "work.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefork_work.cli", *args], capture_output=True,
                          text=True, timeout=timeout)




def good_keys(pki: Pki) -> dict[str, str]:
    return {"tls_ca_file": str(pki.ca), "tls_cert_file": str(pki.client_cert),
            "tls_key_file": str(pki.client_key)}


# --- the tests --------------------------------------------------------------------------------
def test_a_job_runs_through_a_tls_redis(tmp_path, pki, tls_redis) -> None:
    """CLI enqueue, the master and its child all connect with the configured CA and client
    certificate (the server demands one: tls-auth-clients yes)."""
    check = plain(pki, tls_redis)
    check.flushall()
    srv = Server(tmp_path, f"rediss://localhost:{tls_redis}/0", redis_options=good_keys(pki),
                 namespace=NS, concurrency=1, log_level="info")
    try:
        run_one_job_and_stop(srv, "{}")
    finally:
        stop_all([srv])
    assert "verification is off" not in srv.log.read_text()
    assert check.llen(Keys(NS).jobs("record")) == 0


@pytest.mark.parametrize(("case", "expected"), [
    ("wrong_ca", "certificate verify failed"),
    ("wrong_host", "certificate is not valid for '127.0.0.1'"),  # it names localhost only
    ("no_client_cert", "redis unavailable"),  # the server asks for one (tls-auth-clients yes)
])
def test_a_bad_tls_peer_is_redis_unavailable(tmp_path, pki, tls_redis, case, expected) -> None:
    keys = good_keys(pki)
    host = "localhost"
    if case == "wrong_ca":
        keys["tls_ca_file"] = str(pki.wrong_ca)
    elif case == "wrong_host":
        host = "127.0.0.1"
    else:
        del keys["tls_cert_file"], keys["tls_key_file"]
    config = load_config(write_config(tmp_path, f"rediss://{host}:{tls_redis}/0", **keys))
    client = redis_from_url(config.redis.url, settings=config.redis, socket_timeout=3)
    with pytest.raises(RedisUnavailable) as caught:
        Enqueuer(NS, client).enqueue("record", {})
    assert expected in str(caught.value)


def test_the_cli_and_the_server_exit_69_on_a_wrong_ca(tmp_path, pki, tls_redis) -> None:
    keys = dict(good_keys(pki), tls_ca_file=str(pki.wrong_ca))
    config = write_config(tmp_path, f"rediss://localhost:{tls_redis}/0", **keys)
    for command in (["enqueue", "record", "{}"], []):
        result = cli("-c", str(config), *command)
        output = result.stdout + result.stderr
        assert result.returncode == 69, output
        assert "certificate verify failed" in output and "Traceback" not in output


def test_verification_off_connects_with_a_warning(tmp_path, pki, tls_redis) -> None:
    keys = {"tls_cert_file": str(pki.client_cert), "tls_key_file": str(pki.client_key)}
    config = write_config(tmp_path, f"rediss://127.0.0.1:{tls_redis}/0?ssl_cert_reqs=none", **keys)
    check = cli("-c", str(config), "--check")
    assert check.returncode == 0, check.stderr
    assert "warning: redis.url: TLS certificate verification is off (ssl_cert_reqs=none" in check.stderr
    loaded = load_config(config)
    assert config_warnings(loaded)  # what the server logs at start
    client = redis_from_url(loaded.redis.url, settings=loaded.redis, socket_timeout=3)
    assert client.ping()  # wrong host name, and no CA configured: verification is off indeed
    client.close()
    good = load_config(write_config(tmp_path, f"rediss://localhost:{tls_redis}/0", **good_keys(pki)))
    assert config_warnings(good) == []
    no_hostname = load_config(write_config(
        tmp_path, f"rediss://localhost:{tls_redis}/0?ssl_check_hostname=false", **good_keys(pki)))
    assert "ssl_check_hostname is off" in config_warnings(no_hostname)[0]


def test_tls_keys_are_checked_at_load(tmp_path, pki) -> None:
    with pytest.raises(Exception, match="redis.tls_ca_file: needs a rediss:// url"):
        load_config(write_config(tmp_path, "redis://localhost:6390/0", tls_ca_file=str(pki.ca)))
    with pytest.raises(Exception, match="redis.tls_ca_file: cannot read"):
        load_config(write_config(tmp_path, "rediss://localhost:6390/0",
                                 tls_ca_file=str(tmp_path / "missing.pem")))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(Exception, match="redis.tls_ca_file: not a usable PEM file"):
        load_config(write_config(tmp_path, "rediss://localhost:6390/0",
                                 tls_ca_file=str(tmp_path / "junk.pem")))
    with pytest.raises(Exception, match="redis.tls_cert_file: not a usable PEM file"):
        load_config(write_config(tmp_path, "rediss://localhost:6390/0",
                                 tls_cert_file=str(pki.client_cert), tls_key_file=str(pki.server_key)))
    with pytest.raises(Exception, match="redis.tls_ca_file: redis.url sets ssl_ca_certs too"):
        load_config(write_config(tmp_path, f"rediss://localhost:6390/0?ssl_ca_certs={pki.ca}",
                                 tls_ca_file=str(pki.ca)))
    # a CA bundle is no password: any size is fine
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(pki.wrong_ca.read_text() + "# padding\n" * 10_000 + pki.ca.read_text())
    assert bundle.stat().st_size > 64 * 1024
    load_config(write_config(tmp_path, "rediss://localhost:6390/0", tls_ca_file=str(bundle)))
    # an encrypted key: a clear error, never OpenSSL prompting on the terminal
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"kpw")))
    keys = {"tls_cert_file": str(pki.client_cert), "tls_key_file": str(encrypted)}
    with pytest.raises(Exception, match="redis.tls_cert_file: not a usable PEM file"):
        load_config(write_config(tmp_path, "rediss://localhost:6390/0", **keys))
    load_config(write_config(tmp_path, "rediss://localhost:6390/0?ssl_password=kpw", **keys))
    # relative paths resolve next to the config file
    config = load_config(write_config(tmp_path, "rediss://localhost:6390/0",
                                      tls_ca_file=os.path.relpath(pki.ca, tmp_path)))
    assert config.redis.tls_ca_file == str(pki.ca.resolve())


def test_the_cluster_client_uses_the_tls_keys(tmp_path, pki) -> None:
    process, port = start_tls_redis(pki, tmp_path, cluster=True)
    try:
        config = load_config(write_config(tmp_path, f"rediss://localhost:{port}",
                                          **good_keys(pki)))
        client = redis_from_url(config.redis.url, cluster=True, settings=config.redis)
        assert client.ping()
        client.close()
        wrong = load_config(write_config(tmp_path, f"rediss://localhost:{port}",
                                         **dict(good_keys(pki), tls_ca_file=str(pki.wrong_ca))))
        with pytest.raises(RedisUnavailable):
            redis_from_url(wrong.redis.url, cluster=True, settings=wrong.redis, socket_timeout=3)
    finally:
        process.kill()
        process.wait(5)
