"""The prefork master: forks children, watches them, runs timers, speaks to systemd.

Single-threaded, no threads at all (it forks). One ``selectors`` loop waits on a self-pipe
that the interpreter writes signal numbers to (``signal.set_wakeup_fd``), on one status pipe
per child, and on the next timer. Signal handlers do nothing; the loop dispatches.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import random
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil
import structlog
from setproctitle import setproctitle

from supervisor.child import HARD_TIMEOUT_SIGNAL, ChildContext, run_child
from supervisor.exitcodes import EX_OK
from supervisor.exitinfo import ExitInfo
from supervisor.scoreboard import MAX_SLOTS, Scoreboard, Slot
from supervisor.systemd import Notifier

log = structlog.get_logger("supervisor")

HANDLED = [
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGTSTP, signal.SIGCONT, signal.SIGCHLD,
]
FAST_STOP_GRACE = 2.0
# A ready child that dies this soon after it was ready, running no job, failed at start as
# surely as one that never got ready (nothing to blame but its own code or environment);
# a child alive this long after ready proves the children boot again.
BOOT_GRACE = 2.0
MAX_BACKOFF = 60.0
HOUSEKEEPING = 0.25


@dataclass(slots=True)
class PeriodicTask:
    name: str
    interval: float
    fn: Callable[[float], Any]
    run_at_start: bool = True


class ChildApp(Protocol):
    def prepare_child(self, child: Child) -> None: ...
    def child_main(self, ctx: ChildContext) -> int: ...
    def child_exited(self, child: Child, info: ExitInfo) -> None: ...
    def reload(self) -> None: ...
    def status_line(self) -> str: ...
    def tasks(self) -> list[PeriodicTask]: ...
    def shutdown(self) -> None: ...


@dataclass(eq=False)
class Child:
    """The master's record of one child."""

    index: int
    generation: int
    slot_number: int
    slot: Slot
    # one sub-slot per job the child may run at once (jobs_per_child); slots[0] is slot
    slots: list[Slot] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    started_mono: float = 0.0
    state: str = "booting"  # booting, running, retiring (replace when a successor is ready), stopping
    ready: bool = False
    ready_mono: float = 0.0
    kill_cause: str | None = None
    max_jobs: int | None = None
    fatal: str | None = None
    pipe_fd: int = -1
    buffer: bytes = b""
    timeout_label: str | None = None
    timeout_sent: float = 0.0
    born_over_memory: bool = False  # over the limit at its first check: recycling cannot help

    def __post_init__(self) -> None:
        if not self.slots:
            self.slots = [self.slot]

    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.read().busy)

    def jobs_done(self) -> int:
        return sum(s.read().jobs_done for s in self.slots)


class Supervisor:
    def __init__(
        self,
        app: ChildApp,
        *,
        concurrency: int,
        shutdown_timeout: float = 30.0,
        title: str = "prefork-work",
        hard_timeout_grace: float = 5.0,
        max_memory_per_child: int | None = None,
        max_jobs_per_child: int | None = None,
        max_jobs_jitter: float = 0.1,
        memory_check_interval: float = 5.0,
        notify: bool = True,
        jobs_per_child: int = 1,
    ) -> None:
        self.app = app
        self.target = max(1, concurrency)
        self.shutdown_timeout = shutdown_timeout
        self.title = title
        self.hard_timeout_grace = hard_timeout_grace
        self.max_memory = max_memory_per_child
        self.max_jobs = max_jobs_per_child
        self.max_jobs_jitter = max_jobs_jitter
        self.memory_check_interval = memory_check_interval
        # fixed for the life of the master: the scoreboard is laid out for it before any fork
        self.jobs_per_child = jobs_per_child
        self.notifier = Notifier(notify)
        self.children: list[Child] = []
        self.generation = 0
        self.stopping: str | None = None  # "graceful" or "fast"
        self.stop_deadline = 0.0
        self.failures = 0
        self.next_spawn_at = 0.0
        self.crash_reason: str | None = None
        self.last_failure = 0.0  # monotonic time of the last start failure
        self.announced_ready = False
        self.reloading = False
        self.quiet = False
        self.pid = os.getpid()
        self.scoreboard: Scoreboard | None = None
        self.free_slots: list[int] = []
        self.selector: selectors.BaseSelector | None = None
        self.wake_r = self.wake_w = -1
        self.timers: list[tuple[float, int, PeriodicTask]] = []
        self.last_status = ""
        self.next_memory_check = 0.0
        self.next_watchdog = 0.0
        self.next_extend = 0.0
        self.dispatch: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self.stop("graceful"),
            signal.SIGINT: lambda: self.stop("fast"),
            signal.SIGQUIT: lambda: self.stop("fast"),
            signal.SIGHUP: self.reload,
            signal.SIGTTIN: self.grow,
            signal.SIGTTOU: self.shrink,
            signal.SIGTSTP: lambda: self.set_quiet(True),
            signal.SIGCONT: lambda: self.set_quiet(False),
            signal.SIGCHLD: self.reap,
        }

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
        now = time.monotonic()
        for order, task in enumerate(self.app.tasks()):
            first = now if task.run_at_start else now + task.interval
            heapq.heappush(self.timers, (first, order, task))
        self._set_title()
        log.info("master started", pid=self.pid, concurrency=self.target)

    def _loop_once(self) -> None:
        assert self.selector is not None and self.scoreboard is not None
        now = time.monotonic()
        self.scoreboard.liveness.stamp(now)  # children stop fetching when this goes stale
        timeout = HOUSEKEEPING
        if self.timers:
            timeout = max(0.0, min(timeout, self.timers[0][0] - now))
        for key, _ in self.selector.select(timeout):
            if key.fd == self.wake_r:
                self._read_signals()
            else:
                self._read_child(key.data)
        self.reap()
        self._run_timers()
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

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, order, task = heapq.heappop(self.timers)
            try:
                task.fn(time.time())
            except Exception:  # one failing tick must not stop the master
                log.exception("periodic task failed", task=task.name)
            if self.scoreboard is not None:  # a few slow tasks in a row are not a frozen master
                self.scoreboard.liveness.stamp()
            # after a stall, skip missed runs rather than bursting
            heapq.heappush(self.timers, (max(now, time.monotonic()) + task.interval, order, task))

    def configure(
        self, *, concurrency: int, shutdown_timeout: float, hard_timeout_grace: float,
        max_jobs_per_child: int | None, max_memory_per_child: int | None,
    ) -> None:
        """New settings from a reloaded config; the next generation of children uses them."""
        self.target = max(1, concurrency)
        self.shutdown_timeout = shutdown_timeout
        self.hard_timeout_grace = hard_timeout_grace
        self.max_jobs = max_jobs_per_child
        self.max_memory = max_memory_per_child

    # --- children --------------------------------------------------------------------------
    def spawn(self) -> Child | None:
        assert self.scoreboard is not None
        if not self.free_slots:
            log.error("no free scoreboard slot; not forking")
            return None
        number = self.free_slots.pop()
        index = self._free_index()
        slots = self.scoreboard.slots(number)
        child = Child(index, self.generation, number, slots[0], slots)
        for slot in slots:
            slot.reset()
        if self.max_jobs:
            child.max_jobs = int(self.max_jobs * (1 + random.uniform(0, self.max_jobs_jitter)))
        try:
            self.app.prepare_child(child)
        except Exception:
            log.exception("prepare_child failed")
            self.free_slots.append(number)
            self._backoff("prepare_child failed")
            return None
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
            if pid == 0:  # the child
                ctx = ChildContext(index, self.generation, child.slot, child.data, write_fd,
                                   self.pid, self.title, child.max_jobs, self.scoreboard.liveness,
                                   slots=child.slots)
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
            self._check_newborn_memory(child)
            if child.state == "booting":
                child.state = "running"
            self._retire_one_replaced()
            if not self.announced_ready and self._current_ready() >= 1:
                self.announced_ready = True
                self.notifier.notify("READY=1", f"STATUS={self._status()}")
        elif event == "fatal":
            child.fatal = str(message.get("error", "unknown error"))

    def _check_newborn_memory(self, child: Child) -> None:
        """A child over the limit as soon as it is ready would be replaced by one just as big:
        recycling it would only be a respawn loop, so it is left alone, and said so once."""
        if not self.max_memory:
            return
        try:
            rss = psutil.Process(child.pid).memory_info().rss
        except psutil.Error:
            return
        if rss > self.max_memory:
            child.born_over_memory = True
            log.warning("a new child is already over the memory limit; not recycling it",
                        index=child.index, rss=rss, limit=self.max_memory)

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
        expected = child.state in ("retiring", "stopping") or self.stopping is not None
        log_fn = log.info if expected and (info.clean or info.cause) else log.warning
        log_fn("child exited", index=child.index, pid=child.pid, cause=info.cause or info.describe(),
               lifetime=round(lifetime, 2), error=child.fatal)
        try:
            self.app.child_exited(child, info)
        except Exception:
            log.exception("child_exited failed", pid=child.pid)
        if expected:
            return
        # Only a child that fails at start is a crash loop to back off from. A child that
        # dies running a job (the job's segfault, os._exit, OOM kill, a SIGKILL) is replaced
        # at once: the job's crash is counted (child_exited) and max_crashes ends it, while
        # backing off would leave every queue without a worker over one bad job.
        if not child.ready:
            self._backoff(child.fatal or f"child exited with {info.describe()} {lifetime:.1f}s "
                          "after start, before it was ready")
        elif (not busy and now - child.ready_mono < BOOT_GRACE
              # SIGKILL comes from outside (the OOM killer, an operator, a kill storm), not
              # from the child's own code: such a child is replaced at once
              and info.signal != signal.SIGKILL):
            self._backoff(f"child exited with {info.describe()} {now - child.ready_mono:.1f}s "
                          "after it was ready, running no job")

    def _backoff(self, reason: str) -> None:
        self.failures += 1
        self.last_failure = time.monotonic()
        delay = min(MAX_BACKOFF, 2.0 ** (self.failures - 1))
        self.next_spawn_at = time.monotonic() + delay
        self.crash_reason = reason
        log.error("children are failing at start; backing off", failures=self.failures,
                  retry_in=delay, reason=reason)
        self.notifier.notify(f"STATUS=crash loop ({self.failures} failures): {reason}"[:400])

    def _end_crash_loop(self, now: float) -> None:
        """Children boot and stay up again: clear the backoff, the title and STATUS.

        Only a child forked after the last failure proves it: an old healthy child says
        nothing about a sibling that keeps failing at boot, which must go on backing off."""
        if self.failures and any(
            c.ready and c.started_mono > self.last_failure and now - c.ready_mono >= BOOT_GRACE
            for c in self._current()
        ):
            log.info("children are healthy again; crash loop over", failures=self.failures)
            self.failures = 0
            self.crash_reason = None
            self.next_spawn_at = 0.0

    def _current(self) -> list[Child]:
        return [c for c in self.children if c.state in ("booting", "running")]

    def _current_ready(self) -> int:
        return sum(1 for c in self._current() if c.ready)

    def _ensure_children(self) -> None:
        if self.stopping or time.monotonic() < self.next_spawn_at:
            return
        missing = self.target - len(self._current())
        if missing <= 0:
            return
        # while children are failing, fork one at a time: never a fork storm
        for _ in range(1 if self.failures else missing):
            if self.spawn() is None:
                break
        if self.failures:
            self.next_spawn_at = time.monotonic() + min(MAX_BACKOFF, 2.0 ** (self.failures - 1))

    def _retire_one_replaced(self) -> None:
        """A new child is ready: let one child waiting for its successor go."""
        for child in self.children:
            if child.state == "retiring" and child.kill_cause is None and not child.data.get("_term_sent"):
                child.data["_term_sent"] = True
                self._signal(child, signal.SIGTERM)
                break
        if self.reloading and not any(
            c.state == "retiring" and not c.data.get("_term_sent") for c in self.children
        ):
            self.reloading = False
            self.notifier.notify("READY=1", f"STATUS={self._status()}")
            log.info("reload complete", generation=self.generation)

    def _signal(self, child: Child, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    # --- signals -------------------------------------------------------------------------------
    def stop(self, mode: str) -> None:
        if self.stopping == "fast" or (self.stopping == mode):
            return
        self.stopping = mode
        grace = self.shutdown_timeout if mode == "graceful" else FAST_STOP_GRACE
        self.stop_deadline = time.monotonic() + grace
        log.info("stopping", mode=mode, children=len(self.children), timeout=grace)
        self.notifier.notify("STOPPING=1", f"STATUS=stopping ({mode})",
                             f"EXTEND_TIMEOUT_USEC={int((grace + 10) * 1e6)}")
        for child in self.children:
            child.state = "stopping"
            self._signal(child, signal.SIGTERM if mode == "graceful" else signal.SIGINT)

    def reload(self) -> None:
        if self.stopping:
            return
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1e6)}")
        try:
            self.app.reload()
        except Exception as err:
            log.error("reload failed; keeping the running generation", error=f"{type(err).__name__}: {err}")
            self.notifier.notify("READY=1", f"STATUS=reload failed: {err}"[:400])
            return
        self.generation += 1
        self.reloading = True
        for child in self.children:
            if child.state in ("booting", "running"):
                child.state = "retiring"
        log.info("reloading", generation=self.generation)
        self.failures = 0
        self.next_spawn_at = 0.0

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
            victim.state = "stopping"
            self._signal(victim, signal.SIGTERM)
        log.info("one child fewer", target=self.target)

    def set_quiet(self, quiet: bool) -> None:
        self.quiet = quiet
        for child in self.children:
            self._signal(child, signal.SIGTSTP if quiet else signal.SIGCONT)
        log.info("quiet" if quiet else "resumed")

    # --- watchdog ------------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if now > self.stop_deadline:
                cause = "shutdown timeout" if self.stopping == "graceful" else "interrupted"
                for child in self.children:
                    if child.kill_cause is None:
                        child.kill_cause = cause
                        self._signal(child, signal.SIGKILL)
            elif self.stopping == "graceful" and now >= self.next_extend:
                self.next_extend = now + 5
                left = self.stop_deadline - now
                self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int((left + 10) * 1e6)}")
        else:
            self._end_crash_loop(now)
            self._ensure_children()
        self._enforce_timeouts(now)
        self._recycle(now)
        if self.notifier.watchdog_interval and now >= self.next_watchdog:
            self.next_watchdog = now + self.notifier.watchdog_interval
            self.notifier.notify("WATCHDOG=1")
        self._set_title()

    def _enforce_timeouts(self, now: float) -> None:
        for child in self.children:
            if len(child.slots) > 1:
                self._enforce_timeouts_shared(child, now)
                continue
            state = child.slot.read()
            if not state.busy or state.deadline is None or now < state.deadline:
                child.timeout_label = None
                continue
            if child.timeout_label != f"{state.seq}":
                child.timeout_label = f"{state.seq}"
                child.timeout_sent = now
                log.warning("hard timeout; interrupting the job", index=child.index, pid=child.pid,
                            job=state.label)
                self._signal(child, HARD_TIMEOUT_SIGNAL)
            elif now - child.timeout_sent > self.hard_timeout_grace and child.kill_cause is None:
                child.kill_cause = "hard timeout"
                log.error("hard timeout; killing the child", index=child.index, pid=child.pid,
                          job=state.label)
                self._signal(child, signal.SIGKILL)

    def _enforce_timeouts_shared(self, child: Child, now: float) -> None:
        """A child running several jobs at once cannot interrupt one of them (a thread cannot
        be interrupted, and a signal would hit whichever job the main thread runs): a job past
        its hard timeout recycles the whole child at once. The application judges the jobs
        (child_exited): the late ones failed, the others go back to their queues uncounted."""
        if child.kill_cause is not None:
            return
        for slot in child.slots:
            state = slot.read()
            if state.busy and state.deadline is not None and now >= state.deadline:
                child.kill_cause = "hard timeout"
                log.error("hard timeout; killing the child", index=child.index, pid=child.pid,
                          job=state.label, in_flight=child.busy_slots())
                self._signal(child, signal.SIGKILL)
                return

    def _recycle(self, now: float) -> None:
        if self.stopping or self.reloading or any(c.state == "retiring" for c in self.children):
            return  # at most one child recycling at a time
        check_memory = self.max_memory and now >= self.next_memory_check
        if check_memory:
            self.next_memory_check = now + self.memory_check_interval
        for child in self._current():
            if not child.ready:
                continue
            reason = None
            if child.max_jobs and child.jobs_done() >= child.max_jobs:
                reason = "max jobs"
            elif check_memory:
                try:
                    rss = psutil.Process(child.pid).memory_info().rss
                except psutil.Error:
                    continue
                if self.max_memory and rss > self.max_memory and not child.born_over_memory:
                    reason = "memory limit"
            if reason:
                log.info("recycling child", index=child.index, pid=child.pid, reason=reason)
                child.state = "retiring"
                child.data["_recycle_reason"] = reason
                return

    # --- status -------------------------------------------------------------------------------
    def _status(self) -> str:
        try:
            line = self.app.status_line()
        except Exception:
            line = f"{len(self.children)} children"
        if self.failures and self.crash_reason:
            line += f"; crash loop: {self.crash_reason}"
        return line

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
