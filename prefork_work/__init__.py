"""prefork-work: a Redis-backed background job server, wire-compatible with gocraft/work.

    from prefork_work import App, Enqueuer, Worker, Client, Job

The names are imported on first use (PEP 562), so ``import prefork_work`` stays cheap for
the ``supervisor``-only and CLI paths and no import cycle can form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["App", "Client", "Enqueuer", "Job", "JobStatus", "Worker", "__version__"]

_LAZY = {
    "App": "prefork_work.app",
    "Client": "prefork_work.client",
    "Enqueuer": "prefork_work.enqueuer",
    "Job": "prefork_work.job",
    "JobStatus": "prefork_work.client",
    "Worker": "prefork_work.worker",
}

if TYPE_CHECKING:
    from prefork_work.app import App
    from prefork_work.client import Client, JobStatus
    from prefork_work.enqueuer import Enqueuer
    from prefork_work.job import Job
    from prefork_work.worker import Worker


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prefork_work' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
