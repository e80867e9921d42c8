"""`prefork-work` as a subprocess on a job module the test writes: for the application tests
(hooks, databases, Django, contrib), which need their own job modules and environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from conftest import read_records, wait_until


class AppServer:
    def __init__(self, directory: Path, redis_url: str, module_source: str | None,
                 module: str = "jobs_app", namespace: str = "apps", env: dict[str, str] | None = None,
                 python_path: list[str] | None = None, **server_options: object) -> None:
        self.dir = directory
        self.evidence = directory / "evidence.log"
        if module_source is not None:
            (directory / f"{module}.py").write_text(module_source)
        options: dict[str, object] = {
            "namespace": namespace, "app": f"{module}:app",
            "python_path": [str(directory), *(python_path or [])],
            "concurrency": 2, "shutdown_timeout": 5.0, "hard_timeout_grace": 0.5,
        }
        options.update(server_options)
        lines = ["[redis]", f"url = {json.dumps(redis_url)}", "[server]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
        lines += ["[log]", 'format = "json"', 'level = "debug"']
        self.config = directory / "work.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = directory / "server.log"
        self.env = dict(os.environ, EVIDENCE=str(self.evidence), **(env or {}))
        self.concurrency = int(options["concurrency"])  # type: ignore[call-overload]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> AppServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefork_work.cli", "-c", str(self.config)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=self.env,
        )
        if wait:
            wait_until(lambda: len(self.children()) == self.concurrency, 15, message="children")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[psutil.Process]:
        try:
            candidates = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        alive = []
        for child in candidates:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
            except psutil.NoSuchProcess:
                continue
        return alive

    def records(self) -> list[dict]:
        return read_records(self.evidence)

    def events(self, event: str) -> list[dict]:
        return [e for e in self.records() if e.get("event") == event]

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 20) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log_lines(self) -> list[dict]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                for child in self.children():
                    child.kill()
                self.process.kill()
                self.process.wait(5)
