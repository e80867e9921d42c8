"""The prefork master: forks children, watches them, runs timers, speaks to systemd.

Single-threaded, no threads at all (it forks). One ``selectors`` loop waits on a self-pipe
that the interpreter writes signal numbers to (``signal.set_wakeup_fd``), on one status pipe
per child, and on the next timer. Signal handlers do nothing; the loop dispatches. The
policies live in parts that take ``now`` (timers.py, backoff.py, watchdog.py, recycling.py);
this module wires them to processes and signals.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog
from setproctitle import setproctitle

from supervisor import watchdog
from supervisor.backoff import CrashLoop, start_failure
from supervisor.child import ChildContext, run_child
from supervisor.children import Child
from supervisor.exitcodes import EX_OK
from supervisor.exitinfo import ExitInfo, KillCause
from supervisor.interface import (
    ChildApp,
    ChildState,
    MasterView,
    PeriodicTask,
    StopMode,
    SupervisorSettings,
)
from supervisor.recycling import Recycler
from supervisor.scoreboard import MAX_SLOTS, Scoreboard
from supervisor.systemd import Notifier
from supervisor.timers import Timers

log = structlog.get_logger("supervisor")

HANDLED = [
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGTSTP, signal.SIGCONT, signal.SIGCHLD,
]
FAST_STOP_GRACE = 2.0
HOUSEKEEPING = 0.25
STOP_CAUSE = {StopMode.GRACEFUL: KillCause.SHUTDOWN_TIMEOUT, StopMode.FAST: KillCause.INTERRUPTED}


class Supervisor:
    def __init__(
        self,
        app: ChildApp,
        settings: SupervisorSettings,
        *,
        title: str = "prefork-work",
        max_jobs_jitter: float = 0.1,
        memory_check_interval: float = 5.0,
        notify: bool = True,
        jobs_per_child: int = 1,
    ) -> None:
        self.app = app
        self.title = title
        self.recycler = Recycler(max_jobs=None, max_memory=None, jitter=max_jobs_jitter,
                                 check_interval=memory_check_interval)
        self.configure(settings)
        # fixed for the life of the master: the scoreboard is laid out for it before any fork
        self.jobs_per_child = jobs_per_child
        self.notifier = Notifier(notify)
        self.children: list[Child] = []
        self.keys = itertools.count()
        self.generation = 0
        self.stopping: StopMode | None = None
        self.stop_deadline = 0.0
        self.crash_loop = CrashLoop()
        self.announced_ready = False
        self.reloading = False
        self.quiet = False
        self.pid = os.getpid()
        self.scoreboard: Scoreboard | None = None
        self.free_slots: list[int] = []
        self.selector: selectors.BaseSelector | None = None
        self.wake_r = self.wake_w = -1
        self.timers = Timers([], 0.0)
        self.last_status = ""
        self.next_watchdog = 0.0
        self.next_extend = 0.0
        self.dispatch: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self.stop(StopMode.GRACEFUL),
            signal.SIGINT: lambda: self.stop(StopMode.FAST),
            signal.SIGQUIT: lambda: self.stop(StopMode.FAST),
            signal.SIGHUP: self.reload,
            signal.SIGTTIN: self.grow,
            signal.SIGTTOU: self.shrink,
            signal.SIGTSTP: lambda: self.set_quiet(True),
            signal.SIGCONT: lambda: self.set_quiet(False),
            signal.SIGCHLD: self.reap,
        }

    def configure(self, settings: SupervisorSettings) -> None:
        """Settings at start and from a reloaded config; the next generation of children uses them."""
        self.target = max(1, settings.concurrency)
        self.shutdown_timeout = settings.shutdown_timeout
        self.hard_timeout_grace = settings.hard_timeout_grace
        self.recycler.max_jobs = settings.max_jobs_per_child
        self.recycler.max_memory = settings.max_memory_per_child

    def view(self) -> MasterView:
        return MasterView(tuple(c.view() for c in self.children), self.stopping)

    # --- main loop ------------------------------------------------------------------------
    def run(self) -> int:
        self._setup()
        try:
            while not (self.stopping and not self.children):
                self._loop_once()
        finally:
            self._teardown()
        return EX_OK

    def _setup(self) -> None:
        self.scoreboard = Scoreboard(MAX_SLOTS, self.jobs_per_child)
        self.scoreboard.liveness.stamp()
        self.free_slots = list(range(MAX_SLOTS - 1, -1, -1))
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for signum in HANDLED:
            signal.signal(signum, _record)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.timers = Timers(self.app.tasks(), time.monotonic())
        self._set_title()
        log.info("master started", pid=self.pid, concurrency=self.target)

    def _loop_once(self) -> None:
        assert self.selector is not None and self.scoreboard is not None
        now = time.monotonic()
        self.scoreboard.liveness.stamp(now)  # children stop fetching when this goes stale
        for key, _ in self.selector.select(self.timers.wait(now, HOUSEKEEPING)):
            if key.fd == self.wake_r:
                self._read_signals()
            else:
                self._read_child(key.data)
        self.reap()
        self.timers.run_due(time.monotonic(), self._run_task)
        self._housekeeping()

    def _read_signals(self) -> None:
        try:
            data = os.read(self.wake_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            action = self.dispatch.get(signum)
            if action is not None:
                action()

    def _run_task(self, task: PeriodicTask) -> float:
        try:
            task.fn(time.time(), self.view())
        except Exception:  # one failing tick must not stop the master
            log.exception("periodic task failed", task=task.name)
        if self.scoreboard is not None:  # a few slow tasks in a row are not a frozen master
            self.scoreboard.liveness.stamp()
        return time.monotonic()

    # --- children --------------------------------------------------------------------------
    def spawn(self) -> Child | None:
        assert self.scoreboard is not None
        if not self.free_slots:
            log.error("no free scoreboard slot; not forking")
            return None
        number = self.free_slots.pop()
        index = self._free_index()
        child = Child(next(self.keys), index, self.generation, number, self.scoreboard.slots(number))
        for slot in child.slots:
            slot.reset()
        child.max_jobs = self.recycler.job_budget()
        try:
            self.app.prepare_child(child.view())
        except Exception:
            log.exception("prepare_child failed")
            self.free_slots.append(number)
            self._backoff("prepare_child failed", time.monotonic())
            return None
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:  # the child
                ctx = ChildContext(index, self.generation, child.slot, write_fd, self.pid,
                                   self.title, child.max_jobs, self.scoreboard.liveness,
                                   slots=child.slots, key=child.key)
                siblings = [c.pipe_fd for c in self.children if c.pipe_fd >= 0]
                run_child(ctx, self.app.child_main, HANDLED,
                          [read_fd, self.wake_r, self.wake_w, *siblings])
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        child.pid, child.pipe_fd, child.started_mono = pid, read_fd, time.monotonic()
        assert self.selector is not None
        self.selector.register(read_fd, selectors.EVENT_READ, child)
        self.children.append(child)
        log.info("child started", index=index, pid=pid, generation=self.generation)
        return child

    def _free_index(self) -> int:
        used = {c.index for c in self.children}
        index = 0
        while index in used:
            index += 1
        return index

    def _read_child(self, child: Child) -> None:
        try:
            data = os.read(child.pipe_fd, 65536)
        except (BlockingIOError, OSError):
            return
        if not data:
            self._close_pipe(child)
            return
        child.buffer += data
        while b"\n" in child.buffer:
            line, child.buffer = child.buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                continue
            self._on_message(child, message)

    def _on_message(self, child: Child, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "ready":
            child.ready = True
            child.ready_mono = time.monotonic()  # the crash loop ends once one stays up
            self.recycler.check_newborn(child)
            if child.state is ChildState.BOOTING:
                child.state = ChildState.RUNNING
            self._retire_one_replaced()
            if not self.announced_ready and self._current_ready() >= 1:
                self.announced_ready = True
                self.notifier.notify("READY=1", f"STATUS={self._status()}")
        elif event == "fatal":
            child.fatal = str(message.get("error", "unknown error"))

    def _close_pipe(self, child: Child) -> None:
        if child.pipe_fd >= 0:
            assert self.selector is not None
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(child.pipe_fd)
            os.close(child.pipe_fd)
            child.pipe_fd = -1

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.children if c.pid == pid), None)
            if child is None:
                continue  # not ours (e.g. a helper process of the app)
            self._child_gone(child, ExitInfo.from_status(pid, status, child.kill_cause))

    def _child_gone(self, child: Child, info: ExitInfo) -> None:
        if child.pipe_fd >= 0:
            self._read_child(child)  # a last "fatal" line may be waiting
        self._close_pipe(child)
        self.children.remove(child)
        self.free_slots.append(child.slot_number)
        now = time.monotonic()
        lifetime = now - child.started_mono
        busy = child.busy_slots() > 0  # before the slot is reused; child_exited reads it too
        expected = not child.state.current or self.stopping is not None
        log_fn = log.info if expected and (info.clean or info.cause) else log.warning
        log_fn("child exited", index=child.index, pid=child.pid, cause=info.cause or info.describe(),
               lifetime=round(lifetime, 2), error=child.fatal)
        try:
            self.app.child_exited(child.view(), info)
        except Exception:
            log.exception("child_exited failed", pid=child.pid)
        if expected:
            return
        reason = start_failure(child, info, busy, now)
        if reason is not None:
            self._backoff(reason, now)

    def _backoff(self, reason: str, now: float) -> None:
        self.crash_loop.failed(reason, now)
        self.notifier.notify(f"STATUS=crash loop ({self.crash_loop.failures} failures): {reason}"[:400])

    def _current(self) -> list[Child]:
        return [c for c in self.children if c.state.current]

    def _current_ready(self) -> int:
        return sum(1 for c in self._current() if c.ready)

    def _ensure_children(self, now: float) -> None:
        if self.stopping or not self.crash_loop.may_spawn(now):
            return
        missing = self.target - len(self._current())
        if missing <= 0:
            return
        for _ in range(self.crash_loop.to_spawn(missing)):
            if self.spawn() is None:
                break
        self.crash_loop.spawned(time.monotonic())

    def _retire_one_replaced(self) -> None:
        """A new child is ready: let one child waiting for its successor go."""
        for child in self.children:
            if child.state is ChildState.RETIRING and child.kill_cause is None and not child.term_sent:
                child.term_sent = True
                self._signal(child, signal.SIGTERM)
                break
        if self.reloading and not any(
            c.state is ChildState.RETIRING and not c.term_sent for c in self.children
        ):
            self.reloading = False
            self.notifier.notify("READY=1", f"STATUS={self._status()}")
            log.info("reload complete", generation=self.generation)

    def _signal(self, child: Child, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    # --- signals -------------------------------------------------------------------------------
    def stop(self, mode: StopMode) -> None:
        if self.stopping is StopMode.FAST or self.stopping is mode:
            return
        self.stopping = mode
        grace = self.shutdown_timeout if mode is StopMode.GRACEFUL else FAST_STOP_GRACE
        self.stop_deadline = time.monotonic() + grace
        log.info("stopping", mode=mode.value, children=len(self.children), timeout=grace)
        self.notifier.notify("STOPPING=1", f"STATUS=stopping ({mode.value})",
                             f"EXTEND_TIMEOUT_USEC={int((grace + 10) * 1e6)}")
        for child in self.children:
            child.state = ChildState.STOPPING
            self._signal(child, signal.SIGTERM if mode is StopMode.GRACEFUL else signal.SIGINT)

    def reload(self) -> None:
        if self.stopping:
            return
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1e6)}")
        try:
            settings = self.app.reload()
        except Exception as err:
            log.error("reload failed; keeping the running generation", error=f"{type(err).__name__}: {err}")
            self.notifier.notify("READY=1", f"STATUS=reload failed: {err}"[:400])
            return
        self.configure(settings)
        self.generation += 1
        self.reloading = True
        for child in self._current():
            child.state = ChildState.RETIRING
        log.info("reloading", generation=self.generation)
        self.crash_loop.reset()

    def grow(self) -> None:
        self.target += 1
        log.info("one child more", target=self.target)

    def shrink(self) -> None:
        if self.target <= 1:
            log.info("not below one child", target=self.target)
            return
        self.target -= 1
        current = self._current()
        if len(current) > self.target:
            victim = max(current, key=lambda c: c.index)
            victim.state = ChildState.STOPPING
            self._signal(victim, signal.SIGTERM)
        log.info("one child fewer", target=self.target)

    def set_quiet(self, quiet: bool) -> None:
        self.quiet = quiet
        for child in self.children:
            self._signal(child, signal.SIGTSTP if quiet else signal.SIGCONT)
        log.info("quiet" if quiet else "resumed")

    # --- housekeeping --------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if now > self.stop_deadline:
                for child in self.children:
                    if child.kill_cause is None:
                        child.kill_cause = STOP_CAUSE[self.stopping]
                        self._signal(child, signal.SIGKILL)
            elif self.stopping is StopMode.GRACEFUL and now >= self.next_extend:
                self.next_extend = now + 5
                left = self.stop_deadline - now
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int((left + 10) * 1e6)}")
        else:
            self.crash_loop.end_if_healthy(self._current(), now)
            self._ensure_children(now)
        for child in self.children:
            signum = watchdog.enforce(child, now, self.hard_timeout_grace)
            if signum is not None:
                self._signal(child, signum)
        self._recycle(now)
        if self.notifier.watchdog_interval and now >= self.next_watchdog:
            self.next_watchdog = now + self.notifier.watchdog_interval
            self.notifier.notify("WATCHDOG=1")
        self._set_title()

    def _recycle(self, now: float) -> None:
        if self.stopping or self.reloading or any(c.state is ChildState.RETIRING for c in self.children):
            return  # at most one child recycling at a time
        picked = self.recycler.pick(self._current(), now)
        if picked is not None:
            child, reason = picked
            log.info("recycling child", index=child.index, pid=child.pid, reason=reason)
            child.state = ChildState.RETIRING

    # --- status -------------------------------------------------------------------------------
    def _status(self) -> str:
        try:
            line = self.app.status_line(self.view())
        except Exception:
            line = f"{len(self.children)} children"
        return line + self.crash_loop.status()

    def _set_title(self) -> None:
        status = self._status()
        if status != self.last_status:
            self.last_status = status
            setproctitle(f"{self.title} master {status}"[:200])
            self.notifier.notify(f"STATUS={status}"[:400])

    def _teardown(self) -> None:
        try:
            self.app.shutdown()
        except Exception:
            log.exception("shutdown failed")
        signal.set_wakeup_fd(-1)
        for signum in HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        log.info("master stopped")
        self.notifier.close()


def _record(signum: int, frame: Any) -> None:
    """Handlers only exist so the interpreter writes the signal number to the wakeup fd."""
