"""Global rate limit vs Celery's per-worker ``rate_limit``, side by side, with real workers.

Eight real Celery worker processes (``celery -A workers.app worker -Q generate -P threads``,
the same command a deployment runs) execute real ``distillq.generate`` tasks — plan job →
teacher → committed shard — against the simulated teacher, which enforces ``L`` requests a
minute (a token bucket holding one second's worth) and answers 429 + Retry-After above it.

(a) distillq's global limiter: ``teacher.rpm = L`` shared in Redis by all workers.
(b) Celery's own limit: ``rate_limit = L/8 per minute`` on ``distillq.generate`` in each
    worker (set with ``app.control.rate_limit``), the global limiter switched off
    (``teacher.global_rate_limit: false``); the client still retries 429s honouring
    Retry-After.

Each variant has its own simulated teacher and run; the queue is kept full and the teacher's
successful answers and 429s are counted over ``--seconds`` after a short ramp-up.

    .venv/bin/python -m bench.ratelimit.run [--rpm 1200] [--seconds 60] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.throughput.run import start_sim, write_pool
from distillq import paths
from distillq.jobs import plan_name
from distillq.keys import TEACHER_URL_KEY
from distillq.manifest import Manifest, save_manifest
from distillq.plans import write_plan
from distillq.queues import GENERATE
from distillq.spec import parse_spec, spec_to_dict
from orchestrator.embedded import EmbeddedRedis
from storage.store import ShardStore
from workers.app import configure

RAMP_S = 5.0


def sim_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/sim/stats", timeout=5) as resp:
        return dict(json.load(resp))


def create_run(store: ShardStore, run_id: str, labels: list[str], rpm: int, limiter: bool,
               n_jobs: int) -> None:
    """A run manifest and one cycle's plan of one-request jobs, as the controller writes them."""
    spec = parse_spec({
        "run_id": run_id, "storage": store.uri, "dataset": {"train": "unused.csv"},
        "teacher": {"kind": "sim", "model": "distillq-sim", "rpm": rpm,
                    "global_rate_limit": limiter, "concurrency": 16, "max_attempts": 20,
                    "max_elapsed_s": 600},
        "generation": {"examples_per_request": 4},
    })
    save_manifest(store, Manifest(run_id=run_id, spec=spec_to_dict(spec), taxonomy=labels,
                                  created_at=time.time()))
    jobs = [{"job_id": plan_name(1, i), "mode": "sharded", "n_examples": 4,
             "target_labels": [labels[i % len(labels)]], "part": i, "report": {},
             "confusions": [], "fewshot": [], "correct": [], "misclassified": [],
             "hard_negatives": []} for i in range(n_jobs)]
    write_plan(store, run_id, 1, jobs)


def start_workers(n: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        cmd = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "generate",
               "-P", "threads", "-c", "8", "-n", f"bench-{i}@%h", "-l", "WARNING",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        log = open(logs / f"worker-{i}.log", "ab")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        log.close()
    return procs


def wait_for_workers(app: Any, procs: list[subprocess.Popen[bytes]],
                     timeout: float = 600.0) -> float:
    """Wait until every worker has answered a ping (8 cold starts take minutes on 2 busy
    cores); return the seconds it took."""
    t0 = time.monotonic()
    seen: set[str] = set()
    while time.monotonic() - t0 < timeout:
        dead = [p.pid for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"worker pid {dead[0]} exited during start-up (see its log)")
        for reply in app.control.ping(timeout=2.0) or []:
            seen |= set(reply)
        if len(seen) >= len(procs):
            return time.monotonic() - t0
    raise RuntimeError(f"only {len(seen)} of {len(procs)} workers answered in {timeout:.0f}s")


def measure(app: Any, client: Any, store: ShardStore, variant: dict[str, Any],
            seconds: float) -> dict[str, Any]:
    """Fill the queue with one run's jobs, then count the teacher's answers in the window."""
    url, run_id = variant["url"], variant["run_id"]
    client.set(TEACHER_URL_KEY.format(run_id=run_id), url)
    for job_id in store.read_json(run_id, paths.plan(1))["jobs"]:
        app.send_task(GENERATE, args=[run_id, 1, job_id, store.uri],
                      queue="generate")
    time.sleep(RAMP_S)
    before, t0 = sim_stats(url), time.monotonic()
    time.sleep(seconds)
    after, wall = sim_stats(url), time.monotonic() - t0
    app.control.purge()
    ok = after.get("ok", 0) - before.get("ok", 0)
    rejected = after.get("status_429", 0) - before.get("status_429", 0)
    return {"variant": variant["name"], "limit_rpm": variant["rpm"],
            "achieved_rpm": round(ok / wall * 60, 1),
            "achieved_over_limit": round(ok / wall * 60 / variant["rpm"], 3),
            "answers_429": rejected, "answers_429_total": after.get("status_429", 0),
            "window_s": round(wall, 1)}


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    def kill(p: subprocess.Popen[bytes], sig: int) -> None:
        try:  # workers lead their own process group; the sims do not
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, sig)
            else:
                p.send_signal(sig)
        except ProcessLookupError:
            pass

    for p in procs:
        if p.poll() is None:
            kill(p, signal.SIGTERM)
    deadline = time.monotonic() + 10  # tasks still waiting on 429 back-offs are not awaited
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill(p, signal.SIGKILL)
            p.wait(5)


def run(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    labels = write_pool(tmp / "pool.parquet")
    server = EmbeddedRedis(tmp / "redis")
    app, client, store = configure(server.url), server.client(), ShardStore(str(tmp / "store"))
    n_jobs = int(args.rpm / 60 * (args.seconds + RAMP_S) * 1.3) + 50
    per_worker = f"{args.rpm / args.workers:g}/m"
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "REDIS_URL": server.url, "PYTHONUNBUFFERED": "1",
           "DISTILLQ_WORKDIR": str(tmp / "work")}
    try:
        variants = []
        for name, limiter in (("(a) global limiter, rpm=L in Redis", True),
                              (f"(b) Celery rate_limit={per_worker} per worker", False)):
            run_id = "global" if limiter else "celery"
            sim, url = start_sim(tmp / "pool.parquet", "--rpm-limit", str(args.rpm),
                                 "--latency-ms", str(args.latency_ms))
            procs.append(sim)
            create_run(store, run_id, labels, args.rpm, limiter, n_jobs)
            variants.append({"name": name, "run_id": run_id, "url": url, "rpm": args.rpm,
                             "celery_rate": None if limiter else per_worker})
        workers = start_workers(args.workers, env, tmp)
        procs += workers
        print(f"workers up after {wait_for_workers(app, workers):.0f}s", file=sys.stderr)
        rows = []
        for v in variants:
            app.control.rate_limit(GENERATE, v["celery_rate"], reply=True,
                                   timeout=5.0)
            rows.append(measure(app, client, store, v, args.seconds))
            time.sleep(3)  # let the purged variant's last tasks drain
        return rows
    finally:
        stop(procs)
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rpm", type=int, default=1200, help="the teacher's limit L (requests/min)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the store, sim pool and worker logs here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        rows = run(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(args, Path(tmp))
    for row in rows:
        print(json.dumps(row))
    print(f"\n{args.workers} worker processes x 8 threads, limit L = {args.rpm} requests/min, "
          f"teacher latency {args.latency_ms:g} ms, {args.seconds:g} s window\n")
    print("| variant | achieved / limit | achieved rpm | 429 answers |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['achieved_over_limit']:.3f} | {r['achieved_rpm']} | "
              f"{r['answers_429']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
