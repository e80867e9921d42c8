from conftest import RedisServer


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

