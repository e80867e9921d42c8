"""The operator's commands of ``prefork-work -c FILE <command>``, over the Client API.

Human tables by default, ``--json`` for scripts (one JSON document on stdout). Exit codes
(README "Admin CLI"): 0 ok; 1 not found, nothing done, or ``drain`` timed out; 2 usage;
69 Redis unreachable; 78 config. Nothing here needs the job module: an operator's shell
on any host with the config file can run them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from prefork_work.client import PAGE_SIZE, Client
from prefork_work.errors import NotDeleted, NotRetried

EX_OK, EX_NOT_FOUND, EX_USAGE = 0, 1, 2
DRAIN_POLL_SECONDS = 0.5
ZSETS = ("scheduled", "retry", "dead")

COMMANDS = ("queues", "workers", "jobs", "retry-dead", "delete-dead", "retry-all-dead",
            "delete-all-dead", "status", "pause", "unpause", "max-concurrency", "drain")


def add_commands(commands: Any) -> None:
    """Add the admin subcommands to the ``prefork-work`` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_, parents=[common])
        return parser

    add("queues", "queues: count, latency, paused, max concurrency, running")
    add("workers", "worker pools (heartbeats) and busy workers with their check-ins")
    jobs = add("jobs", "list scheduled, retry or dead jobs, 20 a page")
    jobs.add_argument("set", choices=ZSETS)
    jobs.add_argument("--page", type=int, default=1, help="page number, from 1")
    for name, verb in (("retry-dead", "put a dead job back in its queue"),
                       ("delete-dead", "delete a dead job")):
        cmd = add(name, verb)
        cmd.add_argument("job_id")
        cmd.add_argument("died_at", nargs="?", type=int,
                         help="its score (from `jobs dead`); found by a scan when left out")
    add("retry-all-dead", "put every dead job of a known name back in its queue")
    add("delete-all-dead", "delete every dead job")
    status = add("status", "where a job is and how its last run went")
    status.add_argument("job_id")
    for name in ("pause", "unpause"):
        add(name, f"{name} a queue").add_argument("name", help="job name")
    cap = add("max-concurrency", "cap how many jobs of a name run at once (0: no cap)")
    cap.add_argument("name", help="job name")
    cap.add_argument("limit", type=int)
    drain = add("drain", "wait until every queue is empty and nothing runs")
    drain.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")


def run(args: argparse.Namespace, connect: Callable[[], Client],
        out: TextIO | None = None) -> int:
    """Run admin command ``args.command``; RedisUnavailable propagates (the caller exits 69)."""
    out = out or sys.stdout
    handler = _HANDLERS[args.command]
    return handler(connect(), args, _Output(out, args.json))


class _Output:
    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json

    def json(self, value: Any) -> None:
        self.out.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    def line(self, text: str) -> None:
        self.out.write(text + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[_cell(v) for v in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        self.line("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        for row in cells:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    def result(self, value: dict[str, Any], text: str) -> None:
        if self.as_json:
            self.json(value)
        else:
            self.line(text)


def _cell(value: Any) -> str:
    # a terminal must not be driven by data from Redis: control characters are escaped
    text = "" if value is None else str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _time(epoch: int | None) -> str:
    if not epoch:
        return "-"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(epoch)


def _ago(client: Client, epoch: int) -> str:
    if not epoch:
        return "-"
    return f"{int(client.clock()) - epoch}s ago"


# --- commands -----------------------------------------------------------------------------------
def _queues(client: Client, args: argparse.Namespace, o: _Output) -> int:
    states = client.queue_states()
    if o.as_json:
        o.json([{"job_name": q.job_name, "count": q.count, "latency": q.latency,
                 "paused": q.paused, "max_concurrency": q.max_concurrency,
                 "running": q.running} for q in states])
        return EX_OK
    o.table(["job name", "count", "latency", "running", "max concurrency", "paused"],
            [(q.job_name, q.count, f"{q.latency}s", q.running, q.max_concurrency or "-",
              "yes" if q.paused else "") for q in states])
    return EX_OK


def _workers(client: Client, args: argparse.Namespace, o: _Output) -> int:
    pools = client.worker_pool_heartbeats()
    busy = [w for w in client.worker_observations() if w.is_busy]
    if o.as_json:
        o.json({
            "pools": [{"worker_pool_id": p.worker_pool_id, "host": p.host, "pid": p.pid,
                       "started_at": p.started_at, "heartbeat_at": p.heartbeat_at,
                       "concurrency": p.concurrency, "job_names": p.job_names or [],
                       "worker_ids": p.worker_ids or []} for p in pools],
            "busy": [{"worker_id": w.worker_id, "job_name": w.job_name, "job_id": w.job_id,
                      "started_at": w.started_at, "args_json": w.args_json,
                      "checkin": w.checkin, "checkin_at": w.checkin_at} for w in busy],
        })
        return EX_OK
    o.line(f"{len(pools)} pools, {len(busy)} busy workers")
    o.table(["pool", "host", "pid", "workers", "heartbeat", "started"],
            [(p.worker_pool_id, p.host, p.pid, p.concurrency, _ago(client, p.heartbeat_at),
              _time(p.started_at)) for p in pools])
    if busy:
        o.line("")
        o.table(["worker", "job name", "job id", "started", "check-in", "check-in at"],
                [(w.worker_id, w.job_name, w.job_id, _time(w.started_at), w.checkin,
                  _ago(client, w.checkin_at) if w.checkin_at else "-") for w in busy])
    return EX_OK


def _jobs(client: Client, args: argparse.Namespace, o: _Output) -> int:
    if args.page < 1:
        raise UsageError("--page must be 1 or more")
    pages: dict[str, Callable[[int], tuple[list[Any], int]]] = {
        "scheduled": client.scheduled_jobs, "retry": client.retry_jobs, "dead": client.dead_jobs}
    entries, total = pages[args.set](args.page)
    rows = []
    for entry in entries:
        score = getattr(entry, {"scheduled": "run_at", "retry": "retry_at", "dead": "died_at"}[args.set])
        job = entry.job
        rows.append({"score": score, "id": job.id, "name": job.name, "t": job.t,
                     "fails": job.fails, "err": job.err, "failed_at": job.failed_at,
                     "args": job.args})
    if o.as_json:
        o.json({"set": args.set, "page": args.page, "page_size": PAGE_SIZE, "count": total,
                "jobs": rows})
        return EX_OK
    last = max(1, -(-total // PAGE_SIZE))
    o.line(f"{args.set}: {total} jobs, page {args.page} of {last}")
    at = {"scheduled": "run at", "retry": "retry at", "dead": "died at"}[args.set]
    o.table([at, "id", "name", "fails", "error", "args"],
            [(_time(j["score"]), j["id"], j["name"], j["fails"], _short(j["err"], 40),
              _short(json.dumps(j["args"], ensure_ascii=False), 50)) for j in rows])
    return EX_OK


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _one_dead(verb: str) -> Callable[[Client, argparse.Namespace, _Output], int]:
    def command(client: Client, args: argparse.Namespace, o: _Output) -> int:
        died_at = args.died_at if args.died_at is not None else client.dead_job_score(args.job_id)
        try:
            if died_at is None:
                raise NotDeleted()
            if verb == "retried":
                client.retry_dead_job(died_at, args.job_id)
            else:
                client.delete_dead_job(died_at, args.job_id)
        except (NotDeleted, NotRetried):
            o.result({"job_id": args.job_id, verb: False},
                     f"no dead job {args.job_id}" + (f" at {died_at}" if died_at else "")
                     + (" (or its name is unknown)" if verb == "retried" else ""))
            return EX_NOT_FOUND
        o.result({"job_id": args.job_id, verb: True}, f"{verb} {args.job_id}")
        return EX_OK

    return command


def _retry_all_dead(client: Client, args: argparse.Namespace, o: _Output) -> int:
    n = client.retry_all_dead_jobs()
    o.result({"retried": n}, f"retried {n} dead jobs")
    return EX_OK


def _delete_all_dead(client: Client, args: argparse.Namespace, o: _Output) -> int:
    n = client.zset_size("dead")
    client.delete_all_dead_jobs()
    o.result({"deleted": n}, f"deleted {n} dead jobs")
    return EX_OK


def _status(client: Client, args: argparse.Namespace, o: _Output) -> int:
    try:
        status = client.job_status(args.job_id)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if status is None:
        o.result({"id": args.job_id, "state": None}, f"job {args.job_id}: nothing known")
        return EX_NOT_FOUND
    d = status.to_dict()
    if o.as_json:
        o.json(d)
        return EX_OK
    for key in ("enqueued_at", "started_at", "finished_at"):
        d[key] = _time(d[key])
    if d["duration"] is not None:
        d["duration"] = f"{d['duration']:.3f}s"
    o.table(["field", "value"], [(k, "-" if v in (None, "") else v) for k, v in d.items()])
    return EX_OK


def _pause(paused: bool) -> Callable[[Client, argparse.Namespace, _Output], int]:
    def command(client: Client, args: argparse.Namespace, o: _Output) -> int:
        try:
            (client.pause if paused else client.unpause)(args.name)
        except ValueError as err:
            raise UsageError(str(err)) from None
        word = "paused" if paused else "unpaused"
        o.result({"job_name": args.name, "paused": paused}, f"{word} {args.name}")
        return EX_OK

    return command


def _max_concurrency(client: Client, args: argparse.Namespace, o: _Output) -> int:
    try:
        client.set_max_concurrency(args.name, args.limit)
    except ValueError as err:
        raise UsageError(str(err)) from None
    o.result({"job_name": args.name, "max_concurrency": args.limit},
             f"max concurrency of {args.name}: {args.limit or 'no cap'}")
    return EX_OK


def _drain(client: Client, args: argparse.Namespace, o: _Output) -> int:
    """Wait until no queue holds a job and no job is running (scheduled and retry jobs are
    not waited for: they may be due in days)."""
    if args.timeout < 0:
        raise UsageError("--timeout must be 0 or more")
    deadline = time.monotonic() + args.timeout
    while True:
        states = client.queue_states()
        queued = sum(q.count for q in states)
        running = sum(q.running for q in states)
        if queued == 0 and running == 0:
            o.result({"drained": True, "queued": 0, "running": 0}, "drained: queues are empty")
            return EX_OK
        if time.monotonic() >= deadline:
            o.result({"drained": False, "queued": queued, "running": running},
                     f"timed out after {args.timeout:g}s: {queued} queued, {running} running")
            return EX_NOT_FOUND
        time.sleep(min(DRAIN_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


class UsageError(Exception):
    """A bad argument the parser could not catch; the CLI prints it and exits 2."""


_HANDLERS: dict[str, Callable[[Client, argparse.Namespace, _Output], int]] = {
    "queues": _queues,
    "workers": _workers,
    "jobs": _jobs,
    "retry-dead": _one_dead("retried"),
    "delete-dead": _one_dead("deleted"),
    "retry-all-dead": _retry_all_dead,
    "delete-all-dead": _delete_all_dead,
    "status": _status,
    "pause": _pause(True),
    "unpause": _pause(False),
    "max-concurrency": _max_concurrency,
    "drain": _drain,
}
