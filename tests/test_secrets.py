"""Secrets and hardening: the Redis URL checked at load with its password never printed,
``[redis] password_file`` (and systemd's LoadCredential=), warnings about readable secrets,
``enqueue NAME -``, the example job's logging, and the unit's systemd-analyze score."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from conftest import free_port, stop_all, wait_until
from test_server import Server, run_one_job_and_stop  # the real-process harness of the server tests

from prefork_work.config import config_warnings, load_config
from prefork_work.connection import redis_from_url
from prefork_work.embedded import find_redis_server
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import ConfigError
from prefork_work.job import Job
from prefork_work.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
NS = "sec"
# Every character a URL gives a meaning to, so an unencoded one breaks the URL.
PASSWORD = "Zq7/Kx9#Wv?Pj@Rt:Lm"
FRAGMENTS = ("Zq7", "Kx9", "Wv", "Pj", "Rt", "Lm")


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefork_work.cli", *args], capture_output=True,
                          text=True, timeout=60, input=input, env=env)


def write(tmp_path: Path, redis_lines: str, mode: int = 0o600) -> Path:
    path = tmp_path / "work.toml"
    path.write_text(f"[redis]\n{redis_lines}\n[server]\nnamespace = \"{NS}\"\n")
    path.chmod(mode)
    return path


def leaks(text: str) -> list[str]:
    return [fragment for fragment in FRAGMENTS if fragment in text]


# --- the URL, checked at load -----------------------------------------------------------------
BAD_URLS = [
    ("redis://:::notaport", "port must be a number from 1 to 65535"),
    ("redis://localhost:99999", "port must be a number from 1 to 65535"),
    ("redis://localhost:0/0", "port must be a number from 1 to 65535"),
    ("redis://localhost:6379/notanumber", "database (the path after the host) must be a number"),
    ("redis://localhost:6379/1?db=2", "names two databases"),
    ("redis://:Zq7/Kx9@localhost:6379/0", "percent-encode '/', '?', '#' and '@'"),
    ("redis://:Zq7#Kx9@localhost:6379/0", "percent-encode '/', '?', '#' and '@'"),
    ("redis://:Zq7?Kx9@localhost:6379/0", "percent-encode '/', '?', '#' and '@'"),
    ("redis://user:Zq7Kx9/0", "port must be a number"),  # "@host" left out
    ("redis://localhost:6379/0#Zq7Kx9", "has a '#'"),
    ("redis://localhost/0?password=Zq7Kx9&socket_timeout=1", "set by prefork-work"),
    ("redis://localhost/0?password=Zq7Kx9&nosuch=1", "unknown query option 'nosuch'"),
    ("redis://localhost/0?ssl_cert_reqs=none", "needs a rediss:// url"),
    ("rediss://localhost/0?ssl_cert_reqs=maybe", "must be none, optional or required"),
    ("redis://", "names no host"),
    ("redis://[::1/0", "is not a valid URL"),
    ("unix://localhost/run/redis.sock", "names a socket path, not a host"),
    ("https://:Zq7Kx9@localhost", "must start with redis://, rediss:// or unix://"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_a_malformed_url_is_a_config_error_without_the_password(tmp_path, url, message) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, f'url = "{url}"'))
    text = str(caught.value)
    assert "redis.url: " in text and message in text, text
    assert leaks(text) == [], text


def test_a_cluster_has_database_0_only(tmp_path) -> None:
    with pytest.raises(ConfigError, match="redis.url: a Redis Cluster has database 0 only"):
        load_config(write(tmp_path, 'url = "redis://localhost:7000/3"\ncluster = true'))


def test_every_command_exits_78_on_a_bad_url_or_password_file(tmp_path) -> None:
    """Before: a traceback quoting part of the password, exit 1 (so systemd restarted it for
    ever), and --check said "config ok"."""
    path = write(tmp_path, f'url = "redis://:{PASSWORD}@localhost:6379/0"')
    for command in (["--check"], ["enqueue", "hello", "{}"], []):
        result = cli("-c", str(path), *command)
        assert result.returncode == 78, (command, result.stderr)
        assert "redis.url: has an '@' after its host part" in result.stderr
        assert "Traceback" not in result.stderr and leaks(result.stdout + result.stderr) == []
    path = write(tmp_path, 'url = "redis://localhost/0"\npassword_file = "nope"')
    result = cli("-c", str(path), "--check")
    assert result.returncode == 78 and "redis.password_file: cannot read" in result.stderr


def test_good_urls_load(tmp_path) -> None:
    for url in ["redis://localhost", "redis://localhost:6379/15", "rediss://h.example:6380/0",
                f"redis://user:{quote(PASSWORD, safe='')}@10.0.0.1:6379/0",
                "redis://[::1]:6379/0?socket_keepalive=true", "unix:///run/redis/redis.sock?db=2",
                "rediss://h/0?ssl_cert_reqs=required&ssl_check_hostname=true"]:
        assert load_config(write(tmp_path, f'url = "{url}"')).redis.url == url


# --- a Redis that wants a password ------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory = tmp_path_factory.mktemp("auth-redis")
    (directory / "redis.conf").write_text(f'requirepass "{PASSWORD}"\n')  # not in argv
    port = free_port()
    process = subprocess.Popen([find_redis_server(), str(directory / "redis.conf"), "--port",
                                str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = redis.Redis(port=port, password=PASSWORD, socket_timeout=5)

    def up() -> bool:
        try:
            return bool(admin.ping())
        except redis.RedisError:
            return False

    wait_until(up, 10, 0.05, "the redis-server with a password")
    yield port
    process.kill()
    process.wait(5)


@pytest.fixture
def auth(auth_redis: int) -> Iterator[redis.Redis]:
    client = redis.Redis(port=auth_redis, password=PASSWORD, socket_timeout=5)
    client.flushall()
    yield client
    client.close()


def test_a_percent_encoded_password_in_the_url_works(tmp_path, auth, auth_redis) -> None:
    url = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{auth_redis}/0"
    config = load_config(write(tmp_path, f'url = "{url}"'))
    client = redis_from_url(config.redis.url, settings=config.redis)
    job = Enqueuer(NS, client).enqueue("hello", {})
    assert Job.from_json(auth.lindex(Keys(NS).jobs("hello"), 0)).id == job.id


def test_password_file(tmp_path, auth, auth_redis, monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    url = f'url = "redis://127.0.0.1:{auth_redis}/0"'
    (tmp_path / "redis-password").write_text(PASSWORD + "\r\n")  # trailing newline stripped
    config = load_config(write(tmp_path, f'{url}\npassword_file = "redis-password"'))
    assert config.redis.password == PASSWORD
    assert config.redis.password_file == str(tmp_path / "redis-password")
    assert PASSWORD not in repr(config)  # a traceback's locals or a debug log print no secret
    client = redis_from_url(config.redis.url, settings=config.redis)
    Enqueuer(NS, client).enqueue("hello", {})
    assert auth.llen(Keys(NS).jobs("hello")) == 1
    # under systemd a relative name is a credential: LoadCredential=redis-password:/etc/...
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "redis-password").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(write(tmp_path, f'{url}\npassword_file = "redis-password"'))
    assert config.redis.password == "from-systemd"


@pytest.mark.parametrize(("setup", "lines", "message"), [
    (None, 'password_file = "missing"', "redis.password_file: cannot read"),
    ("dir", 'password_file = "pw"', "redis.password_file: cannot read"),
    ("empty", 'password_file = "pw"', "redis.password_file: "),
    ("two-lines", 'password_file = "pw"', "holds more than one line"),
    ("binary", 'password_file = "pw"', "is not UTF-8 text"),
    ("huge", 'password_file = "pw"', "larger than 64 KiB"),
    ("ok", 'url = "redis://:secret@localhost/0"\npassword_file = "pw"',
     "redis.url holds a password too"),
    ("ok", 'url = "redis://localhost/0?password=secret"\npassword_file = "pw"',
     "redis.url holds a password too"),
    ("ok", 'password_file = "pw"\nurl = ""', "needs a redis.url"),
])
def test_password_file_errors(tmp_path, monkeypatch, setup, lines, message) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    target = tmp_path / "pw"
    contents = {"empty": b"\n", "two-lines": b"a\nb\n", "binary": b"\xff\xfe\n",
                "huge": b"x" * 70_000, "ok": b"secret\n"}
    if setup == "dir":
        target.mkdir()
    elif setup:
        target.write_bytes(contents[setup])
    if "url" not in lines:
        lines = f'url = "redis://localhost/0"\n{lines}'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, lines))
    assert message in str(caught.value) and "secret" not in str(caught.value)


def test_warns_about_a_readable_config_holding_a_password(tmp_path) -> None:
    url = 'url = "redis://:secret@localhost/0"'
    assert config_warnings(load_config(write(tmp_path, url, mode=0o600))) == []
    warnings = config_warnings(load_config(write(tmp_path, url, mode=0o640)))
    assert len(warnings) == 1 and "holds a Redis password and is readable by group" in warnings[0]
    assert "secret" not in warnings[0]
    result = cli("-c", str(write(tmp_path, url, mode=0o644)), "--check")
    assert result.returncode == 0, result.stderr
    assert "readable by group and others (mode 0644)" in result.stderr
    # a password kept in its own file: the config may be read by the service's group
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o600)
    separate = load_config(write(tmp_path, 'url = "redis://localhost/0"\npassword_file = "pw"',
                                 mode=0o640))
    assert config_warnings(separate) == []
    (tmp_path / "pw").chmod(0o644)
    assert "redis.password_file and is readable by group and others" in config_warnings(separate)[0]


def test_server_and_cli_use_a_systemd_credential(tmp_path, auth, auth_redis) -> None:
    """As under the README's unit: password_file names a credential LoadCredential= put in
    $CREDENTIALS_DIRECTORY; the master, its child and the CLI all authenticate with it, the
    one warning (a password file others can read) is logged once, the password never."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "redis-password").write_text(PASSWORD + "\n")
    (credentials / "redis-password").chmod(0o644)
    srv = Server(tmp_path, f"redis://127.0.0.1:{auth_redis}/0", namespace=NS, concurrency=1,
                 redis_options={"password_file": "redis-password"},
                 env={"CREDENTIALS_DIRECTORY": str(credentials)})
    try:
        run_one_job_and_stop(srv, "-", input="{}")
    finally:
        stop_all([srv])
    text = srv.log.read_text()
    assert leaks(text) == []
    warnings = [json.loads(line) for line in text.splitlines()
                if line.startswith("{") and '"config warning"' in line]
    assert len(warnings) == 1 and "readable by group and others" in warnings[0]["problem"]
    assert warnings[0]["level"] == "warning"


# --- enqueue NAME - ---------------------------------------------------------------------------
def test_enqueue_reads_the_arguments_from_stdin(tmp_path, redis_url, r) -> None:
    path = write(tmp_path, f'url = "{redis_url}"')
    result = cli("-c", str(path), "enqueue", "hello", "-", input='{"name": "from stdin"}')
    assert result.returncode == 0, result.stderr
    job = Job.from_json(r.lindex(Keys(NS).jobs("hello"), 0))
    assert job.id == result.stdout.strip() and job.args == {"name": "from stdin"}


# --- the example job --------------------------------------------------------------------------
def test_the_example_job_logs_no_arguments_at_info(monkeypatch) -> None:
    from prefork_work.examples.hello import hello
    from prefork_work.logging import configure_logging

    monkeypatch.setattr("time.sleep", lambda seconds: None)
    job = Job(name="hello", id="j1", t=1, args={"name": "Ada Lovelace"})
    for level, shown in (("info", False), ("debug", True)):
        stream = io.StringIO()
        configure_logging("json", level, stream)
        hello(job)
        assert ('"job_id": "j1"' in stream.getvalue())
        assert ("Ada Lovelace" in stream.getvalue()) is shown, stream.getvalue()
    configure_logging("json", "info", sys.stderr)


# --- the systemd unit -------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_the_unit_scores_2_or_less_in_systemd_analyze_security(tmp_path) -> None:
    """6.2 MEDIUM before the hardening; the README quotes the score."""
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                             str(ROOT / "systemd" / "prefork-work.service")],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for prefork-work\.service: (\d+\.\d+) (\w+)",
                      result.stdout + result.stderr)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0 and found.group(2) == "OK", found.group(0)
    readme = (ROOT / "README.md").read_text()
    assert f"scores {found.group(1)} (OK)" in readme
