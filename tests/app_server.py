"""`prefork-work` as a subprocess on a job module the test writes: the real-server tests'
master (conftest.Master: children, signals, a stop that fails the test if it had to SIGKILL),
with its config, log and the evidence file the jobs append to (env EVIDENCE)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
from conftest import Master, read_records, wait_until

from prefork_work.keys import Keys

# The head of a job module whose jobs append a JSON line per event to $EVIDENCE (records()):
# record(job, phase="start") notes the job, the pid of the child running it, the time and the
# module's VERSION (a test may swap the module for another version).
RECORDING_APP = textwrap.dedent('''
    import json, os, time
    from prefork_work.app import App

    EVIDENCE = os.environ["EVIDENCE"]
    VERSION = "v1"
    app = App()

    def record(job, **extra):
        line = dict(id=job.id, name=job.name, pid=os.getpid(), at=time.time(), version=VERSION,
                    **extra)
        with open(EVIDENCE, "a") as handle:
            handle.write(json.dumps(line) + "\\n")
''')


class AppServer(Master):
    def __init__(self, directory: Path, redis_url: str, module_source: str | None,
                 module: str = "jobs_app", namespace: str = "apps", env: dict[str, str] | None = None,
                 python_path: list[str] | None = None, redis_options: dict[str, object] | None = None,
                 log_level: str = "debug", **server_options: object) -> None:
        super().__init__()
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
        self.namespace = str(options["namespace"])
        self.keys = Keys(self.namespace)
        lines = ["[redis]", f"url = {json.dumps(redis_url)}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in (redis_options or {}).items()]
        lines += ["[server]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
        lines += ["[log]", 'format = "json"', f"level = {json.dumps(log_level)}"]
        self.config = directory / "work.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = directory / "server.log"
        self.env = dict(os.environ, EVIDENCE=str(self.evidence), **(env or {}))
        self.concurrency = int(options["concurrency"])  # type: ignore[call-overload]

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> AppServer:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefork_work.cli", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=dict(self.env, **(env or {})),
            )
        if wait:
            wait_until(self._children_started, 15, message="children")
        return self

    def _children_started(self) -> bool:
        """``concurrency`` children, each titled as one: the master's own short-lived forks
        (a library running a helper program, between fork and exec) are not children."""
        children = self.children()
        try:
            titled = [c for c in children if " child " in " ".join(c.cmdline())]
        except psutil.Error:  # one exited while we looked: look again
            return False
        return len(children) == len(titled) == self.concurrency

    def cli(self, *args: str, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``prefork-work -c CONFIG ARGS...`` in the server's environment."""
        return subprocess.run([sys.executable, "-m", "prefork_work.cli", "-c", str(self.config), *args],
                              capture_output=True, text=True, input=input, timeout=timeout,
                              env=self.env)

    def busy_child(self, timeout: float = 10) -> psutil.Process:
        def find() -> psutil.Process | None:
            busy = self.children_where(lambda child: " busy " in " ".join(child.cmdline()))
            return busy[0] if busy else None

        return wait_until(find, timeout, 0.05, "a busy child")  # type: ignore[return-value]

    def records(self, phase: str | None = None, name: str | None = None) -> list[dict]:
        """The evidence file's records, those of one ``phase`` and job ``name`` if given."""
        return [rec for rec in read_records(self.evidence)
                if (phase is None or rec.get("phase") == phase)
                and (name is None or rec.get("name") == name)]

    def events(self, event: str) -> list[dict]:
        return [e for e in self.records() if e.get("event") == event]

    def log_lines(self, event: str | None = None, offset: int = 0) -> list[dict]:
        """The server's JSON log lines (master and children), from byte ``offset`` on, those of
        one ``event`` if given."""
        with open(self.log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
        lines = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (event is None or record.get("event") == event):
                lines.append(record)
        return lines
