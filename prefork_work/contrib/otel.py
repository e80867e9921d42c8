"""One OpenTelemetry span per job run (``pip install 'prefork-work[otel]'``; you bring the SDK
and an exporter).

    from prefork_work.contrib.otel import OpenTelemetryMiddleware

    app.middleware(OpenTelemetryMiddleware())   # first, so the span covers every other middleware

The span is named after the job, of kind CONSUMER, with the job's id, name and fails so far
as attributes; a job that raises ends its span with status ERROR and the exception recorded
(and still fails as usual). Without ``tracer_provider`` the global provider is looked up at
each job, so a provider set up later (in ``on_child_start``) is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from prefork_work.job import Job

INSTRUMENTATION = "prefork_work"


class OpenTelemetryMiddleware:
    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer_provider = tracer_provider

    def __call__(self, job: Job, next: Callable[[], Any]) -> Any:
        tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=self.tracer_provider)
        attributes: dict[str, str | int] = {
            "messaging.system": "prefork_work",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.name,  # a job name is its queue
            "messaging.message.id": job.id,
            "prefork_work.job.fails": job.fails,
        }
        # start_as_current_span records an escaping exception and sets status ERROR
        with tracer.start_as_current_span(job.name, kind=trace.SpanKind.CONSUMER,
                                          attributes=attributes):
            return next()
