"""Celery task shells: decode ids, call a plain function, commit, tell the controller.

Every task is idempotent: it writes one output named by its deterministic job id with an atomic
commit, and returns early when that output is already committed. Any error but a
PermanentError (transient ones, connection errors and timeouts — Redis's own included — and
unexpected ones) is retried with exponential backoff and jitter, ``max_retries`` times. A
PermanentError — a missing or malformed run manifest included — and an error that has used up
its retries are recorded in storage (``distillq.jobs.JobId.failed_record``:
``cycle=<c>/failed/<kind>-<job>.json``, as the controller reads them, so it can decide without
Redis), the controller is notified, and the job fails.

The attribution and training modules import torch and transformers (seconds): a task imports
them when it first runs, so the generate workers and the controller's process never do.

Each task has its queue's time limits (``workers.app.task_time_limits``); the prefork pool
enforces them, the threads pool (generate) does not, so ``generate_job`` gets a deadline of its
own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
from celery import Task

from distillq import paths
from distillq.errors import PermanentError, TransientError
from distillq.jobs import JobId
from distillq.plans import read_job
from distillq.queues import ATTRIBUTE, GENERATE, PING, PREPARE_TEACHER, SCORE, SELECT, TEST, TRAIN
from distillq.runstate import run_ended
from workers.app import SOFT_MARGIN_S, TIME_LIMITS, app, redis_url, task_time_limits
from workers.context import (
    RunContext,
    mark_started,
    notify,
    open_store,
    redis_client,
    run_context,
    seed_texts,
    teacher_base_url,
    workdir,
)
from workers.labelling.cycle import score_shard, select_texts
from workers.teachers.generate import failed_attempt_stats, generate_job
from workers.teachers.labelling import label_job

log = logging.getLogger("distillq.tasks")

# redis-py's ConnectionError / TimeoutError do not derive from the builtins of the same name.
RETRYABLE: tuple[type[BaseException], ...] = (
    TransientError, ConnectionError, TimeoutError,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)

RETRY = {
    # Any exception but a PermanentError is retried with backoff: besides the transient ones
    # above, an unexpected error (a bug, a full disk, a folder gone) may heal, and when it
    # does not, the job is recorded as failed after the last retry (``_run_job``) instead of
    # leaving the controller to wait out the job's deadline (6 h for training).
    "autoretry_for": (Exception,),
    "dont_autoretry_for": (PermanentError,),
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 8,
    "acks_late": True,
}

# The teacher requests of a generate job must be done by then: room is left to commit before
# the soft time limit (which the threads pool does not enforce anyway).
GENERATE_DEADLINE_S = TIME_LIMITS["generate"] - 2 * SOFT_MARGIN_S


def _options(name: str) -> dict[str, Any]:
    return {"name": name, "bind": True, **RETRY, **task_time_limits(name)}


def _retries_used_up(task: Task) -> bool:
    """True when the autoretry of the error being handled would exceed ``max_retries``
    (Celery then re-raises it and the job fails for good)."""
    request = task.request
    if request.called_directly or task.max_retries is None:
        return False
    return int(request.retries or 0) >= int(task.max_retries)


def _record_failure(storage: str, run_id: str, job: JobId, failure: BaseException,
                    error: str) -> None:
    """``cycle=<c>/failed/<kind>-<job>.json``, as the controller writes one for a job it gave
    up on, with the error's class in ``error_type`` (the controller tells budget refusals
    apart by it); a storage error here is logged, never raised over the job's own error."""
    try:
        open_store(storage).write_json(run_id, job.failed_record,
                                       {"kind": job.kind, "job_id": job.name,
                                        "error_type": type(failure).__name__,
                                        "error": error})
    except Exception as exc:  # noqa: BLE001 - the job's own error is the one to raise
        log.error("failure of %s(run=%s cycle=%d job=%s) not recorded: %s: %s",
                  job.kind, run_id, job.cycle, job.name, type(exc).__name__, exc)


def _notify_failure(client: Any, run_id: str, job: JobId) -> None:
    """Wake the controller for a recorded failure; a Redis error here is logged, never raised
    (raised, Celery would retry the whole job, paying the teacher again)."""
    try:
        notify(client, run_id, _event(job, ok=False))
    except redis.exceptions.RedisError as exc:
        log.warning("failure of %s(run=%s cycle=%d job=%s) recorded but not notified: %s",
                    job.kind, run_id, job.cycle, job.name, exc)


def _event(job: JobId, ok: bool) -> dict[str, Any]:
    return {"kind": job.kind, "cycle": job.cycle, "job": job.name, "ok": ok}


def _run_job(task: Task, job: JobId, storage: str, run_id: str,
             body: Callable[[RunContext], dict[str, Any]]) -> dict[str, Any]:
    """Load the run's context, time the job, log one line; record a permanent failure (or
    retries used up) in storage, and notify the controller either way."""
    t0 = time.perf_counter()
    client = redis_client(redis_url())
    kind, where = job.kind, f"run={run_id} cycle={job.cycle} job={job.name}"
    mark_started(client, run_id, task.request.id)
    try:
        result = body(run_context(storage, run_id))
    except PermanentError as exc:
        _record_failure(storage, run_id, job, exc, f"{type(exc).__name__}: {exc}")
        _notify_failure(client, run_id, job)
        log.error("%6.2fs ✗ %s(%s) permanent: %s", time.perf_counter() - t0, kind, where, exc)
        raise
    except Exception as exc:  # transient or unexpected: retried, recorded once given up
        if not _retries_used_up(task):
            if not isinstance(exc, RETRYABLE):
                log.warning("%s(%s) unexpected %s: %s; retrying", kind, where,
                            type(exc).__name__, exc, exc_info=True)
            raise  # retried by Celery (autoretry_for)
        retries = int(task.request.retries or 0)
        _record_failure(storage, run_id, job, exc,
                        f"{type(exc).__name__}: {exc} (gave up after {retries} retries)")
        _notify_failure(client, run_id, job)
        log.error("%6.2fs ✗ %s(%s) gave up after %d retries: %s", time.perf_counter() - t0,
                  kind, where, retries, exc)
        raise
    notify(client, run_id, _event(job, ok=True))
    log.info("%6.2fs → %s(%s) %s", time.perf_counter() - t0, kind, where, _short(result))
    return result


def _short(result: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, int | float | str))


@app.task(name=PING, **task_time_limits(PING))
def ping(payload: str = "ping", reply_to: str | None = None) -> str:
    """A no-op round trip, for health checks and broker benchmarks (``reply_to``: a Redis
    list the payload is pushed to, so the sender can time the round trip)."""
    if reply_to:
        redis_client(redis_url()).rpush(reply_to, payload)
    return payload


@app.task(**_options(GENERATE))
def generate(self: Task, run_id: str, cycle: int, job_id: str, storage: str) -> dict[str, Any]:
    def body(ctx: RunContext) -> dict[str, Any]:
        if ctx.store.has(run_id, cycle, "generated", job_id):
            return {"skipped": "already committed"}
        ended = run_ended(ctx.store, ctx.manifest)
        if ended:  # cancelled or failed while this job waited in the queue: do not pay for it
            log.info("generate(run=%s cycle=%d job=%s) skipped: %s", run_id, cycle, job_id,
                     ended)
            return {"skipped": ended}
        job = read_job(ctx.store, run_id, cycle, job_id)
        if job is None:
            raise PermanentError(f"job {job_id} is not in the plan of cycle {cycle}")
        client = redis_client(redis_url())
        task_id = self.request.id  # read here: Celery's request is per thread, the beat is not
        where: dict[str, Any] = {
            "run_id": run_id, "cycle": cycle, "taxonomy": list(ctx.taxonomy), "redis": client,
            "base_url": teacher_base_url(client, ctx.store, run_id),
            "deadline_s": GENERATE_DEADLINE_S,
            "beat": lambda: mark_started(client, run_id, task_id)}
        try:
            if job.get("kind") == "label":  # the teacher labels unlabelled texts
                result = label_job(ctx.spec, job, **where)
            else:
                result = generate_job(ctx.spec, job, **where, seed_texts=seed_texts(ctx))
        except Exception as exc:  # what the failed attempt paid for is recorded, then raised
            _record_paid(ctx, run_id, cycle, job_id, exc, str(job.get("kind", "generate")))
            raise
        ctx.store.write_json(run_id, paths.jobstats(cycle, job_id), result.stats)
        ctx.store.commit(run_id, cycle, "generated", job_id, result.table)
        return {"examples": result.table.num_rows}

    return _run_job(self, JobId.generate(cycle, job_id), storage, run_id, body)


def _record_paid(ctx: RunContext, run_id: str, cycle: int, job_id: str,
                 exc: BaseException, kind: str) -> None:
    """``paths.failed_attempt`` for a generate (or label) attempt that failed after paying for
    answers (the run's spend in storage counts it); a storage error here is logged, not
    raised."""
    stats = failed_attempt_stats(exc)
    if stats is None:
        return
    stats = {**stats, "kind": kind}
    stamp = f"{time.time():.6f}".replace(".", "")
    try:
        ctx.store.write_json(run_id, paths.failed_attempt(cycle, job_id, stamp), stats)
    except Exception as err:  # noqa: BLE001 - the job's own error is the one to raise
        log.error("paid-for failed attempt of %s not recorded: %s: %s", job_id,
                  type(err).__name__, err)


@app.task(**_options(PREPARE_TEACHER))
def prepare_teacher(self: Task, run_id: str, storage: str) -> dict[str, Any]:
    def body(ctx: RunContext) -> dict[str, Any]:
        from workers.attribution import job  # deferred: torch, transformers

        work = workdir(run_id, ctx.store.uri)
        teacher = job.prepare_teacher(ctx.spec, ctx.store, run_id, work)
        if ctx.store.read_json(run_id, paths.ATTRIBUTION_QUALITY) is None:  # once, for the report
            ctx.store.write_json(run_id, paths.ATTRIBUTION_QUALITY,
                                 job.quality_report(ctx.spec, ctx.store, run_id, work))
        return {"teacher": str(teacher)}

    return _run_job(self, JobId.single("prepare_teacher"), storage, run_id, body)


@app.task(**_options(ATTRIBUTE))
def attribute(self: Task, run_id: str, cycle: int, job_id: str, storage: str) -> dict[str, Any]:
    def body(ctx: RunContext) -> dict[str, Any]:
        if ctx.store.has(run_id, cycle, "attributed", job_id):
            return {"skipped": "already committed"}
        from workers.attribution import job  # deferred: torch, transformers

        work = workdir(run_id, ctx.store.uri)
        examples = ctx.store.read_shard(run_id, cycle, "generated", job_id)
        table = job.attribute_table(ctx.spec, ctx.store, run_id, examples, work)
        ctx.store.commit(run_id, cycle, "attributed", job_id, table)
        if cycle == 0 and ctx.store.read_json(run_id, paths.ATTRIBUTION_QUALITY) is None:
            # a teacher used as it is has no prepare_teacher job: the seed's attribute job
            # measures rationale quality once for the report instead (best effort: the
            # shard is committed, so a failure here must not fail or redo the job)
            try:
                ctx.store.write_json(run_id, paths.ATTRIBUTION_QUALITY, job.quality_report(
                    ctx.spec, ctx.store, run_id, work))
            except Exception as exc:  # noqa: BLE001 - reported as missing, job still done
                log.warning("run=%s rationale quality not measured: %s: %s", run_id,
                            type(exc).__name__, exc)
        return {"examples": table.num_rows}

    return _run_job(self, JobId.attribute(cycle, job_id), storage, run_id, body)


@app.task(**_options(TRAIN))
def train(self: Task, run_id: str, cycle: int, storage: str) -> dict[str, Any]:
    def body(ctx: RunContext) -> dict[str, Any]:
        from workers.training.cycle import train_cycle  # deferred: torch, transformers

        report = train_cycle(ctx.spec, ctx.store, run_id, cycle, workdir(run_id, ctx.store.uri))
        return {"macro_f1": round(float(report.get("macro_f1", 0.0)), 4)}

    return _run_job(self, JobId.single("train", cycle), storage, run_id, body)


@app.task(**_options(TEST))
def test(self: Task, run_id: str, cycle: int, storage: str) -> dict[str, Any]:
    def body(ctx: RunContext) -> dict[str, Any]:
        from workers.training.cycle import evaluate_on_test  # deferred: torch, transformers

        report = evaluate_on_test(ctx.spec, ctx.store, run_id, cycle,
                                  workdir(run_id, ctx.store.uri))
        return {"macro_f1": round(float(report.get("macro_f1", 0.0)), 4)}

    return _run_job(self, JobId.single("test", cycle), storage, run_id, body)


@app.task(**_options(SCORE))
def score(self: Task, run_id: str, cycle: int, shard: str, storage: str) -> dict[str, Any]:
    def body(ctx: RunContext) -> dict[str, Any]:
        n = score_shard(ctx.spec, ctx.store, run_id, cycle, shard, workdir(run_id, ctx.store.uri))
        return {"scored": n}

    return _run_job(self, JobId("score", cycle, shard), storage, run_id, body)


@app.task(**_options(SELECT))
def select(self: Task, run_id: str, cycle: int, storage: str) -> dict[str, Any]:
    def body(ctx: RunContext) -> dict[str, Any]:
        chosen = select_texts(ctx.spec, ctx.store, run_id, cycle)
        return {"selected": len(chosen["texts"])}

    return _run_job(self, JobId.single("select", cycle), storage, run_id, body)
