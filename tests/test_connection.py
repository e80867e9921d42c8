"""The one Redis client factory: URL forms, ACL users, client names, no blind retries."""

from __future__ import annotations

import pytest
import redis

from prefork_work.connection import redis_from_url
from prefork_work.enqueuer import Enqueuer
from prefork_work.errors import RedisUnavailable
from prefork_work.store.base import redis_errors


def test_client_name_timeouts_and_no_retries(redis_url, r) -> None:
    client = redis_from_url(redis_url, client_name="pw-test", socket_timeout=3.0)
    assert client.ping()
    assert "pw-test" in {c["name"] for c in r.client_list()}
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 3.0
    assert kwargs.get("retry") is None and kwargs.get("retry_on_timeout") is False
    client.close()


def test_acl_user_and_password_in_the_url(redis_url, r) -> None:
    r.acl_setuser("pwuser", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    try:
        path = redis_url.removeprefix("unix://")
        client = redis_from_url(f"unix://pwuser:s3cret@{path}")
        assert client.acl_whoami() == "pwuser"
        Enqueuer("acl", client).enqueue("wat", {})
        assert r.llen("acl:jobs:wat") == 1
        client.close()
        wrong = redis_from_url(f"unix://pwuser:wrong@{path}")
        with pytest.raises(RedisUnavailable), redis_errors():
            wrong.ping()
    finally:
        r.acl_deluser("pwuser")


def test_tcp_and_tls_urls_are_parsed() -> None:
    client = redis_from_url("redis://bob:pw@db.example:6380/2", connect_timeout=1.5)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("db.example", 6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("bob", "pw")
    assert kwargs["socket_connect_timeout"] == 1.5
    tls = redis_from_url("rediss://db.example:6380")
    assert tls.connection_pool.connection_class is redis.SSLConnection


def test_unreachable_redis_is_a_clear_error() -> None:
    client = redis_from_url("redis://127.0.0.1:1", connect_timeout=0.5)
    with pytest.raises(RedisUnavailable, match="redis unavailable"):
        Enqueuer("x", client).enqueue("wat", {})
