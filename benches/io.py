"""Throughput of I/O-bound jobs: many jobs in flight per process (issue 10).

    python -m benches.io [--mode async|sync|both] [--jobs 20000] [--names 5] [--children 2]
        [--slots 200] [--sync-slots 32] [--runs 1]
        [--systems prefork-work,arq,dramatiq,celery] [--timeout 120] [--json PATH]

Every job waits 50 ms and counts itself done (benches/done.py). All jobs are enqueued first
(round robin over ``noop0..noop4``), then the workers start and the clock runs until every job
is done, exactly as in benches/throughput.py (the same run_once). Each system gets the same
concurrency: ``--children`` processes x ``--slots`` jobs in flight each.

- ``async``: prefork-work ``async def`` jobs (``await asyncio.sleep(0.05)``), ``jobs_per_child
  = slots``; arq (``await asyncio.sleep``) with ``max_jobs = slots`` per worker process;
  dramatiq (``-t slots``) and celery (``-P threads -c slots`` per worker) ``time.sleep`` on
  threads, their way of waiting on I/O. The ideal is children x slots / 0.05 jobs/s.
- ``sync``: prefork-work sync jobs (``time.sleep(0.05)``) in a thread pool of ``--sync-slots``
  per child; dramatiq and celery with as many threads (arq has no sync jobs: skipped).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from benches.common import bench_env, print_table, start_group, write_json
from benches.throughput import (
    PreforkWork,
    RunResult,
    System,
    python_for,
    run_once,
    summarize,
)

WAIT = 0.05


class PreforkWorkIO(PreforkWork):
    note = "enqueue_many"
    app = "benches.io_app:app"

    def __init__(self, python: str, mode: str, slots: int) -> None:
        super().__init__(python)
        self.mode, self.slots = mode, slots
        self.server = f"jobs_per_child = {slots}"

    def concurrency(self, children: int) -> str:
        kind = "async" if self.mode == "async" else "threads"
        return f"{children} proc x {self.slots} ({kind})"

    def env(self, url: str, names: int) -> dict[str, str]:
        return bench_env(url, names, BENCH_IO_MODE=self.mode, BENCH_IO_WAIT=str(WAIT))


class PeerIO(System):
    def __init__(self, python: str, slots: int) -> None:
        super().__init__(python)
        self.slots = slots

    def env(self, url: str, names: int) -> dict[str, str]:
        return bench_env(url, names, BENCH_IO_SLOTS=str(self.slots), BENCH_IO_WAIT=str(WAIT))

    def start(self, url: str, children: int, names: int, tmp: Path) -> list[subprocess.Popen[bytes]]:
        env = self.env(url, names)
        return [start_group(argv, env=env, log=tmp / f"{self.name}-{i}.log")
                for i, argv in enumerate(self.worker_argvs(url, children))]


class ArqIO(PeerIO):
    name, module = "arq", "benches.peers.io_arq_app"
    note = "await asyncio.sleep; poll_delay=0.005"

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        return [[self.python, "-m", self.module, "worker"] for _ in range(children)]

    def concurrency(self, children: int) -> str:
        return f"{children} proc x max_jobs {self.slots}"


class DramatiqIO(PeerIO):
    name, module = "dramatiq", "benches.peers.io_dramatiq_app"
    note = "time.sleep on threads"

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        return [[str(self.bin / "dramatiq"), self.module, "-p", str(children),
                 "-t", str(self.slots)]]

    def concurrency(self, children: int) -> str:
        return f"{children} proc x {self.slots} thr"


class CeleryIO(PeerIO):
    name, module = "celery", "benches.peers.io_celery_app"
    note = "time.sleep, -P threads"

    def worker_argvs(self, url: str, children: int) -> list[list[str]]:
        return [[str(self.bin / "celery"), "-A", self.module, "worker", "-P", "threads",
                 "-c", str(self.slots), "-l", "WARNING", "-n", f"io{i}@%h"]
                for i in range(children)]

    def concurrency(self, children: int) -> str:
        return f"{children} proc x -P threads -c {self.slots}"


def make_systems(names: list[str], mode: str, slots: int) -> tuple[list[System], dict[str, str], dict[str, str]]:
    systems: list[System] = []
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name in names:
        system: System
        if name == "prefork-work":
            system = PreforkWorkIO(sys.executable, mode, slots)
        elif name == "arq":
            if mode != "async":
                skipped[name] = "no sync jobs"
                continue
            system = ArqIO(python_for(name), slots)
        elif name == "dramatiq":
            system = DramatiqIO(python_for(name), slots)
        elif name == "celery":
            system = CeleryIO(python_for(name), slots)
        else:
            sys.exit(f"unknown system {name!r}: prefork-work, arq, dramatiq, celery")
        version = system.version()
        if version is None:
            skipped[name] = f"not installed for {system.python}"
            continue
        versions[name] = version
        systems.append(system)
    return systems, versions, skipped


def bench(args: argparse.Namespace, mode: str, slots: int) -> dict[str, object]:
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    systems, versions, skipped = make_systems(names, mode, slots)
    ideal = args.children * slots / WAIT
    print(f"io ({mode}): {args.jobs:,} jobs of {WAIT * 1000:g} ms, {args.children} x {slots} in "
          f"flight (ideal {ideal:,.0f} jobs/s), {args.runs} runs; systems: {', '.join(versions)}"
          + (f"; skipped: {', '.join(skipped)}" if skipped else ""), flush=True)
    results: list[RunResult] = []
    for run in range(1, args.runs + 1):
        for system in systems:
            try:
                r = run_once(system, args.jobs, args.names, args.children, args.timeout, run)
            except Exception as err:  # one broken peer must not stop the comparison
                r = RunResult(system.name, run, args.jobs, 0, 0, float("nan"), float("nan"),
                              float("nan"), 0.0, float("nan"), float("nan"), float("nan"), True,
                              error=f"{type(err).__name__}: {err}")
            results.append(r)
            print(f"  run {run} {system.name:<12} {r.jobs_per_s:>9,.0f} jobs/s "
                  f"({r.done:,}/{r.jobs:,} done, {r.wall_jobs_per_s:,.0f} wall){'  ' + r.error if r.error else ''}",
                  flush=True)
    summary = {s.name: summarize(results, s.name) for s in systems}
    rows = []
    for system in systems:
        s = summary[system.name]
        note = [system.note] if system.note else []
        if s["errors"]:
            note.append(f"{len(s['errors'])} failed run(s): {s['errors'][0]}")
        if s["lost_or_duplicated"]:
            note.append(f"count off by {s['lost_or_duplicated']}")
        rate = s["jobs_per_s"]
        rows.append([system.name, versions[system.name], system.concurrency(args.children),
                     s["jobs"], rate, rate / ideal * 100, s["wall_jobs_per_s"], s["cmds_per_job"],
                     "; ".join(note)])
    for name, why in skipped.items():
        rows.append([name, "-", "-", "-", "-", "-", "-", "-", f"skipped: {why}"])
    print()
    table = print_table(
        ["system", "version", "concurrency", "jobs", "jobs/s", "% of ideal", "wall jobs/s",
         "Redis cmds/job", "note"], rows,
        title=(f"I/O-bound jobs, {mode} ({WAIT * 1000:g} ms each; ideal {ideal:,.0f} jobs/s; "
               f"median of {args.runs}; {os.cpu_count()} CPUs; jobs/s excludes start-up)"))
    return {"mode": mode, "slots": slots, "ideal": ideal, "versions": versions,
            "skipped": skipped, "summary": summary, "table": table,
            "runs": [r.__dict__ for r in results]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.io", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["async", "sync", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--names", type=int, default=5)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--slots", type=int, default=200, help="jobs in flight per process (async)")
    parser.add_argument("--sync-slots", type=int, default=32, help="threads per process (sync)")
    parser.add_argument("--systems", default="prefork-work,arq,dramatiq,celery")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", help="result file (default benches/bench-results/...)")
    args = parser.parse_args(argv)
    out = []
    if args.mode in ("async", "both"):
        out.append(bench(args, "async", args.slots))
    if args.mode in ("sync", "both"):
        out.append(bench(args, "sync", args.sync_slots))
    write_json("io", {"args": vars(args), "benches": out}, args.json)


if __name__ == "__main__":
    main()
