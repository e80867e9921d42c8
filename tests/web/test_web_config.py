"""[web] keys: validation, the token's sources, and the loopback rule (exit 78 paths are
tested on real processes in test_web_server.py)."""

from __future__ import annotations

import pytest

from prefork_work.config import build_config, is_loopback, parse_listen, web_access_problem
from prefork_work.errors import ConfigError


def test_defaults_are_off_and_open_on_loopback(monkeypatch) -> None:
    monkeypatch.delenv("PREFORK_WORK_WEB_TOKEN", raising=False)
    web = build_config({}).web
    assert (web.listen, web.token, web.read_only) == ("", "", False)


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:5040", ("127.0.0.1", 5040)), ("[::1]:80", ("::1", 80)),
    ("localhost:1", ("localhost", 1)), ("0.0.0.0:5040", ("0.0.0.0", 5040)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["5040", ":5040", "host:", "host:0", "host:70000", "h:x"])
def test_bad_listen_is_a_config_error_naming_the_key(listen: str) -> None:
    with pytest.raises(ConfigError, match="web.listen"):
        build_config({"web": {"listen": listen}})


def test_loopback_names() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


@pytest.mark.parametrize(("web", "env", "refused"), [
    ({"listen": "0.0.0.0:5040"}, None, True),
    ({"listen": "10.1.2.3:5040"}, None, True),
    ({"listen": "0.0.0.0:5040", "token": "t"}, None, False),
    ({"listen": "0.0.0.0:5040", "read_only": True}, None, False),
    ({"listen": "0.0.0.0:5040"}, "t", False),
    ({"listen": "127.0.0.1:5040"}, None, False),
])
def test_off_loopback_needs_a_token_or_read_only(monkeypatch, web, env, refused) -> None:
    monkeypatch.delenv("PREFORK_WORK_WEB_TOKEN", raising=False)
    if env:
        monkeypatch.setenv("PREFORK_WORK_WEB_TOKEN", env)
    if refused:
        with pytest.raises(ConfigError, match="not a loopback address.*token.*read_only"):
            build_config({"web": web})
    else:
        build_config({"web": web})


def test_token_from_the_environment_overrides_the_file(monkeypatch) -> None:
    monkeypatch.setenv("PREFORK_WORK_WEB_TOKEN", "env")
    assert build_config({"web": {"token": "file"}}).web.token == "env"
    monkeypatch.delenv("PREFORK_WORK_WEB_TOKEN")
    assert build_config({"web": {"token": "file"}}).web.token == "file"


def test_access_problem_text_says_why() -> None:
    problem = web_access_problem("0.0.0.0:5040", "", False)
    assert problem is not None and "anyone who can reach it" in problem
    assert web_access_problem("0.0.0.0:5040", "", True) is None


def test_server_refuses_web_listen_without_the_web_extra(monkeypatch, tmp_path) -> None:
    import importlib.util

    from prefork_work.web_process import WebProcess

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(ConfigError, match=r"web.listen: .*uvicorn.*prefork-work\[web\]"):
        WebProcess(tmp_path / "work.toml", "127.0.0.1:5040").check_installed()
