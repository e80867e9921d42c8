"""What runs in a child between fork and exit: its context, signals and title."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from setproctitle import setproctitle

from supervisor.exitcodes import EX_CHILD_BOOT
from supervisor.scoreboard import Liveness, Slot

log = structlog.get_logger("supervisor.child")

PR_SET_PDEATHSIG = 1
HARD_TIMEOUT_SIGNAL = signal.SIGUSR2


class Interrupted(BaseException):
    """Raised inside a running job on a fast stop (INT/QUIT): the job did not fail.

    A BaseException, so that a job's ``except Exception`` does not swallow it.
    """


class HardTimeout(Exception):
    """Raised inside a job the master is about to kill for running past its hard timeout."""

    def __init__(self) -> None:
        super().__init__("hard timeout")


class ChildContext:
    """The child's view of the supervisor."""

    def __init__(
        self, index: int, generation: int, slot: Slot,
        status_fd: int, master_pid: int, title: str, max_jobs: int | None = None,
        liveness: Liveness | None = None, slots: list[Slot] | None = None, key: int = 0,
    ) -> None:
        self.index = index
        self.generation = generation
        self.key = key  # the ChildView.key the application's prepare_child saw
        self.slot = slot
        self.slots = slots or [slot]  # one per job the child may run at once
        self.status_fd = status_fd
        self.master_pid = master_pid
        self.title = title
        # the job budget before recycling: the child stops fetching there, so a batch
        # fetched ahead never carries it past (the master retires it once a successor runs)
        self.max_jobs = max_jobs
        self.stop_requested = False
        self.quiet = False
        self.in_job = False
        self.is_ready = False
        self.liveness = liveness
        self.current_label = ""  # the job inside job(), for whoever logs an interruption
        self.interrupted_label = ""  # the job a fast stop (INT/QUIT) interrupted
        self.interrupted = False  # a fast stop (INT/QUIT) was asked for
        self.master_unresponsive = False  # set by the child's main while it waits (title)

    def master_alive(self) -> bool:
        return os.getppid() == self.master_pid

    def master_silence(self) -> float:
        """Seconds since the master last showed a sign of life (its loop stamps the scoreboard).

        A master that is alive but frozen (SIGSTOP, a slow call) is not dead: the child does
        not exit, but it should not take new work that nobody heartbeats for."""
        return self.liveness.silence() if self.liveness is not None else 0.0

    def ready(self) -> None:
        """Tell the master this child booted (its job code imported, its Redis reachable)."""
        self.is_ready = True
        self.send({"event": "ready"})

    def send(self, message: dict[str, Any]) -> None:
        try:
            os.write(self.status_fd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # the master is gone; master_alive() tells the loop

    @contextlib.contextmanager
    def job(self, label: str, deadline: float | None = None, extra: bytes = b"") -> Iterator[None]:
        """Mark the slot busy; while inside, INT/QUIT and the hard-timeout signal raise here."""
        self.slot.begin(label, deadline, extra)
        self.current_label = label
        self.in_job = True
        try:
            yield
        finally:
            self.in_job = False
            self.current_label = ""
            self.slot.end()

    # --- signal handlers (the child's own) --------------------------------------------------
    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        self.interrupted = True
        if self.in_job:
            self.interrupted_label = self.current_label
            raise Interrupted()

    def _on_hard_timeout(self, signum: int, frame: Any) -> None:
        if self.in_job:
            raise HardTimeout()

    def _on_quiet(self, signum: int, frame: Any) -> None:
        self.quiet = signum == signal.SIGTSTP


def _set_parent_death_signal(signum: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: master_alive() polling still ends the child


def run_child(
    ctx: ChildContext,
    main: Callable[[ChildContext], int],
    handled: list[signal.Signals],
    close_fds: list[int],
) -> None:
    """Set the child up after fork, run ``main`` and exit; never returns to master code."""
    code = 1
    try:
        for signum in handled:
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        # An orphaned child stops at once and puts its running job back (INT), rather than
        # running unsupervised with no heartbeat and no timeout enforcement.
        _set_parent_death_signal(signal.SIGINT)
        if not ctx.master_alive():
            os._exit(0)
        setproctitle(f"{ctx.title} child {ctx.index} booting")
        signal.signal(signal.SIGTERM, ctx._on_term)
        signal.signal(signal.SIGINT, ctx._on_interrupt)
        signal.signal(signal.SIGQUIT, ctx._on_interrupt)
        signal.signal(HARD_TIMEOUT_SIGNAL, ctx._on_hard_timeout)
        signal.signal(signal.SIGTSTP, ctx._on_quiet)
        signal.signal(signal.SIGCONT, ctx._on_quiet)
        for ignored in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(ignored, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        threading.Thread(target=_title_loop, args=(ctx,), daemon=True).start()
        code = main(ctx)
    except Interrupted:
        code = 0
    except BaseException as err:  # the child's top frame: log, tell the master, exit
        detail = f"{type(err).__name__}: {err}"
        log.error("child failed", index=ctx.index, error=detail, exc_info=True)
        if not ctx.is_ready:
            ctx.send({"event": "fatal", "error": detail, "traceback": traceback.format_exc()})
            code = EX_CHILD_BOOT
        else:
            code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _title_loop(ctx: ChildContext) -> None:
    """Refresh the process title once a second from the slot: off the per-job path."""
    last = ""
    while True:
        state = ctx.slot.read()
        if len(ctx.slots) > 1:
            busy = sum(1 for s in ctx.slots if s.read().busy)
            if busy:
                title = f"{ctx.title} child {ctx.index} busy {busy}/{len(ctx.slots)}"
            elif ctx.quiet:
                title = f"{ctx.title} child {ctx.index} quiet"
            else:
                title = f"{ctx.title} child {ctx.index} idle 0/{len(ctx.slots)}"
        elif state.busy:
            name = state.label.partition(" ")[2] or state.label
            title = f"{ctx.title} child {ctx.index} busy {name} {time.monotonic() - state.started_mono:.1f}s"
        elif ctx.quiet:
            title = f"{ctx.title} child {ctx.index} quiet"
        elif ctx.master_unresponsive:
            title = f"{ctx.title} child {ctx.index} waiting for an unresponsive master"
        else:
            title = f"{ctx.title} child {ctx.index} idle"
        if title != last:
            setproctitle(title)
            last = title
        time.sleep(1.0)
