"""The application's registry: job types, middleware and periodic jobs.

An ``App`` is built at import time of the user's job module; the master imports it before
forking (so a broken module fails the start, not every child), and every worker reads it.
Options are validated here, at registration, with errors that name the job.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from prefork_work.errors import ConfigError
from prefork_work.job import Job

Handler = Callable[[Job], Any]
Middleware = Callable[[Job, Callable[[], Any]], Any]
Backoff = Callable[[Job], float]
Hook = Callable[[], Any]
HookEvent = Literal["startup", "child_start", "child_exit", "shutdown"]

log = structlog.get_logger("prefork_work.app")

# Start hooks stop at the first failure (a later one may need what an earlier one set up);
# exit hooks are clean-ups: every one runs, a failure is logged, and the process carries on.
START_EVENTS: tuple[HookEvent, ...] = ("startup", "child_start")
HOOK_EVENTS: tuple[HookEvent, ...] = ("startup", "child_start", "child_exit", "shutdown")


class HookFailed(ConfigError):
    """A lifecycle hook raised; the message names the hook. At startup it exits 78 like an
    import error (a ConfigError); in a child it fails that child's start."""

    def __init__(self, event: HookEvent, hook: Hook, error: BaseException) -> None:
        self.event = event
        self.hook_name = hook_name(hook)
        self.error = error
        super().__init__(
            f"on_{event} hook {self.hook_name} failed: {type(error).__name__}: {error}"
        )


def hook_name(hook: Hook) -> str:
    module = getattr(hook, "__module__", None) or "?"
    return f"{module}.{getattr(hook, '__qualname__', repr(hook))}"

MAX_PRIORITY = 100_000  # gocraft's check (its docs say 10000; the code enforces 100000)
DEFAULT_MAX_FAILS = 4


@dataclass(frozen=True, slots=True)
class JobType:
    """A registered job name and its options (gocraft's JobOptions)."""

    name: str
    handler: Handler
    priority: int = 1
    max_fails: int = DEFAULT_MAX_FAILS
    skip_dead: bool = False
    max_concurrency: int = 0
    backoff: Backoff | None = None
    timeout: float | None = None
    hard_timeout: float | None = None
    # with jobs_per_child > 1 a sync handler runs in the child's thread pool; False runs it
    # alone on the child's main thread (for code that is not thread-safe)
    threads: bool = True
    status: bool = False  # record each run's outcome for Client.job_status (README "Job status")

    @property
    def is_async(self) -> bool:
        """An ``async def`` handler: it runs on the child's event loop."""
        return is_async_callable(self.handler)


def is_async_callable(fn: object) -> bool:
    """``async def`` functions, and callables whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None))  # noqa: B004 - the bound __call__ of an instance


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """``name`` is enqueued at every activation of the cron ``spec``."""

    spec: str
    name: str


def validate_job_name(name: object) -> str:
    """Names go into Redis keys unescaped: ``:`` would collide keys, ``,`` breaks heartbeats."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"job name must be a non-empty string, got {name!r}")
    for bad in (":", ","):
        if bad in name:
            raise ValueError(f"job name {name!r} must not contain {bad!r}")
    return name


class App:
    """Registry of job types; ``context`` makes the per-job object shared by middleware and handler."""

    def __init__(self, context: Callable[[], Any] = types.SimpleNamespace) -> None:
        self.context_factory = context
        self.job_types: dict[str, JobType] = {}
        self.middlewares: list[Middleware] = []
        self.periodic_jobs: list[PeriodicJob] = []
        self.hooks: dict[HookEvent, list[Hook]] = {event: [] for event in HOOK_EVENTS}

    def job(
        self,
        name: str,
        *,
        priority: int = 1,
        max_fails: int = DEFAULT_MAX_FAILS,
        skip_dead: bool = False,
        max_concurrency: int = 0,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        hard_timeout: float | None = None,
        threads: bool = True,
        status: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``fn(job)`` (a function or an ``async def``) as the handler
        of ``name``; ``threads=False`` keeps a sync handler off the thread pool."""

        def register(fn: Handler) -> Handler:
            self.register(
                name,
                fn,
                priority=priority,
                max_fails=max_fails,
                skip_dead=skip_dead,
                max_concurrency=max_concurrency,
                backoff=backoff,
                timeout=timeout,
                hard_timeout=hard_timeout,
                threads=threads,
                status=status,
            )
            return fn

        return register

    def register(self, name: str, handler: Handler, **options: Any) -> JobType:
        """Register (or replace, as gocraft does) the handler of ``name``."""
        try:
            validate_job_name(name)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        job_type = JobType(name, handler, **options)
        problem = _problem(job_type)
        if problem:
            raise ConfigError(f"job {name!r}: {problem}")
        if job_type.max_fails == 0:  # gocraft's public API turns 0 into the default
            job_type = _replace(job_type, max_fails=DEFAULT_MAX_FAILS)
        self.job_types[name] = job_type
        return job_type

    @property
    def has_async(self) -> bool:
        """Whether a child must run an event loop: an ``async def`` job or middleware."""
        return any(t.is_async for t in self.job_types.values()) or any(
            is_async_callable(m) for m in self.middlewares)

    def middleware(self, fn: Middleware) -> Middleware:
        """Add ``fn(job, next)``; middleware runs in registration order, the handler last.

        ``async def fn(job, next)`` awaits ``next()``; it runs on the child's event loop
        (a child with one runs one)."""
        if not callable(fn):
            raise ConfigError(f"middleware must be callable, got {fn!r}")
        self.middlewares.append(fn)
        return fn

    # --- lifecycle hooks ---------------------------------------------------------------------
    def on_startup(self, fn: Hook) -> Hook:
        """Run ``fn()`` in the master once the job module is imported, before the first fork
        (and again for the freshly imported module on a reload). Raising stops the start
        with exit 78."""
        return self._add_hook("startup", fn)

    def on_child_start(self, fn: Hook) -> Hook:
        """Run ``fn()`` in every child after fork, before its first fetch (replacement,
        recycled and reloaded children too): reopen what the import opened in the master.
        Raising fails that child's start (the server's crash-loop backoff applies)."""
        return self._add_hook("child_start", fn)

    def on_child_exit(self, fn: Hook) -> Hook:
        """Run ``fn()`` in a child that stops cleanly (drain, recycle, TTOU), after its last
        job is acknowledged. Not on a crash, a kill or a fast stop."""
        return self._add_hook("child_exit", fn)

    def on_shutdown(self, fn: Hook) -> Hook:
        """Run ``fn()`` in the master after the last child is gone."""
        return self._add_hook("shutdown", fn)

    def _add_hook(self, event: HookEvent, fn: Hook) -> Hook:
        if not callable(fn):
            raise ConfigError(f"on_{event} hook must be callable, got {fn!r}")
        self.hooks[event].append(fn)
        return fn

    def run_hooks(self, event: HookEvent) -> None:
        """Call the ``event`` hooks in registration order.

        ``startup`` and ``child_start`` stop at the first hook that raises and raise
        :class:`HookFailed` naming it. ``child_exit`` and ``shutdown`` run every hook and
        log each failure (one clean-up failing must not skip the others)."""
        for hook in self.hooks[event]:
            try:
                hook()
            except Exception as err:
                failed = HookFailed(event, hook, err)
                if event in START_EVENTS:
                    raise failed from err
                log.error("lifecycle hook failed", hook=failed.hook_name, stage=f"on_{event}",
                          error=f"{type(err).__name__}: {err}", exc_info=True)

    def periodically_enqueue(self, spec: str, name: str) -> None:
        """Enqueue ``name`` at every activation of ``spec`` (5 fields, or 6 with seconds first)."""
        from prefork_work import cron

        try:
            validate_job_name(name)
            cron.parse(spec)
        except ValueError as err:
            raise ConfigError(f"periodic job {name!r} ({spec!r}): {err}") from None
        self.periodic_jobs.append(PeriodicJob(spec, name))


def _problem(t: JobType) -> str | None:
    if not callable(t.handler):
        return f"handler must be callable, got {t.handler!r}"
    if not _is_int(t.priority) or not 1 <= t.priority <= MAX_PRIORITY:
        return f"priority must be an integer from 1 to {MAX_PRIORITY}, got {t.priority!r}"
    if not _is_int(t.max_fails) or t.max_fails < 0:
        return f"max_fails must be a non-negative integer, got {t.max_fails!r}"
    if not _is_int(t.max_concurrency) or t.max_concurrency < 0:
        return f"max_concurrency must be a non-negative integer, got {t.max_concurrency!r}"
    if not isinstance(t.threads, bool):
        return f"threads must be a bool, got {t.threads!r}"
    if not isinstance(t.skip_dead, bool):
        return f"skip_dead must be a bool, got {t.skip_dead!r}"
    if not isinstance(t.status, bool):
        return f"status must be a bool, got {t.status!r}"
    if t.backoff is not None and not callable(t.backoff):
        return f"backoff must be callable, got {t.backoff!r}"
    for option in ("timeout", "hard_timeout"):
        value = getattr(t, option)
        if value is not None and (not _is_number(value) or value <= 0):
            return f"{option} must be a positive number of seconds, got {value!r}"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _replace(job_type: JobType, **changes: Any) -> JobType:
    import dataclasses

    return dataclasses.replace(job_type, **changes)
