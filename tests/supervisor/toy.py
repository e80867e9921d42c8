"""A toy ChildApp for supervisor tests: children run fake jobs and leave evidence in files.

Run as ``python toy.py DIR [options as JSON]``; the test reads DIR/events.log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from supervisor import (
    ChildContext,
    ChildView,
    ExitInfo,
    HardTimeout,
    Interrupted,
    MasterView,
    PeriodicTask,
    Supervisor,
    SupervisorSettings,
)


class ToyApp:
    def __init__(self, directory: Path, options: dict) -> None:
        self.dir = directory
        self.options = options
        self.version = 1
        self.versions: dict[int, int] = {}  # the app's own state of each child, by ChildView.key
        self.settings = SupervisorSettings(
            concurrency=options.get("concurrency", 2),
            shutdown_timeout=options.get("shutdown_timeout", 5),
            hard_timeout_grace=options.get("hard_timeout_grace", 1),
            max_jobs_per_child=options.get("max_jobs"),
            max_memory_per_child=options.get("max_memory"),
        )

    def log(self, **event) -> None:
        event["t"] = time.monotonic()  # one clock for master and children: tests order events
        with open(self.dir / "events.log", "a") as handle:
            handle.write(json.dumps(event) + "\n")

    def prepare_child(self, child: ChildView) -> None:
        self.versions[child.key] = self.version

    def child_main(self, ctx: ChildContext) -> int:
        if self.options.get("fail_boot") or ctx.index in self.options.get("fail_boot_index", ()):
            raise RuntimeError("cannot import my_jobs: boom")
        allocate = self.options.get("allocate_mb", 0)
        ballast = bytearray(allocate * 1024 * 1024) if allocate else b""  # big from birth
        ctx.ready()
        self.log(event="ready", pid=os.getpid(), index=ctx.index, version=self.versions[ctx.key])
        if self.options.get("die_after_ready"):
            os._exit(1)  # ready, then dead with no job to blame
        job_seconds = self.options.get("job_seconds", 0.05)
        n = 0
        grown: list[bytearray] = []
        while not ctx.stop_requested and ctx.master_alive():
            if self.options.get("grow_mb") and n == 5:  # grows after a few jobs, not at birth
                grown.append(bytearray(self.options["grow_mb"] * 1024 * 1024))
            if ctx.quiet or self.options.get("idle"):
                time.sleep(0.05)
                continue
            n += 1
            label = f"job{n} work"
            deadline = time.monotonic() + self.options["hard_timeout"] if "hard_timeout" in self.options else None
            try:
                with ctx.job(label, deadline=deadline):
                    self.log(event="start", pid=os.getpid(), job=label)
                    if self.options.get("die_in_job"):
                        os._exit(1)  # the job kills its process (segfault, os._exit, OOM)
                    end = time.monotonic() + job_seconds
                    while time.monotonic() < end:
                        if self.options.get("ignore_timeout"):
                            try:
                                time.sleep(0.01)
                            except HardTimeout:
                                pass
                        else:
                            time.sleep(0.01)
                    self.log(event="done", pid=os.getpid(), job=label)
            except HardTimeout:
                self.log(event="hard_timeout", pid=os.getpid(), job=label)
            except Interrupted:
                self.log(event="interrupted", pid=os.getpid(), job=label)
                raise
        del ballast
        self.log(event="exit", pid=os.getpid())
        return 0

    def child_exited(self, child: ChildView, info: ExitInfo) -> None:
        del self.versions[child.key]
        self.log(event="child_exited", pid=info.pid, cause=info.cause, describe=info.describe(),
                 busy=child.busy_slots() > 0, state=child.state.value)

    def reload(self) -> SupervisorSettings:
        self.version += 1
        self.log(event="reload", version=self.version)
        return self.settings

    def status_line(self, master: MasterView) -> str:
        return f"[toy] {len(master.children)} children"

    def tasks(self) -> list[PeriodicTask]:
        return [PeriodicTask("tick", 0.2, lambda now, master: self.log(
            event="tick", children=len(master.children), stopping=bool(master.stopping)))]

    def shutdown(self) -> None:
        self.log(event="shutdown")


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    toy = ToyApp(directory, options)
    sup = Supervisor(toy, toy.settings, title="toy",
                     memory_check_interval=options.get("memory_check_interval", 0.5))
    sys.exit(sup.run())
