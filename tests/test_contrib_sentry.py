"""prefork_work.contrib.sentry: a failed job reaches Sentry with its context (through a
transport that keeps envelopes in memory: no network)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sentry_sdk  # the sentry extra, installed by the test extra
from sentry_sdk.transport import Transport

from prefork_work.app import App
from prefork_work.contrib.sentry import sentry_middleware
from prefork_work.enqueuer import Enqueuer
from prefork_work.keys import Keys
from prefork_work.worker import Worker


class CapturingTransport(Transport):
    def __init__(self, options: dict | None = None) -> None:
        super().__init__(options)
        self.envelopes: list = []

    def capture_envelope(self, envelope) -> None:  # type: ignore[override]
        self.envelopes.append(envelope)

    def flush(self, timeout: float, callback=None) -> None:  # type: ignore[override]
        pass

    def kill(self) -> None:
        pass


@pytest.fixture
def transport() -> Iterator[CapturingTransport]:
    sentry_sdk.init(dsn="https://public@sentry.invalid/1", transport=CapturingTransport,
                    default_integrations=False, auto_enabling_integrations=False)
    captured = sentry_sdk.get_client().transport
    assert isinstance(captured, CapturingTransport)
    yield captured
    sentry_sdk.init()  # a disabled client again: nothing leaks into other tests


def test_failed_job_is_reported_with_its_context(r, transport) -> None:
    app = App()
    app.middleware(sentry_middleware)

    @app.job("invoice")
    def invoice(job) -> None:
        if job.args["n"] == 7:
            raise ValueError("bad invoice 7")

    enqueuer = Enqueuer("s", r)
    ok = enqueuer.enqueue("invoice", {"n": 1})
    bad = enqueuer.enqueue("invoice", {"n": 7})
    assert Worker(app, r, "s").drain() == 2
    reported = [e.get_event() for e in transport.envelopes if e.get_event()]
    assert len(reported) == 1  # the successful job reports nothing
    event = reported[0]
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "ValueError" and exception["value"] == "bad invoice 7"
    assert event["contexts"]["job"] == {"name": "invoice", "id": bad.id, "args": {"n": 7},
                                        "fails": 0, "enqueued_at": bad.t}
    assert event["tags"] == {"job_name": "invoice", "job_id": bad.id}
    assert event["transaction"] == "invoice"
    assert ok.id not in str(event)
    # still an ordinary failure: retried with its error
    (retry,) = r.zrange(Keys("s").retry(), 0, -1)
    assert bad.id.encode() in retry and b"bad invoice 7" in retry


class Interrupted(BaseException):
    """Like supervisor.Interrupted, what INT/QUIT raises in a running job: a BaseException
    (under pytest, tests/supervisor/ shadows the supervisor package in this process)."""


def test_a_fast_stop_interruption_is_not_reported(r, transport) -> None:
    app = App()
    app.middleware(sentry_middleware)

    @app.job("long")
    def long(job) -> None:
        raise Interrupted()  # what INT/QUIT raises inside a running job

    Enqueuer("s", r).enqueue("long", {})
    with pytest.raises(Interrupted):
        Worker(app, r, "s", requeue_exceptions=(Interrupted,)).drain()
    assert transport.envelopes == []
