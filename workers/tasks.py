"""Celery task shells: decode ids, call a plain function, commit, tell the controller.

Every task is idempotent: it writes one output named by its deterministic job id with an atomic
commit, and returns early when that output is already committed. TransientError is retried
with exponential backoff and jitter; PermanentError is recorded in storage (so the controller
can decide without Redis) and fails the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task

from workers.app import app, redis_url
from workers.context import (
    ATTRIBUTION_QUALITY_FILE,
    RunContext,
    notify,
    redis_client,
    run_context,
    teacher_base_url,
    workdir,
)
from workers.errors import PermanentError, TransientError

log = logging.getLogger("distillq.tasks")

RETRY = {
    "autoretry_for": (TransientError, ConnectionError, TimeoutError),
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 8,
    "acks_late": True,
}


def _run_job(
    kind: str, ctx: RunContext, cycle: int, job_id: str, body: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Time the job, log one line, record a permanent failure, notify the controller."""
    t0 = time.perf_counter()
    client = redis_client(redis_url())
    where = f"run={ctx.run_id} cycle={cycle} job={job_id}"
    try:
        result = body()
    except PermanentError as exc:
        ctx.store.write_json(
            ctx.run_id, f"cycle={cycle}/failed/{kind}-{job_id}.json",
            {"kind": kind, "job_id": job_id, "error": f"{type(exc).__name__}: {exc}"},
        )
        notify(client, ctx.run_id, {"kind": kind, "cycle": cycle, "job": job_id, "ok": False})
        log.error("%6.2fs ✗ %s(%s) permanent: %s", time.perf_counter() - t0, kind, where, exc)
        raise
    notify(client, ctx.run_id, {"kind": kind, "cycle": cycle, "job": job_id, "ok": True})
    log.info("%6.2fs → %s(%s) %s", time.perf_counter() - t0, kind, where, _short(result))
    return result


def _short(result: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, int | float | str))


@app.task(name="distillq.ping")
def ping(payload: str = "ping", reply_to: str | None = None) -> str:
    """A no-op round trip, for health checks and broker benchmarks (``reply_to``: a Redis
    list the payload is pushed to, so the sender can time the round trip)."""
    if reply_to:
        redis_client(redis_url()).rpush(reply_to, payload)
    return payload


@app.task(name="distillq.generate", bind=True, **RETRY)
def generate(self: Task, run_id: str, cycle: int, job_id: str, storage: str) -> dict[str, Any]:
    ctx = run_context(storage, run_id)

    def body() -> dict[str, Any]:
        if ctx.store.has(run_id, cycle, "generated", job_id):
            return {"skipped": "already committed"}
        from orchestrator.controller import read_job
        from workers.teachers.generate import generate_job

        job = read_job(ctx.store, run_id, cycle, job_id)
        if job is None:
            raise PermanentError(f"job {job_id} is not in the plan of cycle {cycle}")
        client = redis_client(redis_url())
        result = generate_job(
            ctx.spec, job, run_id=run_id, cycle=cycle,
            taxonomy=list(ctx.taxonomy), redis=client,
            base_url=teacher_base_url(client, ctx.store, run_id),
        )
        ctx.store.write_json(run_id, f"cycle={cycle}/jobstats/{job_id}.json", result.stats)
        ctx.store.commit(run_id, cycle, "generated", job_id, result.table)
        return {"examples": result.table.num_rows}

    return _run_job("generate", ctx, cycle, job_id, body)


@app.task(name="distillq.prepare_teacher", bind=True, **RETRY)
def prepare_teacher(self: Task, run_id: str, storage: str) -> dict[str, Any]:
    ctx = run_context(storage, run_id)

    def body() -> dict[str, Any]:
        from workers.attribution.job import prepare_teacher as prepare
        from workers.attribution.job import quality_report

        teacher = prepare(ctx.spec, ctx.store, run_id, workdir(run_id))
        if ctx.store.read_json(run_id, ATTRIBUTION_QUALITY_FILE) is None:  # once, for the report
            ctx.store.write_json(run_id, ATTRIBUTION_QUALITY_FILE,
                                 quality_report(ctx.spec, ctx.store, run_id, workdir(run_id)))
        return {"teacher": str(teacher)}

    return _run_job("prepare_teacher", ctx, 0, "teacher", body)


@app.task(name="distillq.attribute", bind=True, **RETRY)
def attribute(self: Task, run_id: str, cycle: int, job_id: str, storage: str) -> dict[str, Any]:
    ctx = run_context(storage, run_id)

    def body() -> dict[str, Any]:
        if ctx.store.has(run_id, cycle, "attributed", job_id):
            return {"skipped": "already committed"}
        from workers.attribution.job import attribute_table

        examples = ctx.store.read_shard(run_id, cycle, "generated", job_id)
        table = attribute_table(ctx.spec, ctx.store, run_id, examples, workdir(run_id))
        ctx.store.commit(run_id, cycle, "attributed", job_id, table)
        return {"examples": table.num_rows}

    return _run_job("attribute", ctx, cycle, job_id, body)


@app.task(name="distillq.train", bind=True, **RETRY)
def train(self: Task, run_id: str, cycle: int, storage: str) -> dict[str, Any]:
    ctx = run_context(storage, run_id)

    def body() -> dict[str, Any]:
        from workers.training.cycle import train_cycle

        report = train_cycle(ctx.spec, ctx.store, run_id, cycle, workdir(run_id))
        return {"macro_f1": round(float(report.get("macro_f1", 0.0)), 4)}

    return _run_job("train", ctx, cycle, "train", body)


@app.task(name="distillq.test", bind=True, **RETRY)
def test(self: Task, run_id: str, cycle: int, storage: str) -> dict[str, Any]:
    ctx = run_context(storage, run_id)

    def body() -> dict[str, Any]:
        from workers.training.cycle import evaluate_on_test

        report = evaluate_on_test(ctx.spec, ctx.store, run_id, cycle, workdir(run_id))
        return {"macro_f1": round(float(report.get("macro_f1", 0.0)), 4)}

    return _run_job("test", ctx, cycle, "test", body)
