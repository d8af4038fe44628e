"""``generate_job``: one planned generation job → validated teacher examples + accounting.

The job (``docs/architecture.md``, "Generation jobs") becomes one or more requests of at most
``examples_per_request`` examples, sent concurrently on the process's teacher runtime. Each
answer is parsed, then validated in request order so ids and content do not depend on timing:
ids are ``<job_id>-<i:04d>``. An answer that cannot be used is asked again, and never as the
same request (``workers.teachers.asking``). A job whose earlier attempt failed on its answers
varies every seed too
(``REASKS_KEY``). Each reason is counted (``retries_by_reason``: ``malformed``,
``truncated``, ...).

Tokens, latency and cost of each request are shared out over the examples it produced; the
job's totals come back in ``stats``. Each answer's tokens and cost are added to the run's
spend counter in Redis as soon as it comes back (``Spend``), so concurrent jobs and
``check_budget`` see spend that is still in flight. A Redis error there never fails the job
nor loses its paid-for answers: what could not be sent is sent with the next answer or at the
end of the job, else logged (the job's ``stats`` in storage still carry it).

``deadline_s`` bounds the whole job (the teacher requests are cancelled and a
TeacherTransientError is raised): the generate workers run Celery's ``threads`` pool, which does
not enforce task time limits.

A job fails as a whole (so the task is retried) when more than
``tolerated_failure_fraction`` of its requests fail, or at once on a permanent error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa
import redis as redis_lib

from distillq.errors import DistillqError, PermanentError
from distillq.keys import REASKS_KEY
from distillq.spec import RunSpec
from storage.schemas import EXAMPLES
from workers.teachers.accounting import (
    Tally,
    check_budget,
    output_tokens_per_example,
    record_endpoint,
)
from workers.teachers.asking import Answer, Asking, Request, Spend, ask_all
from workers.teachers.errors import TeacherTransientError
from workers.teachers.openai import ChatClient, client_for, host_of
from workers.teachers.parsing import Validator, validate_items
from workers.teachers.prompts import Prompt, build_prompt, job_prompts
from workers.teachers.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class GenerationResult:
    table: pa.Table          # storage.schemas.EXAMPLES
    stats: dict[str, Any]    # requests, tokens_in/out, cost, latency_s, *_by_reason, ...


def _check_failures(answers: list[Answer | BaseException], tolerated: float) -> None:
    """Raise when the job must fail: any permanent error, or too many failed requests."""
    failed = [a for a in answers if isinstance(a, BaseException)]
    for exc in failed:
        if isinstance(exc, PermanentError) or not isinstance(exc, DistillqError):
            raise exc
    if failed and len(failed) > tolerated * len(answers):
        raise failed[0]


def _rows(answers: list[Answer | BaseException], prompts: Sequence[Prompt],
          validator: Validator, tally: Tally, ids: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for answer, prompt in zip(answers, prompts, strict=True):
        if isinstance(answer, BaseException):
            continue
        parsed = validate_items(answer.items, validator, prompt.n)
        tally.reject(parsed.rejects)
        rec = answer.record
        rec.kept = k = len(parsed.examples)
        tin, tout = shares(rec.input_tokens, k), shares(rec.output_tokens, k)
        for j, (text, label) in enumerate(parsed.examples):
            rows.append({
                **ids, "id": f"{ids['job_id']}-{len(rows):04d}", "source": "teacher",
                "label": label, "text": text, "teacher_model": answer.model,
                "prompt_id": rec.request_id, "input_tokens": tin[j], "output_tokens": tout[j],
                "latency_s": rec.latency_s / k, "cost": rec.cost / k,
            })
    return rows


def shares(total: int, k: int) -> list[int]:
    """``total`` split into ``k`` integers that add up to it exactly."""
    base, extra = divmod(total, max(k, 1))
    return [base + (1 if i < extra else 0) for i in range(k)]


def _job_texts(job: dict[str, Any]) -> list[str]:
    keys = ("fewshot", "correct", "misclassified", "hard_negatives")
    return [str(x.get("text", "")) for k in keys for x in job.get(k, []) or []]


@dataclass(frozen=True)
class JobCall:
    """Where and how a job's requests are sent (the task shell's part of ``generate_job``)."""

    run_id: str
    cycle: int
    redis: redis_lib.Redis
    pool: Runtime | None = None  # the teacher runtime; default: the process's
    base_url: str | None = None  # overrides teacher.base_url (the embedded simulated teacher)
    deadline_s: float | None = None  # the most the requests may take together
    beat: Callable[[], None] | None = None  # the task's heartbeat


def ask_job(spec: RunSpec, job_id: str, call: JobCall, prompts: Sequence[Request],
            split: Callable[[Any], tuple[Any, Any]], tally: Tally,
            answer_key: str = "examples") -> list[Answer | BaseException]:
    """Send a job's requests (and their re-asks) and account for them; raise as the job
    must fail (``_check_failures``), carrying what the attempt paid for."""
    job_id, run_id, redis = str(job_id), call.run_id, call.redis
    spent = check_budget(redis, run_id, spec.budget)
    per_item = (output_tokens_per_example(spent) if answer_key == "examples"
                else LABEL_OUTPUT_TOKENS)
    runtime = call.pool or get_runtime()
    client = client_for(spec.teacher, runtime, redis, call.base_url)
    spend = Spend(redis, run_id)
    reasks = REASKS_KEY.format(run_id=run_id)
    ask = Asking(client, tally, spec.teacher.price, spend, per_item, split,
                 _failed_on_answers(redis, reasks, job_id), answer_key)
    try:
        # the deadline is applied on the loop: the requests are cancelled, and done being
        # cancelled, before the tally and the spend are read below
        answers = runtime.run(asyncio.wait_for(
            _beating(ask_all(ask, prompts, job_id), call.beat, beat_interval(spec)),
            call.deadline_s))
    except (TimeoutError, asyncio.TimeoutError):  # one class since Python 3.11: deadline
        tally.fail("job_deadline")
        raise _paid(TeacherTransientError(
            "job_deadline", f"job {job_id} not done within {call.deadline_s}s"), tally,
            job_id, call.cycle) from None
    finally:
        spend.flush()  # never raises: the answers paid for are not thrown away
        _record_endpoint(redis, client, tally)
        _flush_limiter(runtime, client)
    try:
        _check_failures(answers, spec.generation.tolerated_failure_fraction)
    except Exception as exc:
        if getattr(exc, "reason", "") in ANSWER_FAILURES:
            _count_failed_on_answers(redis, reasks, job_id)
        _paid(exc, tally, job_id, call.cycle)
        raise
    return answers


def generate_job(spec: RunSpec, job: dict[str, Any], *, run_id: str, cycle: int,
                 taxonomy: list[str], redis: redis_lib.Redis, pool: Runtime | None = None,
                 base_url: str | None = None, deadline_s: float | None = None,
                 beat: Callable[[], None] | None = None,
                 seed_texts: Sequence[str] = ()) -> GenerationResult:
    """Ask the teacher for ``job``'s examples; raises BudgetExceededError before starting
    when the run's spend has reached a ``BudgetSpec`` cap.

    ``pool``: the teacher runtime (event loop + HTTP session) to use, default the process's.
    ``base_url``: overrides ``spec.teacher.base_url`` (the embedded simulated teacher).
    ``deadline_s``: the most the requests may take together (None: no bound beyond the
    client's own timeouts); past it they are cancelled and TeacherTransientError is raised.
    ``beat``: called (in a thread) every ``beat_interval(spec)`` seconds while the requests
    run or wait for a slot: the task's heartbeat, so the controller's ``generate_deadline_s``
    measures a job that stopped, not one waiting behind ``teacher.concurrency`` or the rate
    limiter. ``seed_texts``: the run's seed, whose copies and near copies are rejected.

    An attempt of the job that fails on its answers (malformed or cut short after the
    re-asks) is counted in Redis (``REASKS_KEY``); the next attempt varies every seed by that
    count, so it sends none of the failed attempt's requests again. One that failed for any
    other reason (a Redis blip, a killed worker) sends the same requests again: the same
    answers, as an undisturbed run would get.
    """
    t0 = time.perf_counter()
    job_id = str(job["job_id"])
    prompts = job_prompts(spec, job, taxonomy)
    tally = Tally()

    def split(prompt: Prompt) -> tuple[Prompt, Prompt]:
        def ask_for(n: int) -> Prompt:
            return build_prompt(job, taxonomy, spec.generation, n=n, part=prompt.part,
                                parts=prompt.parts, descriptions=spec.dataset.label_descriptions)

        return ask_for(prompt.n // 2), ask_for(prompt.n - prompt.n // 2)

    call = JobCall(run_id, cycle, redis, pool, base_url, deadline_s, beat)
    answers = ask_job(spec, job_id, call, prompts, split, tally)
    validator = Validator(taxonomy, spec.generation, shown=_job_texts(job), seed=seed_texts)
    ids = {"run_id": run_id, "cycle": cycle, "job_id": job_id}
    rows = _rows(answers, prompts, validator, tally, ids)
    table = pa.Table.from_pylist(rows, schema=EXAMPLES)
    stats = {**tally.stats(len(rows)), "job_id": job_id, "cycle": cycle,
             "requested": int(job.get("n_examples", 0)), "teacher_model": answer_model(answers),
             "wall_s": round(time.perf_counter() - t0, 4)}
    log.info("%6.2fs → generate(run=%s cycle=%d job=%s) examples=%d requests=%d tokens=%d+%d "
             "cost=%.4f retries=%s rejects=%s", stats["wall_s"], run_id, cycle, job_id,
             len(rows), stats["requests"], stats["tokens_in"], stats["tokens_out"],
             stats["cost"], stats["retries_by_reason"], stats["rejects_by_reason"])
    return GenerationResult(table, stats)


ANSWER_FAILURES = ("malformed", "truncated")
LABEL_OUTPUT_TOKENS = 16  # a label's answer entry, {"id": "t01", "label": "..."}, booked


def beat_interval(spec: RunSpec) -> float:
    """A quarter of ``loop.generate_deadline_s``, within 1-60 s."""
    return min(60.0, max(1.0, spec.loop.generate_deadline_s / 4))


async def _beating(work: Awaitable[T], beat: Callable[[], None] | None, every: float) -> T:
    """``work``, with ``beat`` called every ``every`` seconds until it is done (a beat that
    raises is logged and skipped)."""
    if beat is None:
        return await work

    async def beats() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            try:
                await loop.run_in_executor(None, beat)
            except Exception as exc:  # noqa: BLE001 - a missed beat must not fail the job
                log.warning("heartbeat not sent: %s: %s", type(exc).__name__, exc)

    beating = asyncio.ensure_future(beats())
    try:
        return await work
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
_PAID = "distillq_job_stats"


def _paid(exc: BaseException, tally: Tally, job_id: str, cycle: int) -> BaseException:
    """``exc``, carrying what the failed attempt paid for (``failed_attempt_stats``): its
    answered requests only (one refused or unreachable cost nothing)."""
    stats = tally.stats(0)
    stats["requests"] = sum(1 for r in tally.requests if r.input_tokens or r.output_tokens)
    setattr(exc, _PAID, {**stats, "job_id": job_id, "cycle": cycle, "failed": True,
                         "error": f"{type(exc).__name__}: {exc}"[:500]})
    return exc


def failed_attempt_stats(exc: BaseException) -> dict[str, Any] | None:
    """The requests, tokens and cost of the ``generate_job`` attempt that raised ``exc``
    (None: it paid for nothing, or did not fail in ``generate_job``)."""
    stats = getattr(exc, _PAID, None)
    paid = isinstance(stats, dict) and (stats.get("tokens_in") or stats.get("tokens_out")
                                        or stats.get("cost"))
    return stats if paid else None


def _failed_on_answers(client: redis_lib.Redis, key: str, job_id: str) -> int:
    """How many attempts of the job failed on their answers (0 if Redis cannot say)."""
    try:
        return int(client.hget(key, job_id) or 0)
    except (redis_lib.RedisError, ValueError):
        return 0


def _count_failed_on_answers(client: redis_lib.Redis, key: str, job_id: str) -> None:
    try:
        client.hincrby(key, job_id, 1)
    except redis_lib.RedisError as exc:  # the retry then repeats the requests: logged
        log.warning("job %s: failed attempt not counted (%s); its retry may repeat its "
                    "requests", job_id, exc)


def answer_model(answers: list[Answer | BaseException]) -> str:
    return next((a.model for a in answers if isinstance(a, Answer)), "")


def _flush_limiter(runtime: Runtime, chat: ChatClient) -> None:
    """Send the rate limiter the token corrections of this job's answers now (they would
    otherwise wait for this process's next request, which may never come); never fails."""
    if chat.limiter is None:
        return
    try:
        runtime.run(chat.limiter.flush(), 10.0)
    except (redis_lib.RedisError, TimeoutError) as exc:
        log.warning("rate limiter corrections not sent yet: %s", exc)


def _record_endpoint(client: redis_lib.Redis, chat: ChatClient, tally: Tally) -> None:
    """The endpoint's counters for metrics; never fails the job."""
    teacher = chat.teacher
    try:
        record_endpoint(client, chat.endpoint.namespace, tally,
                        host=host_of(chat.endpoint.base_url),
                        model=chat.endpoint.model, rpm=teacher.rpm, tpm=teacher.tpm)
    except redis_lib.RedisError as exc:
        log.warning("endpoint counters not recorded: %s", exc)
