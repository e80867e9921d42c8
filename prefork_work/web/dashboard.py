"""The dashboard: server-rendered pages (Jinja2, autoescape on) and one small script.

Pages only read; every button calls the JSON API with POST or DELETE through
``static/dashboard.js`` (so the API's access rules apply to the dashboard too, and the
token travels in a header, never in a cookie a third-party page could ride on). Job
arguments and error texts are user data: autoescaped in every page, and the
Content-Security-Policy allows scripts from this app only, so even a missed escape could
not run an injected script.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from prefork_work.client import PAGE_SIZE
from prefork_work.web.history import per_minute, record_minute
from prefork_work.web.views import Views

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
CHART_HEIGHT = 120

_WEB = resources.files("prefork_work") / "web"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("prefork_work.web", "templates"),
        autoescape=True,  # every page is HTML: escape everything not explicitly marked safe
    )
    env.filters["seg"] = lambda value: quote(str(value), safe="")
    env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)
    env.filters["clip"] = _clip
    env.filters["when"] = _when
    env.filters["duration"] = _duration
    return env


def _clip(text: object, limit: int = 2000) -> str:
    """Page cells show at most ``limit`` characters of user data (the API gives it all)."""
    value = str(text)
    return value if len(value) <= limit else value[:limit] + f"… ({len(value):,} characters)"


def _when(epoch: int | float | None) -> str:
    if not epoch:
        return "-"
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(epoch)


def _duration(seconds: int | float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def static_app() -> StaticFiles:
    return StaticFiles(directory=str(_WEB / "static"))


def dashboard_router(views: Views, *, read_only: bool, token_required: bool) -> APIRouter:
    env = _environment()
    router = APIRouter(include_in_schema=False)

    def render(request: Request, template: str, page: str, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(
            base=request.scope.get("root_path", "").rstrip("/"), page=page, read_only=read_only,
            token_required=token_required, now=int(time.time()), **context)
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP,
                                           "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "same-origin"})

    @router.get("/")
    def overview(request: Request) -> HTMLResponse:
        record_minute(views.client, views.store)
        series = per_minute(views.store)
        peak = max([p["processed"] or 0 for p in series] + [p["failed"] or 0 for p in series] + [1])
        bars = [{**p, "processed_h": (p["processed"] or 0) * CHART_HEIGHT // peak,
                 "failed_h": (p["failed"] or 0) * CHART_HEIGHT // peak} for p in series]
        return render(request, "overview.html", "overview", totals=views.totals(),
                      queues=views.queues_detail(), bars=bars, peak=peak,
                      has_history=any(p["processed"] is not None for p in series),
                      chart_height=CHART_HEIGHT)

    @router.get("/ui/queues")
    def queues(request: Request) -> HTMLResponse:
        return render(request, "queues.html", "queues", queues=views.queues_detail())

    @router.get("/ui/processes")
    def processes(request: Request) -> HTMLResponse:
        return render(request, "processes.html", "processes", hosts=views.processes())

    @router.get("/ui/busy")
    def busy(request: Request) -> HTMLResponse:
        return render(request, "busy.html", "busy", workers=views.busy_workers())

    def jobs_page(kind: str, score_field: str, title: str):  # type: ignore[no-untyped-def]
        def page_view(request: Request, page: int = Query(1, ge=1, le=10**9)) -> HTMLResponse:
            data = views.jobs_page(kind, page)
            pages = max((data["count"] + PAGE_SIZE - 1) // PAGE_SIZE, 1)
            return render(request, "jobs.html", kind, kind=kind, title=title,
                          score_field=score_field, jobs=data["jobs"], count=data["count"],
                          page_number=page, pages=pages)

        return page_view

    router.add_api_route("/ui/scheduled", jobs_page("scheduled", "run_at", "Scheduled jobs"))
    router.add_api_route("/ui/retry", jobs_page("retry", "retry_at", "Retry jobs"))
    router.add_api_route("/ui/dead", jobs_page("dead", "died_at", "Dead jobs"))

    @router.get("/ui/status")
    def status(request: Request, id: str = "") -> HTMLResponse:
        job_id = id.strip()
        result: dict[str, Any] | None = None
        problem = ""
        if job_id:
            try:
                result = views.job_status(job_id)
                if result is None:
                    problem = "No status is known for this job id."
            except (NotImplementedError, ValueError) as err:
                problem = str(err)
        return render(request, "status.html", "status", job_id=job_id, result=result,
                      problem=problem)

    return router
