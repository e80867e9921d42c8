"""Report failed jobs to Sentry (``pip install 'prefork-work[sentry]'``).

    import sentry_sdk
    from prefork_work.contrib.sentry import sentry_middleware

    sentry_sdk.init(dsn=...)          # in the job module: every child inherits the client
    app.middleware(sentry_middleware)  # first, so it sees what every later middleware raises

A job that raises is reported once per failed run, with a ``job`` context (name, id, args,
fails so far) and ``job_name``/``job_id`` tags, then re-raised so the worker retries or
buries it as usual. A fast stop's interruption is not a failure and is not reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sentry_sdk

from prefork_work.job import Job


def sentry_middleware(job: Job, next: Callable[[], Any]) -> Any:
    try:
        return next()
    except Exception as err:
        with sentry_sdk.new_scope() as scope:  # the context is this job's alone
            scope.set_context("job", {"name": job.name, "id": job.id, "args": job.args,
                                      "fails": job.fails, "enqueued_at": job.t})
            scope.set_tag("job_name", job.name)
            scope.set_tag("job_id", job.id)
            scope.set_transaction_name(job.name)
            sentry_sdk.capture_exception(err)
        raise
