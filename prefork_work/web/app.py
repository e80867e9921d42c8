"""The web app: gocraft's workwebui routes, our JSON API under /api, the dashboard, /metrics.

Built with FastAPI (on Starlette): routing, request parsing and validation, and the OpenAPI
document come from the library, so the document always matches the routes. Route handlers
are plain functions: FastAPI runs them in its thread pool, which suits the blocking redis-py
Client.

Access rules, enforced on every POST and DELETE (reads are open): ``read_only`` refuses
them; ``token`` requires ``Authorization: Bearer <token>``; a browser request from another
origin is refused, so a web page cannot make an operator's browser change anything here.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

import structlog
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from prefork_work import __version__
from prefork_work.client import Client
from prefork_work.errors import (
    InvalidJobArguments,
    MalformedJob,
    NotDeleted,
    NotRetried,
    RedisUnavailable,
)
from prefork_work.web.views import Views

log = structlog.get_logger("prefork_work.web")

JOB_ID = r"^[A-Za-z0-9_.\-]{1,128}$"
JOB_NAME = r"^[^:,]{1,256}$"


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, for a person")


class Ok(BaseModel):
    status: str = "ok"


class CreateJob(BaseModel):
    name: str = Field(pattern=JOB_NAME, description="job name (no ':' or ',')")
    args: dict[str, Any] | None = Field(None, description="the job's arguments, a JSON object")
    in_seconds: int = Field(0, ge=0, description="run no earlier than this many seconds from now")
    unique: bool = Field(False, description="refuse (409) while the same job is waiting")
    unique_key: dict[str, Any] | None = Field(
        None, description="unique on these values instead of all the args (implies unique)")


class MaxConcurrency(BaseModel):
    max_concurrency: int = Field(ge=0, description="jobs of this name running at once; 0: no cap")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 503)
}
Page = Annotated[str, Query(pattern=r"^[0-9]*$", description="1-based page of 20; empty means 1")]
JobId = Annotated[str, Path(pattern=JOB_ID)]
JobName = Annotated[str, Path(pattern=JOB_NAME)]


def create_app(client: Client, *, read_only: bool = False, token: str | None = None) -> FastAPI:
    """The ASGI app over ``client``'s namespace; mount it anywhere (its links follow root_path)."""
    from prefork_work.web.dashboard import dashboard_router, static_app

    views = Views(client)
    app = FastAPI(
        title="prefork-work", version=__version__,
        description="Operator API of prefork-work: gocraft/work's workwebui routes, and ours "
                    "under /api. POST and DELETE change things; GET never does.",
        openapi_url="/api/openapi.json", docs_url=None, redoc_url=None,
    )
    app.state.views = views
    app.state.read_only = read_only
    app.state.token = token
    _install_error_handlers(app)
    write = [Depends(_writer(read_only, token))]

    # --- gocraft/work's workwebui (same paths and JSON shapes) -----------------------------------
    gocraft = APIRouter(tags=["gocraft workwebui"], responses=ERRORS)
    gocraft_write = APIRouter(tags=["gocraft workwebui"], responses=ERRORS, dependencies=write)

    @gocraft.get("/queues", summary="Queues: job_name, count, latency (seconds)")
    def queues() -> list[dict[str, Any]]:
        return views.queues()

    @gocraft.get("/worker_pools", summary="Worker pool heartbeats")
    def worker_pools() -> list[dict[str, Any]]:
        return views.worker_pools()

    @gocraft.get("/busy_workers", summary="Observations of busy workers ([] when none)")
    def busy_workers() -> list[dict[str, Any]]:
        return views.busy_workers()

    for kind in ("retry", "scheduled", "dead"):
        gocraft.add_api_route(f"/{kind}_jobs", _page_route(views, kind), methods=["GET"],
                              summary=f"A page of {kind} jobs", name=f"gocraft_{kind}_jobs")

    @gocraft_write.post("/delete_dead_job/{died_at}/{job_id}", summary="Delete one dead job")
    def gocraft_delete_dead(died_at: int, job_id: JobId) -> Ok:
        client.delete_dead_job(died_at, job_id)
        return Ok()

    @gocraft_write.post("/retry_dead_job/{died_at}/{job_id}", summary="Retry one dead job")
    def gocraft_retry_dead(died_at: int, job_id: JobId) -> Ok:
        client.retry_dead_job(died_at, job_id)
        return Ok()

    @gocraft_write.post("/delete_all_dead_jobs", summary="Delete every dead job")
    def gocraft_delete_all_dead() -> Ok:
        client.delete_all_dead_jobs()
        return Ok()

    @gocraft_write.post("/retry_all_dead_jobs", summary="Retry every dead job")
    def gocraft_retry_all_dead() -> Ok:
        client.retry_all_dead_jobs()
        return Ok()

    # --- ours, under /api ------------------------------------------------------------------------
    api = APIRouter(prefix="/api", tags=["api"], responses=ERRORS)
    api_write = APIRouter(prefix="/api", tags=["api"], responses=ERRORS, dependencies=write)

    @api.get("/queues", summary="Queues with paused, max_concurrency (0: none) and running")
    def api_queues() -> list[dict[str, Any]]:
        return views.queues_detail()

    @api.get("/overview", summary="Totals and processed/failed per minute for the last hour")
    def api_overview() -> dict[str, Any]:
        from prefork_work.web.history import per_minute, record_minute

        record_minute(client, views.store)
        return {"totals": views.totals(), "per_minute": per_minute(views.store)}

    @api.get("/metrics/queues", summary="Queue depth and latency, in KEDA metrics-api shape",
             description='For KEDA\'s metrics-api scaler: valueLocation "total.count", '
                         '"total.latency", "queues.<name>.count" or "queues.<name>.latency".')
    def api_queue_metrics() -> dict[str, Any]:
        return views.queue_metrics()

    @api.get("/processes", summary="Every host's masters and children, from heartbeats")
    def api_processes() -> list[dict[str, Any]]:
        return views.processes()

    @api.get("/worker_pools", summary="Worker pool heartbeats (as /worker_pools)")
    def api_worker_pools() -> list[dict[str, Any]]:
        return views.worker_pools()

    @api.get("/busy_workers", summary="Busy workers (as /busy_workers)")
    def api_busy_workers() -> list[dict[str, Any]]:
        return views.busy_workers()

    for kind in ("retry", "scheduled", "dead"):
        api.add_api_route(f"/{kind}_jobs", _page_route(views, kind), methods=["GET"],
                          summary=f"A page of {kind} jobs (20 a page)", name=f"api_{kind}_jobs")

    @api.get("/jobs/{job_id}", summary="A job's status by id")
    def api_job_status(job_id: JobId) -> dict[str, Any]:
        try:
            status = views.job_status(job_id)
        except NotImplementedError as err:
            raise ApiError(501, str(err)) from None
        if status is None:
            raise ApiError(404, f"no status known for job {job_id}")
        return status

    @api_write.post("/jobs", status_code=201, summary="Create a job (now, in N seconds, unique)")
    def api_create_job(body: CreateJob) -> dict[str, Any]:
        return _create_job(client, body)

    @api_write.delete("/queues/{name}/jobs/{job_id}", summary="Delete one queued job")
    def api_delete_queued(name: JobName, job_id: JobId) -> Ok:
        views.delete_queued(name, job_id)
        return Ok()

    @api_write.delete("/scheduled_jobs/{run_at}/{job_id}", summary="Delete one scheduled job")
    def api_delete_scheduled(run_at: int, job_id: JobId) -> Ok:
        client.delete_scheduled_job(run_at, job_id)
        return Ok()

    @api_write.delete("/retry_jobs/{retry_at}/{job_id}", summary="Delete one retry job")
    def api_delete_retry(retry_at: int, job_id: JobId) -> Ok:
        client.delete_retry_job(retry_at, job_id)
        return Ok()

    @api_write.delete("/retry_jobs", summary="Delete every retry job")
    def api_delete_all_retry() -> Ok:
        views.delete_all_retry()
        return Ok()

    @api_write.delete("/dead_jobs/{died_at}/{job_id}", summary="Delete one dead job")
    def api_delete_dead(died_at: int, job_id: JobId) -> Ok:
        client.delete_dead_job(died_at, job_id)
        return Ok()

    @api_write.delete("/dead_jobs", summary="Delete every dead job")
    def api_delete_all_dead() -> Ok:
        client.delete_all_dead_jobs()
        return Ok()

    @api_write.post("/dead_jobs/{died_at}/{job_id}/retry", summary="Retry one dead job")
    def api_retry_dead(died_at: int, job_id: JobId) -> Ok:
        client.retry_dead_job(died_at, job_id)
        return Ok()

    @api_write.post("/dead_jobs/retry", summary="Retry every dead job of a known name")
    def api_retry_all_dead() -> dict[str, Any]:
        return {"status": "ok", "requeued": client.retry_all_dead_jobs()}

    @api_write.post("/retry_jobs/{retry_at}/{job_id}/run", summary="Run one retry job now")
    def api_run_retry(retry_at: int, job_id: JobId) -> Ok:
        views.run_now("retry", retry_at, job_id)
        return Ok()

    @api_write.post("/scheduled_jobs/{run_at}/{job_id}/run", summary="Run one scheduled job now")
    def api_run_scheduled(run_at: int, job_id: JobId) -> Ok:
        views.run_now("scheduled", run_at, job_id)
        return Ok()

    @api_write.post("/queues/{name}/pause", summary="Pause a queue (running jobs finish)")
    def api_pause(name: JobName) -> Ok:
        client.pause(name)
        return Ok()

    @api_write.post("/queues/{name}/unpause", summary="Unpause a queue")
    def api_unpause(name: JobName) -> Ok:
        client.unpause(name)
        return Ok()

    @api_write.post("/queues/{name}/max_concurrency", summary="Cap a job name's concurrency")
    def api_max_concurrency(name: JobName, body: MaxConcurrency) -> Ok:
        client.set_max_concurrency(name, body.max_concurrency)
        return Ok()

    @app.get("/metrics", tags=["metrics"], response_class=Response,
             summary="Prometheus metrics (text exposition)")
    def metrics() -> Response:
        try:
            from prefork_work import metrics as metrics_module  # type: ignore[attr-defined,unused-ignore]
        except ImportError:
            raise ApiError(501, "metrics need prefork_work.metrics (prefork-work[web])") from None
        body, content_type = metrics_module.render(client)
        return Response(body, media_type=content_type)

    for router in (gocraft, gocraft_write, api, api_write):
        app.include_router(router)
    app.include_router(dashboard_router(views, read_only=read_only, token_required=bool(token)))
    app.mount("/static", static_app(), name="static")
    return app


def _page_route(views: Views, kind: str) -> Callable[..., dict[str, Any]]:
    def page_of_jobs(page: Page = "") -> dict[str, Any]:
        return views.jobs_page(kind, int(page) if page else 1)

    return page_of_jobs


def _create_job(client: Client, body: CreateJob) -> dict[str, Any]:
    from prefork_work.enqueuer import Enqueuer

    enqueuer = Enqueuer(client.keys.namespace, client.store.redis)
    unique = body.unique or body.unique_key is not None
    run_at = None
    if unique:
        if body.in_seconds:
            scheduled = enqueuer.enqueue_unique_in_by_key(body.name, body.in_seconds, body.args,
                                                          body.unique_key)
            job, run_at = (scheduled.job, scheduled.run_at) if scheduled else (None, None)
        else:
            job = enqueuer.enqueue_unique_by_key(body.name, body.args, body.unique_key)
        if job is None:
            raise ApiError(409, f"a unique {body.name} job with the same key is already waiting")
    elif body.in_seconds:
        scheduled = enqueuer.enqueue_in(body.name, body.in_seconds, body.args)
        job, run_at = scheduled.job, scheduled.run_at
    else:
        job = enqueuer.enqueue(body.name, body.args)
    log.info("job created through the web api", job_id=job.id, job_name=job.name, run_at=run_at)
    result: dict[str, Any] = {"id": job.id, "name": job.name, "t": job.t, "args": job.args,
                              "unique": job.unique}
    if run_at is not None:
        result["run_at"] = run_at
    return result


def _writer(read_only: bool, token: str | None) -> Callable[[Request], None]:
    expected = ("Bearer " + token).encode() if token else None

    def may_write(request: Request) -> None:
        if read_only:
            raise ApiError(403, "this web app is read-only ([web] read_only = true)")
        origin = request.headers.get("origin")
        if origin is not None and not _same_origin(request, origin):
            # a browser sends Origin on every cross-site POST/DELETE: never act on those
            raise ApiError(403, f"cross-origin request from {origin} refused")
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise ApiError(401, "this change needs the web token: send Authorization: Bearer "
                               "<token> ([web] token or PREFORK_WORK_WEB_TOKEN)",
                               {"WWW-Authenticate": "Bearer"})

    return may_write


def _same_origin(request: Request, origin: str) -> bool:
    """Origin names this app (its Host, or the Host a reverse proxy says it received), or the
    request carries the dashboard's header: a page of another origin cannot send that header
    without a CORS preflight, which this app never grants."""
    if request.headers.get("x-requested-with") == "prefork-work":
        return True
    netloc = urlsplit(origin).netloc
    return netloc in (request.headers.get("host"), request.headers.get("x-forwarded-host"))


def _install_error_handlers(app: FastAPI) -> None:
    """Every error is a JSON body ``{"error": message}``, built by a JSON encoder (W31)."""

    def reply(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    def api_error(request: Request, err: ApiError) -> JSONResponse:
        return reply(err.status, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = err.detail if isinstance(err.detail, str) else str(err.detail)
        if err.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return reply(err.status_code, message, dict(err.headers or {}))

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e.get("loc", ()))
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        return reply(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(NotDeleted)
    def not_deleted(request: Request, err: NotDeleted) -> JSONResponse:
        return reply(404, str(err))

    @app.exception_handler(NotRetried)
    def not_retried(request: Request, err: NotRetried) -> JSONResponse:
        return reply(404, str(err))

    @app.exception_handler(InvalidJobArguments)
    def bad_args(request: Request, err: InvalidJobArguments) -> JSONResponse:
        return reply(400, str(err))

    @app.exception_handler(ValueError)
    def bad_value(request: Request, err: ValueError) -> JSONResponse:
        return reply(400, str(err))

    @app.exception_handler(MalformedJob)
    def malformed(request: Request, err: MalformedJob) -> JSONResponse:
        return reply(500, f"a job in Redis cannot be decoded: {err}")

    @app.exception_handler(RedisUnavailable)
    def unavailable(request: Request, err: RedisUnavailable) -> JSONResponse:
        return reply(503, str(err))

    @app.exception_handler(Exception)
    def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("web request failed", path=request.url.path)
        return reply(500, f"internal error: {type(err).__name__}")
