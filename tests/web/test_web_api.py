"""The web app's JSON API in process (Starlette's TestClient) over the suite's real Redis:
gocraft's webui_test.go cases through our routes, our /api routes, errors, access rules
and the OpenAPI document."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from prefork_work.app import App  # noqa: E402
from prefork_work.client import Client  # noqa: E402
from prefork_work.enqueuer import Enqueuer  # noqa: E402
from prefork_work.job import Job  # noqa: E402
from prefork_work.keys import Keys  # noqa: E402
from prefork_work.web import create_app  # noqa: E402
from prefork_work.worker import Worker  # noqa: E402

NS = "webt"
K = Keys(NS)
NOW = 1_700_000_000
OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def apps(redis_server):
    """One app per set of options for the module: building one takes ~0.5 s on this machine."""
    cache: dict[tuple, TestClient] = {}

    def get(**options) -> TestClient:
        key = tuple(sorted(options.items()))
        if key not in cache:
            cache[key] = TestClient(create_app(Client(NS, redis_server.client()), **options))
        return cache[key]

    return get


@pytest.fixture
def web(r, apps) -> TestClient:
    return apps()


def failing_app(max_fails: int) -> App:
    app = App()

    @app.job("wat", max_fails=max_fails)
    def wat(job):
        raise RuntimeError("boom")

    return app


def dead_jobs(r, n: int) -> list[Job]:
    """n wat jobs that fail once with max_fails=1: dead, as in webui_test.go."""
    jobs = [Enqueuer(NS, r).enqueue("wat", {"n": i}) for i in range(n)]
    worker = Worker(failing_app(1), r, NS)
    while worker.run_one():
        pass
    assert r.zcard(K.dead()) == n
    return jobs


# --- webui_test.go (reference §7) ------------------------------------------------------------
def test_queues_three_entries_first_foo(r, web) -> None:
    enqueuer = Enqueuer(NS, r, clock=lambda: NOW)
    for name in ("foo", "foo", "wat", "zaz"):
        enqueuer.enqueue(name, {})
    app = TestClient(create_app(Client(NS, r, clock=lambda: NOW)))
    body = app.get("/queues").json()
    assert len(body) == 3
    assert body[0] == {"job_name": "foo", "count": 2, "latency": 0}


def test_worker_pools_two_entries(r, web) -> None:
    for pool in ("pool1", "pool2"):
        r.sadd(K.worker_pools(), pool)
        r.hset(K.heartbeat(pool), mapping={"heartbeat_at": NOW, "started_at": NOW, "job_names": "wat",
                                           "concurrency": 1, "worker_ids": pool + "w", "host": "h",
                                           "pid": 1})
    body = web.get("/worker_pools").json()
    assert [p["worker_pool_id"] for p in body] == ["pool1", "pool2"]
    assert list(body[0]) == ["worker_pool_id", "started_at", "heartbeat_at", "job_names",
                             "concurrency", "host", "pid", "worker_ids"]


def test_busy_workers_empty_list_then_the_blocked_job(r, web) -> None:
    response = web.get("/busy_workers")
    assert response.status_code == 200 and response.text == "[]"  # not null (W31)
    started, release = threading.Event(), threading.Event()
    app = App()

    @app.job("wat")
    def wat(job):
        started.set()
        release.wait(10)

    worker = Worker(app, r, NS)
    r.sadd(K.worker_pools(), worker.pool_id)
    r.hset(K.heartbeat(worker.pool_id), mapping={"worker_ids": worker.worker_id, "job_names": "wat"})
    Enqueuer(NS, r).enqueue("wat", {"a": 1})
    thread = threading.Thread(target=worker.run_one)
    thread.start()
    try:
        assert started.wait(10)
        busy = web.get("/busy_workers").json()
        assert len(busy) == 1
        assert busy[0]["job_name"] == "wat" and busy[0]["is_busy"] is True
        assert busy[0]["args_json"] == '{"a":1}'
    finally:
        release.set()
        thread.join(10)
    assert web.get("/busy_workers").json() == []


def test_retry_jobs_page(r, web) -> None:
    Enqueuer(NS, r).enqueue("wat", {})
    Worker(failing_app(3), r, NS).run_one()
    body = web.get("/retry_jobs").json()
    assert body["count"] == 1
    job = body["jobs"][0]
    assert job["retry_at"] > 0 and job["name"] == "wat" and job["fails"] == 1
    assert r.zscore(K.retry(), r.zrange(K.retry(), 0, 0)[0]) == job["retry_at"]  # the score, not t


def test_scheduled_jobs_page(r, web) -> None:
    Enqueuer(NS, r).enqueue_in("wat", 100, {})
    body = web.get("/scheduled_jobs?page=1").json()
    assert body["count"] == 1
    assert body["jobs"][0]["run_at"] > 0 and body["jobs"][0]["name"] == "wat"


def test_dead_jobs_delete_one_and_retry_one(r, web) -> None:
    dead_jobs(r, 2)
    body = web.get("/dead_jobs").json()
    assert body["count"] == 2
    first, second = body["jobs"]
    assert web.post(f"/delete_dead_job/{first['died_at']}/{first['id']}").status_code == 200
    assert web.post(f"/retry_dead_job/{second['died_at']}/{second['id']}").status_code == 200
    assert web.get("/dead_jobs").json() == {"count": 0, "jobs": []}
    assert {"job_name": "wat", "count": 1} == {k: v for k, v in web.get("/queues").json()[0].items()
                                                if k != "latency"}


def test_retry_all_dead_then_delete_all(r, web) -> None:
    dead_jobs(r, 2)
    assert web.post("/retry_all_dead_jobs").json() == {"status": "ok"}
    assert web.get("/dead_jobs").json()["count"] == 0
    assert web.get("/queues").json()[0]["count"] == 2
    worker = Worker(failing_app(1), r, NS)
    while worker.run_one():
        pass
    assert web.get("/dead_jobs").json()["count"] == 2
    assert web.post("/delete_all_dead_jobs").status_code == 200
    assert web.get("/dead_jobs").json()["count"] == 0


def test_root_is_html(web) -> None:
    response = web.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")


# --- W31 and errors --------------------------------------------------------------------------
def test_every_error_is_a_json_body_with_a_message(r, web) -> None:
    cases = [
        web.get('/no"such'),                               # 404, a quote in the text
        web.get("/dead_jobs?page=x"),                      # 422
        web.post("/delete_dead_job/123/abc"),              # nothing deleted
        web.post("/retry_dead_job/123/abc"),               # nothing retried
        web.post("/api/jobs", content=b"{not json"),       # 422
        web.post("/api/jobs", json={"name": "a:b"}),       # 422
        web.post("/api/queues/x/max_concurrency", json={"max_concurrency": -1}),
        web.get("/api/queues/x/pause"),                    # 405: mutations are never GET
    ]
    for response in cases:
        assert response.status_code >= 400, response.text
        body = json.loads(response.text)  # always valid JSON (W31: escaped)
        assert isinstance(body["error"], str) and body["error"], response.text
    assert cases[0].json()["error"] == 'no such route: GET /no"such'
    assert cases[2].status_code == 404 and cases[2].json()["error"] == "nothing deleted"


def test_empty_page_means_first_page_and_page_zero_too(r, web) -> None:
    Enqueuer(NS, r).enqueue_in("wat", 100, {})
    assert web.get("/scheduled_jobs?page=").json()["count"] == 1
    assert len(web.get("/scheduled_jobs?page=0").json()["jobs"]) == 1


def test_mutation_routes_refuse_get_and_change_nothing(r, web) -> None:
    dead = dead_jobs(r, 1)
    died_at = web.get("/dead_jobs").json()["jobs"][0]["died_at"]
    before = sorted(r.keys("*"))
    schema = web.get("/api/openapi.json").json()
    for path, operations in schema["paths"].items():
        concrete = (path.replace("{died_at}", str(died_at)).replace("{job_id}", dead[0].id)
                    .replace("{name}", "wat").replace("{run_at}", "1").replace("{retry_at}", "1"))
        writes = {"post", "delete"} & set(operations)
        if writes and "get" not in operations:
            assert web.get(concrete).status_code == 405, path
    assert sorted(r.keys("*")) == before
    assert r.zcard(K.dead()) == 1


# --- our API ---------------------------------------------------------------------------------
def test_create_job_now_later_and_unique(r, web) -> None:
    created = web.post("/api/jobs", json={"name": "wat", "args": {"n": 2**53 + 1, "s": "é"}})
    assert created.status_code == 201
    job = Job.from_json(r.lindex(K.jobs("wat"), 0))
    assert job.id == created.json()["id"] and job.args == {"n": 2**53 + 1, "s": "é"}

    later = web.post("/api/jobs", json={"name": "wat", "in_seconds": 60})
    assert later.status_code == 201 and later.json()["run_at"] >= int(time.time()) + 59
    assert r.zcard(K.scheduled()) == 1

    body = {"name": "once", "args": {"k": 1}, "unique": True}
    assert web.post("/api/jobs", json=body).status_code == 201
    duplicate = web.post("/api/jobs", json=body)
    assert duplicate.status_code == 409 and "already waiting" in duplicate.json()["error"]
    assert r.llen(K.jobs("once")) == 1
    keyed = {"name": "once", "args": {"k": 2}, "unique_key": {"other": 1}, "in_seconds": 5}
    assert web.post("/api/jobs", json=keyed).status_code == 201  # scheduled: its own key
    assert web.post("/api/jobs", json=keyed).status_code == 409

    assert web.post("/api/jobs", json={"name": "wat", "args": [1]}).status_code == 422
    assert web.post("/api/jobs", json={"name": "wat", "in_seconds": -1}).status_code == 422


def test_delete_queued_scheduled_and_retry_jobs(r, web) -> None:
    enqueuer = Enqueuer(NS, r)
    keep, gone = enqueuer.enqueue("wat", {"n": 1}), enqueuer.enqueue("wat", {"n": 2, "id": "x"})
    # an args value equal to the other job's id must not fool the lookup
    decoy = enqueuer.enqueue("wat", {"note": f'"id":"{keep.id}"'})
    assert web.delete(f"/api/queues/wat/jobs/{gone.id}").json() == {"status": "ok"}
    left = [Job.from_json(raw).id for raw in r.lrange(K.jobs("wat"), 0, -1)]
    assert sorted(left) == sorted([keep.id, decoy.id])
    assert web.delete(f"/api/queues/wat/jobs/{gone.id}").status_code == 404

    scheduled = enqueuer.enqueue_unique_in("wat", 100, {"u": 1})
    assert scheduled is not None
    assert web.delete(f"/api/scheduled_jobs/{scheduled.run_at}/{scheduled.job.id}").status_code == 200
    assert r.zcard(K.scheduled()) == 0
    assert enqueuer.enqueue_unique_in("wat", 100, {"u": 1}) is not None  # its lock was freed

    r.delete(K.jobs("wat"))
    enqueuer.enqueue("wat", {})
    Worker(failing_app(3), r, NS).run_one()
    retry = web.get("/api/retry_jobs").json()["jobs"][0]
    assert web.delete(f"/api/retry_jobs/{retry['retry_at']}/{retry['id']}").status_code == 200
    assert r.zcard(K.retry()) == 0


def test_run_now_moves_a_retry_or_scheduled_job_to_its_queue(r, web) -> None:
    scheduled = Enqueuer(NS, r).enqueue_in("wat", 3600, {"a": 1})
    path = f"/api/scheduled_jobs/{scheduled.run_at}/{scheduled.job.id}/run"
    assert web.post(path).status_code == 200
    assert r.zcard(K.scheduled()) == 0
    assert Job.from_json(r.lindex(K.jobs("wat"), 0)).args == {"a": 1}
    assert web.post(path).status_code == 404


def test_dead_jobs_under_api(r, web) -> None:
    dead_jobs(r, 3)
    page = web.get("/api/dead_jobs").json()
    one = page["jobs"][0]
    assert web.post(f"/api/dead_jobs/{one['died_at']}/{one['id']}/retry").status_code == 200
    two = web.get("/api/dead_jobs").json()["jobs"][0]
    assert web.delete(f"/api/dead_jobs/{two['died_at']}/{two['id']}").status_code == 200
    assert web.post("/api/dead_jobs/retry").json() == {"status": "ok", "requeued": 1}
    assert r.llen(K.jobs("wat")) == 2 and r.zcard(K.dead()) == 0
    r.delete(K.jobs("wat"))
    dead_jobs(r, 2)
    assert web.delete("/api/dead_jobs").status_code == 200 and r.zcard(K.dead()) == 0


def test_pause_unpause_and_max_concurrency(r, web) -> None:
    Enqueuer(NS, r).enqueue("wat", {})
    assert web.post("/api/queues/wat/pause").status_code == 200
    assert r.exists(K.paused("wat"))
    assert web.post("/api/queues/wat/max_concurrency", json={"max_concurrency": 3}).status_code == 200
    (queue,) = web.get("/api/queues").json()
    assert queue == {"job_name": "wat", "count": 1, "latency": queue["latency"], "paused": True,
                     "max_concurrency": 3, "running": 0}
    assert web.post("/api/queues/wat/unpause").status_code == 200
    assert not r.exists(K.paused("wat"))
    assert web.get("/api/queues").json()[0]["paused"] is False


def test_queue_metrics_in_keda_shape(r) -> None:
    enqueuer = Enqueuer(NS, r, clock=lambda: NOW - 30)
    enqueuer.enqueue("a", {})
    enqueuer.enqueue("a", {})
    Enqueuer(NS, r, clock=lambda: NOW - 5).enqueue("b", {})
    app = TestClient(create_app(Client(NS, r, clock=lambda: NOW)))
    assert app.get("/api/metrics/queues").json() == {
        "total": {"count": 3, "latency": 30},
        "queues": {"a": {"count": 2, "latency": 30}, "b": {"count": 1, "latency": 5}},
    }


def test_processes_group_children_under_their_master(r, web) -> None:
    now = int(time.time())
    for pool, worker, pid in (("p1", "w1", 11), ("p2", "w2", 12)):
        r.sadd(K.worker_pools(), pool)
        r.hset(K.heartbeat(pool), mapping={
            "heartbeat_at": now, "started_at": now - 100, "job_names": "wat", "concurrency": 1,
            "worker_ids": worker, "host": "box", "pid": pid, "master_pid": 10, "master_id": "m1"})
    r.hset(K.worker_observation("w2"), mapping={"job_name": "wat", "job_id": "j1",
                                                "started_at": now, "args": '{"x":1}'})
    (host,) = web.get("/api/processes").json()
    assert host["host"] == "box"
    (master,) = host["masters"]
    assert master["pid"] == 10
    assert [(c["pid"], c["state"], c["job_id"]) for c in master["children"]] == [
        (11, "idle", ""), (12, "busy", "j1")]
    assert master["children"][0]["uptime"] >= 100


# --- access rules ----------------------------------------------------------------------------
def test_read_only_refuses_every_change(r, apps) -> None:
    web = apps(read_only=True)
    dead_jobs(r, 1)
    assert web.get("/api/queues").status_code == 200
    for response in (web.post("/retry_all_dead_jobs"), web.delete("/api/dead_jobs"),
                     web.post("/api/jobs", json={"name": "wat"})):
        assert response.status_code == 403 and "read-only" in response.json()["error"]
    assert r.zcard(K.dead()) == 1 and r.llen(K.jobs("wat")) == 0


def test_token_is_required_for_changes(r, apps) -> None:
    web = apps(token="s3cret")
    assert web.get("/api/queues").status_code == 200  # reads are open
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = web.post("/api/jobs", json={"name": "wat"}, headers=headers)
        assert response.status_code == 401 and "token" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert r.llen(K.jobs("wat")) == 0
    ok = web.post("/api/jobs", json={"name": "wat"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 201 and r.llen(K.jobs("wat")) == 1


def test_cross_origin_browser_requests_change_nothing(r, web) -> None:
    response = web.post("/api/queues/wat/pause", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and not r.exists(K.paused("wat"))
    same = web.post("/api/queues/wat/pause", headers={"Origin": "http://testserver"})
    assert same.status_code == 200
    # behind a reverse proxy: the public name arrives as X-Forwarded-Host, or the dashboard's
    # header vouches for the request (a cross-site page cannot send it without CORS)
    r.delete(K.paused("wat"))
    for headers in ({"X-Forwarded-Host": "jobs.example.com"}, {"X-Requested-With": "prefork-work"}):
        proxied = web.post("/api/queues/wat/pause",
                           headers={"Origin": "https://jobs.example.com", **headers})
        assert proxied.status_code == 200, headers


# --- OpenAPI ---------------------------------------------------------------------------------
def test_openapi_document_is_served_and_matches_the_checked_in_copy(web) -> None:
    """docs/openapi.json is the API's contract: a change to the routes must update it
    (regenerate: python -m prefork_work.web.openapi > docs/openapi.json)."""
    served = web.get("/api/openapi.json").json()
    assert served["openapi"].startswith("3.")
    paths = served["paths"]
    for route in ("/queues", "/worker_pools", "/busy_workers", "/dead_jobs",
                  "/retry_dead_job/{died_at}/{job_id}", "/api/jobs", "/api/jobs/{job_id}",
                  "/api/metrics/queues", "/api/queues/{name}/pause", "/metrics"):
        assert route in paths, route
    for path, operations in paths.items():
        if "get" in operations:  # a GET never takes a body and is never also the write
            assert "requestBody" not in operations["get"], path
    # the contract, not FastAPI's rendering of it (which may change between its releases)
    assert _contract(served) == _contract(json.loads(OPENAPI.read_text())), \
        "docs/openapi.json is out of date"


def _contract(document: dict) -> dict:
    """Per route and method: parameters (name, where, required), body schema's fields, the
    response codes."""
    result = {}
    schemas = document.get("components", {}).get("schemas", {})
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "")
            fields = sorted(schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})) if ref else []
            result[(path, method)] = (
                sorted((p["name"], p["in"], p.get("required", False))
                       for p in operation.get("parameters", [])),
                fields, sorted(operation.get("responses", {})))
    return result


# --- job status and /metrics (Client.job_status and prefork_work.metrics) ---------------------
def test_job_status_by_id(r, web) -> None:
    if not hasattr(Client, "job_status"):
        pytest.skip("Client.job_status is not on this branch yet")
    job = Enqueuer(NS, r).enqueue("wat", {})
    status = web.get(f"/api/jobs/{job.id}")
    if status.status_code == 404:  # status is opt-in: ask for it the way the Client offers
        pytest.skip("job status not recorded for a plain enqueue on this branch")
    body = status.json()
    assert body["id"] == job.id and body["name"] == "wat" and body["state"] == "queued"
    unknown = web.get("/api/jobs/ffffffffffffffffffffffff")
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert job.id in web.get(f"/ui/status?id={job.id}").text


def test_metrics_route_serves_prometheus_exposition(r, web) -> None:
    pytest.importorskip("prefork_work.metrics", reason="prefork_work.metrics not on this branch")
    parser = pytest.importorskip("prometheus_client.parser")
    Enqueuer(NS, r).enqueue("wat", {})
    response = web.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = list(parser.text_string_to_metric_families(response.text))
    assert families



def test_mounted_under_a_prefix_links_follow_it(r, redis_server) -> None:
    from fastapi import FastAPI

    parent = FastAPI()
    parent.mount("/ops/work", create_app(Client(NS, redis_server.client())))
    web = TestClient(parent)
    Enqueuer(NS, r).enqueue("wat", {})
    assert web.get("/ops/work/api/queues").json()[0]["count"] == 1
    assert web.get("/ops/work/api/openapi.json").status_code == 200
    html = web.get("/ops/work/ui/queues").text
    assert 'href="/ops/work/ui/dead"' in html and 'src="/ops/work/static/dashboard.js"' in html
    assert 'data-url="/ops/work/api/queues/wat/pause"' in html
    assert web.get("/ops/work/static/dashboard.js").status_code == 200


def test_on_loopback_other_host_names_are_refused(r, redis_server) -> None:
    """DNS rebinding: the `web` command wraps the app this way when it listens on loopback."""
    from prefork_work.web.run import loopback_hosts_only

    web = TestClient(loopback_hosts_only(create_app(Client(NS, redis_server.client())), "127.0.0.1"))
    for host in ("127.0.0.1:5040", "localhost:5040", "[::1]:5040", "localhost"):
        assert web.get("/api/queues", headers={"Host": host}).status_code == 200, host
    refused = web.post("/api/queues/wat/pause", headers={"Host": "evil.example:5040"})
    assert refused.status_code == 400 and "evil.example" in refused.json()["error"]
    assert not r.exists(K.paused("wat"))


def test_a_malformed_entry_does_not_break_a_page(r, web) -> None:
    dead_jobs(r, 1)
    r.zadd(K.dead(), {b"{not json <b>": 5})
    body = web.get("/dead_jobs").json()
    assert body["count"] == 2
    assert body["jobs"][0] == {"died_at": 5, "name": "", "id": "", "malformed": "{not json <b>"}
    html = web.get("/ui/dead").text
    assert "malformed: {not json &lt;b&gt;" in html and "wat" in html


def test_huge_arguments_are_clipped_on_pages(r, web) -> None:
    Enqueuer(NS, r).enqueue_in("wat", 100, {"blob": "x" * 100_000})
    html = web.get("/ui/scheduled").text
    assert len(html) < 20_000 and "characters)" in html
    assert len(web.get("/scheduled_jobs").json()["jobs"][0]["args"]["blob"]) == 100_000
