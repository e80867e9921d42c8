"""The web app on real processes: ``prefork-work -c FILE web`` alone, and the server's
supervised web process (``[web] listen``) with real workers behind it: gocraft's
webui_test.go cases over HTTP, SIGKILL of the web process, SIGTERM of the master."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from conftest import Master, free_port, stop_all, wait_until

httpx = pytest.importorskip("httpx", reason="the test extra is not installed")
pytest.importorskip("fastapi", reason="the web extra is not installed")

NS = "websrv"

APP = textwrap.dedent('''
    import os, time
    from prefork_work.app import App

    app = App()

    @app.job("wat", max_fails=1)
    def wat(job):
        if job.args.get("block"):
            while not os.path.exists(os.environ["RELEASE"]):
                time.sleep(0.02)
            return
        raise RuntimeError("boom")
''')


def write_config(tmp_path: Path, redis_url: str, web: dict | None = None, concurrency: int = 2) -> Path:
    (tmp_path / "web_jobs.py").write_text(APP)
    lines = ["[redis]", f'url = "{redis_url}"', "[server]", f'namespace = "{NS}"',
             'app = "web_jobs:app"', f"python_path = [{json.dumps(str(tmp_path))}]",
             f"concurrency = {concurrency}", "shutdown_timeout = 5.0",
             "[log]", 'format = "json"', 'level = "info"']
    if web:
        lines += ["[web]"] + [f"{k} = {json.dumps(v)}" for k, v in web.items()]
    path = tmp_path / "work.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    environment = {k: v for k, v in os.environ.items() if k != "PREFORK_WORK_WEB_TOKEN"}
    environment.update(RELEASE=str(tmp_path / "release"), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "prefork_work.cli", *args],
                            stdout=open(tmp_path / "out.log", "ab"), stderr=subprocess.STDOUT,
                            env=environment)


def answering(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


@pytest.fixture
def processes():
    started: list[subprocess.Popen[bytes]] = []
    yield started
    stop_all(Master(process) for process in started)


# --- prefork-work -c FILE web ------------------------------------------------------------------
def test_web_command_serves_and_stops_on_sigterm(tmp_path, redis_url, r, processes) -> None:
    """Off loopback with a token from the environment (it wins over [web] token; [web] token
    and read_only take the same path: test_web_config.py), then SIGTERM: exit 0."""
    port = free_port()
    config = write_config(tmp_path, redis_url, {"token": "from-config"})
    web = start(tmp_path, "-c", str(config), "web", "--listen", f"0.0.0.0:{port}",
                env={"PREFORK_WORK_WEB_TOKEN": "from-env"})
    processes.append(web)
    base = f"http://127.0.0.1:{port}"
    response = wait_until(lambda: answering(base + "/api/queues"), 20, 0.1, "the web app")
    assert response.status_code == 200 and response.json() == []  # type: ignore[union-attr]
    for headers in ({}, {"Authorization": "Bearer from-config"}):
        refused = httpx.post(base + "/api/jobs", json={"name": "wat"}, headers=headers, timeout=5)
        assert refused.status_code == 401
    created = httpx.post(base + "/api/jobs", json={"name": "wat", "args": {"x": 1}}, timeout=5,
                         headers={"Authorization": "Bearer from-env"})
    assert created.status_code == 201
    assert httpx.get(base + "/queues", timeout=5).json()[0]["count"] == 1
    web.send_signal(signal.SIGTERM)
    assert web.wait(10) == 0


def test_non_loopback_without_token_or_read_only_exits_78(tmp_path, redis_url, r) -> None:
    config = write_config(tmp_path, redis_url)
    env = {k: v for k, v in os.environ.items() if k != "PREFORK_WORK_WEB_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "prefork_work.cli", "-c", str(config), "web",
                             "--listen", f"0.0.0.0:{free_port()}"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 78, result.stderr
    assert "not a loopback address" in result.stderr and "token" in result.stderr
    assert "read_only" in result.stderr and "Traceback" not in result.stderr
    # the server refuses the same [web] listen through the same check: test_web_config.py


def test_web_process_exits_when_its_master_is_gone(tmp_path, redis_url, r, processes) -> None:
    """PREFORK_WORK_WEB_PARENT names the master; a parent that is not it (the master died and
    the process was re-parented) stops the web app, so it never holds the port alone."""
    port = free_port()
    config = write_config(tmp_path, redis_url)
    web = start(tmp_path, "-c", str(config), "web", "--listen", f"127.0.0.1:{port}",
                env={"PREFORK_WORK_WEB_PARENT": str(os.getpid() + 1_000_000)})
    processes.append(web)
    assert web.wait(30) == 0


# --- the server's supervised web process ----------------------------------------------------------
def metrics_available() -> bool:
    try:
        import prefork_work.metrics  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def web_children(master: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return Master(master).children_where(lambda child: "web" in child.cmdline())


def test_supervised_web_process_with_real_workers(tmp_path, redis_url, r, processes) -> None:
    port = free_port()
    config = write_config(tmp_path, redis_url, {"listen": f"127.0.0.1:{port}"})
    master = start(tmp_path, "-c", str(config))
    processes.append(master)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answering(base + "/api/queues"), 30, 0.1, "the supervised web app")

    # webui_test.go, over HTTP, against the server's real children
    pools = wait_until(lambda: len(httpx.get(base + "/worker_pools", timeout=5).json()) == 2
                       and httpx.get(base + "/worker_pools", timeout=5).json(), 20, 0.1, "2 pools")
    assert all(p["worker_pool_id"] for p in pools)  # type: ignore[union-attr]
    assert httpx.get(base + "/busy_workers", timeout=5).text == "[]"
    httpx.post(base + "/api/jobs", json={"name": "wat", "args": {"block": True}}, timeout=5)
    busy = wait_until(lambda: httpx.get(base + "/busy_workers", timeout=5).json(), 20, 0.1, "busy")
    assert busy[0]["job_name"] == "wat" and busy[0]["is_busy"] is True  # type: ignore[index]
    (tmp_path / "release").touch()
    for _ in range(2):
        httpx.post(base + "/api/jobs", json={"name": "wat", "args": {}}, timeout=5)
    dead = wait_until(lambda: (d := httpx.get(base + "/dead_jobs", timeout=5).json())["count"] == 2
                      and d, 20, 0.1, "2 dead jobs")
    one, other = dead["jobs"]  # type: ignore[index]
    assert httpx.post(f"{base}/delete_dead_job/{one['died_at']}/{one['id']}", timeout=5).status_code == 200
    assert httpx.post(f"{base}/retry_dead_job/{other['died_at']}/{other['id']}", timeout=5).status_code == 200
    # the retried job fails again and dies again: the whole loop ran through real children
    wait_until(lambda: httpx.get(base + "/dead_jobs", timeout=5).json()["count"] == 1, 20, 0.1)
    assert httpx.post(base + "/retry_all_dead_jobs", timeout=5).status_code == 200
    wait_until(lambda: httpx.get(base + "/dead_jobs", timeout=5).json()["count"] == 1, 20, 0.1)
    assert httpx.post(base + "/delete_all_dead_jobs", timeout=5).status_code == 200
    assert httpx.get(base + "/dead_jobs", timeout=5).json()["count"] == 0
    processes_view = httpx.get(base + "/api/processes", timeout=5).json()
    assert processes_view[0]["masters"][0]["pid"] == master.pid
    if metrics_available():  # the masters' death counters, per host, on the processes view
        worker = Master(master).children_where(lambda child: "web" not in child.cmdline())[0]
        worker.kill()
        wait_until(lambda: sum(httpx.get(base + "/api/processes", timeout=5).json()[0]["deaths"]
                               .values()) == 1, 20, 0.2, "a death counted")

    # SIGKILL the web process: the master starts another within a bounded time
    (web,) = web_children(master)
    web.kill()
    wait_until(lambda: [w for w in web_children(master) if w.pid != web.pid], 20, 0.1, "a new web process")
    response = wait_until(lambda: answering(base + "/api/queues"), 20, 0.1, "the web app back")
    assert response.status_code == 200  # type: ignore[union-attr]
    assert len(web_children(master)) == 1  # not counted as a job worker: still 2 pools
    assert len(httpx.get(base + "/worker_pools", timeout=5).json()) == 2

    # SIGTERM the master: the web process is stopped with it
    (web,) = web_children(master)
    master.send_signal(signal.SIGTERM)
    assert master.wait(20) == 0
    _gone, alive = psutil.wait_procs([web], timeout=10)
    assert not alive, "the web process outlived the master"
    assert answering(base + "/api/queues") is None
