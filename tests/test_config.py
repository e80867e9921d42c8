"""Config validation, the CLI's commands and exit codes, and the files users deploy: the
sample conf/work.toml, the systemd unit, and the README commands CI runs."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from prefork_work import __version__
from prefork_work.config import SETTINGS, load_config
from prefork_work.errors import ConfigError
from prefork_work.job import Job
from prefork_work.keys import Keys

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefork_work.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "work.toml"
    path.write_text(text)
    return path


# --- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nconcurency = 2\n", "unknown key server.concurency"),
    ("[servr]\n", "unknown section [servr]"),
    ("[server]\nconcurrency = \"2\"\n", "server.concurrency: expected an integer"),
    ("[server]\nconcurrency = true\n", "server.concurrency: expected an integer"),
    ("[server]\nshutdown_timeout = -1\n", "server.shutdown_timeout: must be greater than 0"),
    ("[server]\napp = \"no colon\"\n", "server.app: must look like"),
    ("[redis]\nurl = \"http://x\"\n", "redis.url: must start with redis://"),
    ("[log]\nformat = \"xml\"\n", "log.format: must be one of"),
    ("[server]\npython_path = [1]\n", "server.python_path: expected a list of strings"),
    ("[redis]\ncluster = 1\n", "redis.cluster: expected true or false"),
    ("[redis]\ncluster = true\n", "redis.cluster: needs a redis:// or rediss:// url"),
    ('[redis]\ncluster = true\nurl = "unix:///x.sock"\n', "redis.cluster: needs a redis://"),
    ('[redis]\ncluster = true\nurl = "redis://h:7000"\n', 'server.namespace: with redis.cluster'),
    ("[server\n", "invalid TOML"),
])
def test_bad_config_names_the_file_and_key(tmp_path, text, message) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_defaults_and_relative_paths(tmp_path) -> None:
    config = load_config(write(tmp_path, '[server]\npython_path = ["lib"]\nstate_dir = "st"\n'))
    assert config.server.python_path == (str(tmp_path / "lib"),)
    assert config.server.state_dir == str(tmp_path / "st")
    assert config.server.concurrency >= 1 and config.server.max_crashes == 3
    assert config.log.format == "auto" and config.redis.url == ""


def test_sample_config_documents_every_setting_with_its_default() -> None:
    text = (ROOT / "conf" / "work.toml").read_text()
    data = tomllib.loads(text)
    for setting in SETTINGS:
        assert f"[{setting.section}]" in text
        assert f"# {setting.doc}\n" in text, setting.path
        live = data.get(setting.section, {}).get(setting.key)
        line = re.search(rf"^#? ?{setting.key} = (.*)$", text, re.M)
        assert line, f"{setting.path} is not in conf/work.toml"
        if live is None:  # commented out: the comment shows the real default
            shown = tomllib.loads(f"v = {line.group(1)}")["v"]
            assert shown == setting.default, setting.path
    load_config(ROOT / "conf" / "work.toml")


# --- the command line -------------------------------------------------------------------------
def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"prefork-work {__version__}"


def test_check_imports_the_app_and_starts_nothing() -> None:
    result = cli("-c", str(ROOT / "conf" / "work.toml"), "--check")
    assert result.returncode == 0, result.stderr
    assert "config ok: 2 job types, 1 periodic" in result.stdout


def test_check_reports_config_errors_with_exit_78(tmp_path) -> None:
    result = cli("-c", str(write(tmp_path, "[server]\nmax_crashes = 0\n")), "--check")
    assert result.returncode == 78
    assert "server.max_crashes: must be greater than 0" in result.stderr


def test_check_reports_an_app_that_fails_to_import(tmp_path) -> None:
    (tmp_path / "broken_jobs.py").write_text("raise RuntimeError('boom at import')\n")
    path = write(tmp_path, '[server]\napp = "broken_jobs:app"\npython_path = ["."]\n')
    result = cli("-c", str(path), "--check")
    assert result.returncode == 78
    assert "cannot import 'broken_jobs': RuntimeError: boom at import" in result.stderr


def test_missing_config_is_usage_error() -> None:
    assert cli().returncode == 2
    result = cli("-c", "/nonexistent/work.toml")
    assert result.returncode == 78 and "cannot read config" in result.stderr


def test_enqueue_command(tmp_path, redis_url, r) -> None:
    path = write(tmp_path, f'[redis]\nurl = "{redis_url}"\n[server]\nnamespace = "cli"\n')
    result = cli("-c", str(path), "enqueue", "hello", '{"name": "world"}')
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    queued = Job.from_json(r.lindex(Keys("cli").jobs("hello"), 0))
    assert queued.id == job_id and queued.args == {"name": "world"}


@pytest.mark.parametrize(("args", "message"), [
    (["nosuchjob"], "unknown job name 'nosuchjob'"),
    (["hello", "{oops"], "args must be a JSON object"),
    (["hello", "[1, 2]"], "args must be a JSON object"),
])
def test_enqueue_bad_input_writes_nothing(tmp_path, redis_url, r, args, message) -> None:
    path = write(tmp_path, f'[redis]\nurl = "{redis_url}"\n[server]\nnamespace = "cli"\n')
    result = cli("-c", str(path), "enqueue", *args)
    assert result.returncode == 2 and message in result.stderr
    assert r.dbsize() == 0


def test_enqueue_any_name_for_another_service(tmp_path, redis_url, r) -> None:
    path = write(tmp_path, f'[redis]\nurl = "{redis_url}"\n[server]\nnamespace = "cli"\n')
    assert cli("-c", str(path), "enqueue", "--any-name", "go_job", "{}").returncode == 0
    assert r.llen(Keys("cli").jobs("go_job")) == 1


@pytest.mark.parametrize("redis_table", [
    'url = "unix:///nonexistent/redis.sock"',
    'url = "redis://127.0.0.1:1/0"\ncluster = true',  # a cluster client connects when built
])
@pytest.mark.parametrize("command", [["enqueue", "hello", "{}"], []])
def test_redis_down_exits_69(tmp_path, redis_table, command) -> None:
    path = write(tmp_path, f'[redis]\n{redis_table}\n[server]\nnamespace = "{{ns}}"\n')
    result = cli("-c", str(path), *command)
    assert result.returncode == 69 and "redis unavailable" in result.stderr


# --- the files we ship ------------------------------------------------------------------------
def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(python3 -m venv .*)$", quick_start, re.M)
    assert len(commands) == 2, "the quick start has two commands"
    assert "prefork-work -c conf/work.toml" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd" / "prefork-work.service")
    return parser


def test_systemd_unit_settings() -> None:
    service = unit()["Service"]
    expected = {"Type": "notify", "KillMode": "mixed", "OOMPolicy": "continue",
                "Restart": "on-failure", "RestartPreventExitStatus": "78",
                "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "PrivateTmp": "yes", "DynamicUser": "yes", "StateDirectory": "prefork-work"}
    for key, value in expected.items():
        assert service.get(key) == value, key
    shutdown_default = next(s.default for s in SETTINGS if s.path == "server.shutdown_timeout")
    assert int(service["TimeoutStopSec"]) > shutdown_default
    assert int(service["WatchdogSec"]) > 0
    assert "-HUP" in service["ExecReload"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path) -> None:
    text = (ROOT / "systemd" / "prefork-work.service").read_text()
    # verify wants ExecStart to exist: point it at this checkout's installed command
    installed = Path(sys.executable).with_name("prefork-work")
    text = text.replace("/opt/prefork-work/.venv/bin/prefork-work", str(installed))
    text = text.replace("WorkingDirectory=/opt/prefork-work", f"WorkingDirectory={tmp_path}")
    path = tmp_path / "prefork-work.service"
    path.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if str(path) in line or "prefork-work.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_pyproject_console_script() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["prefork-work"] == "prefork_work.cli:main"
    assert json.dumps(data["project"]["requires-python"]) == '">=3.11"'


def test_state_dir_defaults_to_systemds_state_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "lib" / "prefork-work"))
    assert load_config(write(tmp_path, "")).server.state_dir == str(tmp_path / "lib" / "prefork-work")
    explicit = load_config(write(tmp_path, '[server]\nstate_dir = "/srv/pw"\n'))
    assert explicit.server.state_dir == "/srv/pw"  # the config file wins
    monkeypatch.delenv("STATE_DIRECTORY")
    assert load_config(write(tmp_path, "")).server.state_dir == str(tmp_path / "var")


# --- config errors --check must catch (issue 7 item 4) -----------------------------------------
def test_a_config_file_that_is_not_utf8_exits_78(tmp_path) -> None:
    path = tmp_path / "work.toml"
    path.write_bytes(b'[server]\nnamespace = "caf\xe9"\n')  # Latin-1, as an old editor saves it
    for args in (["--check"], []):
        result = cli("-c", str(path), *args)
        assert result.returncode == 78, result.stderr
        assert f"{path}: not UTF-8 (byte 0xe9 on line 2)" in result.stderr
        assert "Traceback" not in result.stderr


def test_concurrency_above_what_the_scoreboard_holds_is_refused(tmp_path) -> None:
    from prefork_work.config import MAX_CONCURRENCY
    from supervisor.scoreboard import MAX_SLOTS

    assert MAX_CONCURRENCY * 2 == MAX_SLOTS  # room for two generations during a reload
    assert load_config(write(tmp_path, f"[server]\nconcurrency = {MAX_CONCURRENCY}\n"))
    result = cli("-c", str(write(tmp_path, f"[server]\nconcurrency = {MAX_CONCURRENCY + 1}\n")),
                 "--check")
    assert result.returncode == 78
    assert f"server.concurrency: must be at most {MAX_CONCURRENCY}" in result.stderr
    assert f"# number of child processes, at most {MAX_CONCURRENCY};" in (
        ROOT / "conf" / "work.toml").read_text()


def test_a_state_dir_that_cannot_be_created_exits_78(tmp_path) -> None:
    (tmp_path / "afile").write_text("")
    path = write(tmp_path, '[server]\nstate_dir = "afile/state"\n')
    for args in (["--check"], []):
        result = cli("-c", str(path), *args)
        assert result.returncode == 78, result.stderr
        assert f"server.state_dir: cannot create {tmp_path / 'afile' / 'state'}" in result.stderr
        assert "Traceback" not in result.stderr


def test_check_with_enqueue_validates_and_enqueues_nothing(tmp_path, redis_url, r) -> None:
    path = write(tmp_path, f'[redis]\nurl = "{redis_url}"\n[server]\nnamespace = "chk"\n')
    result = cli("-c", str(path), "--check", "enqueue", "hello", '{"name": "world"}')
    assert result.returncode == 0, result.stderr
    assert "enqueue not run (--check)" in result.stdout
    assert r.keys("chk:*") == []
    bad = cli("-c", str(path), "--check", "enqueue", "hello", "[1]")
    assert bad.returncode == 2 and r.keys("chk:*") == []
