"""prefork_work.contrib.otel: one span per job, named after it (the SDK's in-memory exporter)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from prefork_work.app import App
from prefork_work.contrib.otel import OpenTelemetryMiddleware
from prefork_work.enqueuer import Enqueuer
from prefork_work.worker import Worker


def test_each_job_runs_in_a_span_named_after_it(r) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App()
    app.middleware(OpenTelemetryMiddleware(tracer_provider=provider))

    @app.job("resize")
    def resize(job) -> None:
        with provider.get_tracer("app").start_as_current_span("load image"):
            pass

    @app.job("fail")
    def fail(job) -> None:
        raise RuntimeError("disk full")

    enqueuer = Enqueuer("o", r)
    ok = enqueuer.enqueue("resize", {"w": 10})
    bad = enqueuer.enqueue("fail", {})
    assert Worker(app, r, "o").drain() == 2

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"resize", "fail", "load image"}
    job_span = spans["resize"]
    assert job_span.kind is SpanKind.CONSUMER
    assert job_span.attributes["messaging.message.id"] == ok.id
    assert job_span.attributes["messaging.destination.name"] == "resize"
    assert job_span.attributes["prefork_work.job.fails"] == 0
    assert job_span.status.status_code is StatusCode.UNSET
    # the handler's own spans are children of the job's span
    assert spans["load image"].parent.span_id == job_span.context.span_id

    failed = spans["fail"]
    assert failed.attributes["messaging.message.id"] == bad.id
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes["exception.message"] == "disk full"
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left open
