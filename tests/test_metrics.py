"""Prometheus metrics of ``orchestrator serve --metrics-port``: what the workers, the rate
limiter and the controller really write (real Redis, real storage), as a scrape sees it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis
from composekit import free_port, wait_for
from manifestkit import decision
from prometheus_client.parser import text_string_to_metric_families

from distillq.keys import INFLIGHT, RESENDS, RUNS_KEY
from distillq.manifest import save_manifest
from distillq.plans import write_plan
from distillq.spec import parse_spec
from orchestrator.metrics import DistillqCollector
from orchestrator.runs import create_run, load_manifest
from storage.store import ShardStore
from tests.teachers.clocks import VirtualTime
from workers.teachers.accounting import RequestRecord, Tally, record_endpoint, record_spend
from workers.teachers.openai import endpoint_for
from workers.teachers.ratelimit import GlobalRateLimiter

RUN = "metrics-run"
BASE_URL = "http://user:hunter2@teacher.example:8000/v1"


def _make_run(tmp_path: Path) -> tuple[ShardStore, dict]:
    data = tmp_path / "data.csv"
    rows = [f"message number {i} about topic {i % 3}" for i in range(60)]
    data.write_text("text,label\n" + "".join(f"{t},l{i % 3}\n" for i, t in enumerate(rows)))
    spec = parse_spec({
        "name": RUN, "run_id": RUN, "storage": str(tmp_path / "store"),
        "dataset": {"train": str(data), "seed_size": 30},
        "teacher": {"kind": "openai", "base_url": BASE_URL, "model": "big-llm", "rpm": 600,
                    "tpm": 60000},
    })
    store = ShardStore(spec.storage)
    create_run(spec, store)
    manifest = load_manifest(store, RUN)
    manifest.decide(decision(0, 0, value=0.61))
    save_manifest(store, manifest)
    return store, manifest


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _scenario(tmp_path: Path, client: redis.Redis) -> tuple[ShardStore, str, VirtualTime]:
    """Cycle 1 with 5 planned jobs: 2 committed, 1 failed, 1 in flight (sent twice), 1 not
    sent; 3 queued messages; spend, 429s and a booked-ahead budget for the endpoint."""
    store, manifest = _make_run(tmp_path)
    jobs = [{"job_id": f"c01-{i:04d}", "n_examples": 4} for i in range(5)]
    write_plan(store, RUN, 1, jobs)
    seed = store.read_shard(RUN, 0, "generated", "seed")
    for job in ("c01-0000", "c01-0001"):
        store.commit(RUN, 1, "generated", job, seed.slice(0, 2))
    store.write_json(RUN, "cycle=1/failed/generate-c01-0002.json", {"error": "x"})
    client.hset(INFLIGHT.format(run_id=RUN), mapping={
        "c01/gen/c01-0003": json.dumps({"sent_at": 1.0, "sends": 2}),
        "c01/gen/c01-0000": json.dumps({"sent_at": 1.0, "sends": 1}),
        "c00/train": json.dumps({"sent_at": 1.0, "sends": 1})})
    client.set(RESENDS.format(run_id=RUN), 3)  # re-sends of decided cycles, entries dropped
    client.rpush("generate", "m1", "m2")
    client.rpush("train", "m3")
    client.hset(RUNS_KEY, RUN, store.uri)
    record_spend(client, RUN, 1200, 800, 0.0156, requests=7)

    # the endpoint: real limiter calls and a job's tally with two 429 retries and one failure
    spec = manifest.run_spec()
    endpoint = endpoint_for(spec.teacher)
    vt = VirtualTime()  # the booking's clock, stopped: how far ahead it is booked is exact
    limiter = GlobalRateLimiter(client, endpoint.namespace, rpm=600, tpm=60000, clock=vt.clock,
                                sleep=vt.sleep)

    async def book() -> None:
        for _ in range(30):  # 30 requests at 10/s: ~3 s booked ahead
            await limiter.reserve(100)
        await limiter.cool_down(20.0)

    asyncio.run(book())
    tally = Tally()
    tally.requests.extend([RequestRecord("r0", input_tokens=10, output_tokens=5, attempts=3),
                           RequestRecord("r1", input_tokens=10, output_tokens=5, attempts=1)])
    tally.retry("http_429")
    tally.retry("http_429")
    tally.retry("timeout")
    tally.fail("http_429")
    record_endpoint(client, endpoint.namespace, tally, host="teacher.example:8000",
                    model="big-llm", rpm=600, tpm=60000)
    return store, endpoint.namespace.removeprefix("dq:rl:"), vt


def test_collector_reports_queues_jobs_spend_budget_and_429s(
        tmp_path: Path, redis_client: redis.Redis) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    _, digest, vt = _scenario(tmp_path, redis_client)
    registry = CollectorRegistry()  # scraped on the booking's clock (injected, like the limiter's)
    registry.register(DistillqCollector(redis_client, now=vt.clock))
    text = generate_latest(registry).decode()
    got = _samples(text)

    def v(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert v("distillq_queue_depth", queue="generate") == 2
    assert v("distillq_queue_depth", queue="train") == 1
    assert v("distillq_queue_depth", queue="attribute") == 0
    assert v("distillq_cycle", run=RUN) == 1
    states = {s: v("distillq_jobs", run=RUN, state=s)
              for s in ("planned", "committed", "failed", "in_flight", "waiting")}
    assert states == {"planned": 5, "committed": 2, "failed": 1, "in_flight": 1, "waiting": 1}
    assert v("distillq_job_resends", run=RUN) == 1 + 3
    assert v("distillq_run_status", run=RUN, status="running") == 1
    assert v("distillq_teacher_tokens", run=RUN, direction="in") == 1200
    assert v("distillq_teacher_tokens", run=RUN, direction="out") == 800
    assert v("distillq_teacher_cost", run=RUN) == pytest.approx(0.0156)
    assert v("distillq_teacher_requests", run=RUN) == 7
    assert v("distillq_validation_metric", run=RUN, metric="macro_f1") == pytest.approx(0.61)
    assert v("distillq_best_validation_metric", run=RUN, metric="macro_f1") == pytest.approx(0.61)

    ep = {"endpoint": digest, "host": "teacher.example:8000", "model": "big-llm"}
    assert v("distillq_ratelimit_limit", budget="requests_per_minute", **ep) == 600
    assert v("distillq_ratelimit_limit", budget="tokens_per_minute", **ep) == 60000
    # 30 requests of 100 tokens at 10 requests and 1,000 tokens a second, then a 20 s cool-down
    backlog = "distillq_ratelimit_backlog_seconds"
    assert v(backlog, budget="requests", **ep) == pytest.approx(3.0)
    assert v(backlog, budget="tokens", **ep) == pytest.approx(3.0)
    assert v("distillq_ratelimit_cooldown_seconds", **ep) == pytest.approx(20.0)
    assert v("distillq_teacher_429_total", **ep) == 3
    assert v("distillq_teacher_retries_total", reason="http_429", **ep) == 2
    assert v("distillq_teacher_retries_total", reason="timeout", **ep) == 1
    assert v("distillq_teacher_failures_total", reason="http_429", **ep) == 1
    assert v("distillq_teacher_endpoint_requests_total", **ep) == 2
    assert v("distillq_teacher_endpoint_attempts_total", **ep) == 4
    assert v("distillq_teacher_endpoint_tokens_total", **ep) == 30
    assert "hunter2" not in text and "user:" not in text  # no credentials in labels


def test_metrics_fall_back_to_storage_spend_and_survive_a_broken_run(
        tmp_path: Path, redis_client: redis.Redis) -> None:
    store, _ = _make_run(tmp_path)
    write_plan(store, RUN, 1, [{"job_id": "c01-0000", "n_examples": 4}])
    store.write_json(RUN, "cycle=1/jobstats/c01-0000.json",
                     {"tokens_in": 40, "tokens_out": 20, "cost": 0.5, "requests": 2})
    store.commit(RUN, 1, "generated", "c01-0000",
                 store.read_shard(RUN, 0, "generated", "seed").slice(0, 1))
    redis_client.hset(RUNS_KEY, mapping={RUN: store.uri, "gone": str(tmp_path / "nowhere")})
    got = Counter()
    for family in DistillqCollector(redis_client).collect():
        for s in family.samples:
            if s.labels.get("run") == RUN and s.name == "distillq_teacher_tokens":
                got[s.labels["direction"]] += s.value
            assert s.labels.get("run") != "gone"
    assert got == {"in": 40, "out": 20}


def test_serve_exposes_metrics_over_http(tmp_path: Path, redis_url: str,
                                         redis_client: redis.Redis) -> None:
    store, _ = _make_run(tmp_path)
    redis_client.hset(RUNS_KEY, RUN, store.uri)
    port = free_port()
    env = {"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--poll", "0.5",
                             "--metrics-port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def scrape() -> str | None:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode()[-3000:])  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                return None
            # cycle 0 is decided: the controller's first tick plans cycle 1 and sends its jobs
            # (a scrape may land mid-tick: wait until every planned job is queued)
            got = _samples(text)
            queued = got.get(("distillq_queue_depth", (("queue", "generate"),)))
            planned = got.get(("distillq_jobs", (("run", RUN), ("state", "planned"))))
            sent = got.get(("distillq_jobs", (("run", RUN), ("state", "in_flight"))))
            return got if queued and queued == planned == sent else None

        got = wait_for(scrape, 60, "serve's /metrics with cycle 1's jobs queued")
        planned = got[("distillq_jobs", (("run", RUN), ("state", "planned")))]
        assert planned > 0
        assert got[("distillq_jobs", (("run", RUN), ("state", "in_flight")))] == planned
        assert got[("distillq_jobs", (("run", RUN), ("state", "waiting")))] == 0
        assert got[("distillq_cycle", (("run", RUN),))] == 1
        assert got[("distillq_validation_metric", (("metric", "macro_f1"), ("run", RUN)))] \
            == pytest.approx(0.61)
        assert ("distillq_unacked_messages", ()) in got
        assert any(name.startswith("process_") for name, _ in got)  # the default collectors
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()
