"""The web app as a process the master supervises (``[web] listen``), like the embedded Redis.

The master stays free of HTTP (and of the web extra's imports): it runs
``python -m prefork_work.cli -c FILE web`` as a subprocess in its own session (a Ctrl-C or
a signal sent to the master's process group reaches only the master, which stops it in
order), checks it every second and starts it again if it died, with a growing delay when
it dies young so a web app that cannot start (port taken) does not spin. At shutdown the
master sends SIGTERM (uvicorn finishes the requests in flight) and SIGKILL after a grace.
The web process exits on its own if the master disappears (PREFORK_WORK_WEB_PARENT).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import structlog

from prefork_work.errors import ConfigError

log = structlog.get_logger("prefork_work.server")

RESTART_DELAY_MAX = 30.0
YOUNG = 10.0  # a web process that dies sooner than this doubles the next restart's delay
STOP_GRACE = 10.0


class WebProcess:
    def __init__(self, config_path: Path, listen: str) -> None:
        self.config_path = config_path
        self.listen = listen
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.delay = 0.0
        self.dead_since: float | None = None

    def command_line(self) -> list[str]:
        return [sys.executable, "-m", "prefork_work.cli", "-c", str(self.config_path), "web",
                "--listen", self.listen]

    def check_installed(self) -> None:
        """ConfigError (exit 78) now, rather than a web process failing every 30 s for ever."""
        missing = [m for m in ("fastapi", "uvicorn", "jinja2") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"web.listen: the web app needs {', '.join(missing)}: "
                              "pip install 'prefork-work[web]'")

    def start(self) -> None:
        env = dict(os.environ, PREFORK_WORK_WEB_PARENT=str(os.getpid()))
        self.process = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
        self.started_at = time.monotonic()
        log.info("started web process", pid=self.process.pid, listen=self.listen)

    def alive(self) -> bool:
        # the master's waitpid(-1) may reap it first; poll() then reports it gone all the same
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Start it again if it died (called every second by the master)."""
        if self.process is None or self.alive():
            return
        now = time.monotonic()
        if self.dead_since is None:
            self.dead_since = now
            lived = now - self.started_at
            self.delay = min(max(self.delay * 2, 1.0), RESTART_DELAY_MAX) if lived < YOUNG else 0.0
            log.error("web process exited; restarting it", pid=self.process.pid,
                      lived=round(lived, 1), delay=self.delay)
        if now - self.dead_since >= self.delay:
            self.dead_since = None
            self.start()

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        log.info("stopped web process", pid=self.process.pid)
