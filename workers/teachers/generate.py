"""``generate_job``: one planned generation job → validated teacher examples + accounting.

The job (``docs/architecture.md``, "Generation jobs") becomes one or more requests of at most
``examples_per_request`` examples, sent concurrently on the process's teacher runtime. Each
answer is parsed, then validated in request order so ids and content do not depend on timing:
ids are ``<job_id>-<i:04d>``. An answer that cannot be used is asked again, and never as the
same request: a malformed one (twice at most) with another seed and a message naming what
was wrong; one cut at ``max_tokens`` (``finish_reason: length``) as two requests for half the
examples each. A job whose earlier attempt failed on its answers varies every seed too
(``REASKS_KEY``). Each reason is counted (``retries_by_reason``: ``malformed``,
``truncated``, ...).

Tokens, latency and cost of each request are shared out over the examples it produced; the
job's totals come back in ``stats``. Each answer's tokens and cost are added to the run's
spend counter in Redis as soon as it comes back (``_Spend``), so concurrent jobs and
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
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import redis as redis_lib

from distillq.errors import DistillqError, PermanentError
from distillq.jobs import request_id
from distillq.keys import REASKS_KEY
from distillq.spec import PriceSpec, RunSpec
from storage.schemas import EXAMPLES
from workers.teachers.accounting import (
    RequestRecord,
    Tally,
    check_budget,
    output_tokens_per_example,
    record_endpoint,
    record_spend,
    request_cost,
)
from workers.teachers.errors import MalformedOutputError, TeacherTransientError
from workers.teachers.openai import ChatClient, Completion, client_for, request_seed
from workers.teachers.parsing import Validator, extract_items, validate_items
from workers.teachers.prompts import Prompt, build_prompt, split_counts
from workers.teachers.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

MALFORMED_RETRIES = 2
T = TypeVar("T")


@dataclass(frozen=True)
class GenerationResult:
    table: pa.Table          # storage.schemas.EXAMPLES
    stats: dict[str, Any]    # requests, tokens_in/out, cost, latency_s, *_by_reason, ...


@dataclass
class _Answer:
    record: RequestRecord
    items: list[Any]
    model: str


def job_prompts(spec: RunSpec, job: dict[str, Any], taxonomy: list[str]) -> list[Prompt]:
    """The requests of a job: its examples cut into batches of ``examples_per_request``."""
    counts = split_counts(int(job.get("n_examples", 0)), spec.generation.examples_per_request)
    counts = [c for c in counts if c > 0]
    return [build_prompt(job, taxonomy, spec.generation, n=n, part=i, parts=len(counts),
                         descriptions=spec.dataset.label_descriptions)
            for i, n in enumerate(counts)]


class _Spend:
    """The run's spend counter (``distillq.keys.SPEND_KEY``), added to as each answer returns.

    ``add`` runs on the runtime loop and sends from a thread (the loop never blocks on Redis);
    what a Redis error kept from being sent stays pending, for the next ``add`` or ``flush``.
    """

    def __init__(self, client: redis_lib.Redis, run_id: str) -> None:
        self._client, self._run_id = client, run_id
        self._lock = threading.Lock()
        self._pending: tuple[int, int, float, int, int] = (0, 0, 0.0, 0, 0)
        self.error: redis_lib.RedisError | None = None

    def _put(self, tin: int, tout: int, cost: float, requests: int, asked: int) -> None:
        with self._lock:
            a, b, c, d, e = self._pending
            self._pending = (a + tin, b + tout, c + cost, d + requests, e + asked)

    def _send(self) -> bool:
        with self._lock:
            pending, self._pending = self._pending, (0, 0, 0.0, 0, 0)
        if not any(pending):
            return True
        try:
            record_spend(self._client, self._run_id, *pending)
        except redis_lib.RedisError as exc:
            self._put(*pending)
            self.error = exc
            return False
        return True

    async def add(self, tin: int, tout: int, cost: float, requests: int, asked: int) -> None:
        self._put(tin, tout, cost, requests, asked)
        await asyncio.get_running_loop().run_in_executor(None, self._send)

    def flush(self) -> None:
        """Send what is still pending (end of the job); a Redis error is logged, not raised."""
        if not self._send():
            tin, tout, cost, requests, _ = self._pending
            log.warning("run %s: spend of %d requests (%d tokens, cost %.4f) not added to the "
                        "run's counter in Redis: %s", self._run_id, requests, tin + tout, cost,
                        self.error)


REPAIR = ("Your answer could not be used: {problem}. Answer again with only the JSON object "
          '{{"examples": [...]}} holding {n} examples, each {{"text": ..., "label": ...}}, '
          "and nothing else.")
ANSWER_SHOWN_CHARS = 1500  # of a bad answer, sent back with the repair request


@dataclass
class _Ask:
    """What every request of one job shares."""

    client: ChatClient
    tally: Tally
    price: PriceSpec
    spend: _Spend
    per_example: float  # the output tokens an example is expected to cost (the limiter's)
    remake: Callable[[Prompt, int], Prompt]  # the same request for fewer examples
    attempt: int = 0  # the job's earlier attempts that failed on their answers


async def _ask(ask: _Ask, prompt: Prompt, record: RequestRecord, part: str = "") -> _Answer:
    """One request. A malformed answer is asked again (it is still paid for) with another seed
    and a repair message naming what was wrong; one cut at ``max_tokens`` is asked again as
    two requests for half the examples each (``part``: which half, for their seeds). No
    re-ask repeats an earlier request."""
    messages = prompt.messages
    for round_ in range(MALFORMED_RETRIES + 1):
        variant = "".join(x for x in (f"a{ask.attempt}" if ask.attempt else "", part,
                                      f"m{round_}" if round_ else ""))
        done = await _complete(ask, _marked(messages, record.request_id, variant), prompt.n,
                               record, request_seed(record.request_id, variant))
        if done.truncated and prompt.n > 1:
            ask.tally.retry("truncated")
            halves = (prompt.n // 2, prompt.n - prompt.n // 2)
            answers = await _all_or_none([_ask(ask, ask.remake(prompt, k), record,
                                               f"{part}s{i}") for i, k in enumerate(halves)])
            return _Answer(record, [x for a in answers for x in a.items], answers[0].model)
        if done.truncated:
            limit = ask.client.teacher.max_output_tokens
            error: TeacherTransientError = TeacherTransientError(
                "truncated", f"the answer was cut at {limit} tokens (teacher.max_output_tokens)")
        else:
            try:
                return _Answer(record, extract_items(done.text), done.model)
            except MalformedOutputError as exc:
                error = exc
        if round_ == MALFORMED_RETRIES:
            ask.tally.fail(error.reason)
            raise error
        ask.tally.retry(error.reason)
        problem = str(error).removeprefix(f"{error.reason}: ")
        messages = [*prompt.messages,
                    {"role": "assistant", "content": done.text[:ANSWER_SHOWN_CHARS]},
                    {"role": "user", "content": REPAIR.format(problem=problem, n=prompt.n)}]
    raise AssertionError("unreachable")


def _marked(messages: list[dict[str, str]], request: str,
            variant: str) -> list[dict[str, str]]:
    """A re-ask's messages, told apart from every other request's in their text too (a
    server may ignore the seed, or the spec send none): the prompt's last user message gains
    a line naming the request and its variant. The first ask of a request is left as built."""
    if not variant:
        return messages
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    marked = dict(messages[last])
    marked["content"] = f"{marked['content']}\n\n(request {request}/{variant})"
    return [*messages[:last], marked, *messages[last + 1:]]


async def _all_or_none(coros: list[Awaitable[T]]) -> list[T]:
    """All results, or the first error with the others cancelled (a split request whose
    one half failed must not go on paying for the other)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _complete(ask: _Ask, messages: list[dict[str, str]], n: int, record: RequestRecord,
                    seed: int) -> Completion:
    """Send one request of ``record`` and account for it (paid for, whatever it holds)."""
    attempts: list[int] = []
    try:
        done = await ask.client.complete(
            messages, ask.tally, attempts=attempts,
            expected_output_tokens=round(n * ask.per_example) + 16, seed=seed)
    finally:
        record.attempts += len(attempts)
    cost = request_cost(ask.price, done.input_tokens, done.output_tokens, done.cached_tokens)
    paid = bool(done.input_tokens or done.output_tokens)
    first = paid and not (record.input_tokens or record.output_tokens)
    record.add(done.input_tokens, done.output_tokens, done.latency_s, cost, done.cached_tokens)
    record.api_id = done.api_id
    if paid:  # on the run's counter now, not when the whole job is done
        await ask.spend.add(done.input_tokens, done.output_tokens, cost, int(first), n)
    return done


async def _ask_all(ask: _Ask, prompts: Sequence[Prompt],
                   job_id: str) -> list[_Answer | BaseException]:
    records = [RequestRecord(request_id(job_id, i)) for i in range(len(prompts))]
    ask.tally.requests.extend(records)
    coros = [_ask(ask, p, r) for p, r in zip(prompts, records, strict=True)]
    return list(await asyncio.gather(*coros, return_exceptions=True))


def _check_failures(answers: list[_Answer | BaseException], tolerated: float) -> None:
    """Raise when the job must fail: any permanent error, or too many failed requests."""
    failed = [a for a in answers if isinstance(a, BaseException)]
    for exc in failed:
        if isinstance(exc, PermanentError) or not isinstance(exc, DistillqError):
            raise exc
    if failed and len(failed) > tolerated * len(answers):
        raise failed[0]


def _rows(answers: list[_Answer | BaseException], prompts: Sequence[Prompt],
          validator: Validator, tally: Tally, ids: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for answer, prompt in zip(answers, prompts, strict=True):
        if isinstance(answer, BaseException):
            continue
        parsed = validate_items(answer.items, validator, prompt.n)
        tally.reject(parsed.rejects)
        rec = answer.record
        rec.kept = k = len(parsed.examples)
        tin, tout = _shares(rec.input_tokens, k), _shares(rec.output_tokens, k)
        for j, (text, label) in enumerate(parsed.examples):
            rows.append({
                **ids, "id": f"{ids['job_id']}-{len(rows):04d}", "source": "teacher",
                "label": label, "text": text, "teacher_model": answer.model,
                "prompt_id": rec.request_id, "input_tokens": tin[j], "output_tokens": tout[j],
                "latency_s": rec.latency_s / k, "cost": rec.cost / k,
            })
    return rows


def _shares(total: int, k: int) -> list[int]:
    """``total`` split into ``k`` integers that add up to it exactly."""
    base, extra = divmod(total, max(k, 1))
    return [base + (1 if i < extra else 0) for i in range(k)]


def _job_texts(job: dict[str, Any]) -> list[str]:
    keys = ("fewshot", "correct", "misclassified", "hard_negatives")
    return [str(x.get("text", "")) for k in keys for x in job.get(k, []) or []]


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
    per_example = output_tokens_per_example(check_budget(redis, run_id, spec.budget))
    runtime = pool or get_runtime()
    client = client_for(spec.teacher, runtime, redis, base_url)
    prompts = job_prompts(spec, job, taxonomy)
    tally = Tally()
    spend = _Spend(redis, run_id)

    def remake(prompt: Prompt, n: int) -> Prompt:
        return build_prompt(job, taxonomy, spec.generation, n=n, part=prompt.part,
                            parts=prompt.parts, descriptions=spec.dataset.label_descriptions)

    reasks = REASKS_KEY.format(run_id=run_id)
    ask = _Ask(client, tally, spec.teacher.price, spend, per_example, remake,
               _failed_on_answers(redis, reasks, job_id))
    try:
        # the deadline is applied on the loop: the requests are cancelled, and done being
        # cancelled, before the tally and the spend are read below
        answers = runtime.run(asyncio.wait_for(
            _beating(_ask_all(ask, prompts, job_id), beat, beat_interval(spec)), deadline_s))
    except (TimeoutError, asyncio.TimeoutError):  # one class since Python 3.11: deadline
        tally.fail("job_deadline")
        raise _paid(TeacherTransientError(
            "job_deadline", f"job {job_id} not done within {deadline_s}s"), tally, job_id,
            cycle) from None
    finally:
        spend.flush()  # never raises: the answers paid for are not thrown away
        _record_endpoint(redis, client, tally)
        _flush_limiter(runtime, client)
    try:
        _check_failures(answers, spec.generation.tolerated_failure_fraction)
    except Exception as exc:
        if getattr(exc, "reason", "") in ANSWER_FAILURES:
            _count_failed_on_answers(redis, reasks, job_id)
        _paid(exc, tally, job_id, cycle)
        raise
    validator = Validator(taxonomy, spec.generation, shown=_job_texts(job), seed=seed_texts)
    ids = {"run_id": run_id, "cycle": cycle, "job_id": job_id}
    rows = _rows(answers, prompts, validator, tally, ids)
    table = pa.Table.from_pylist(rows, schema=EXAMPLES)
    stats = {**tally.stats(len(rows)), "job_id": job_id, "cycle": cycle,
             "requested": int(job.get("n_examples", 0)), "teacher_model": _model(answers),
             "wall_s": round(time.perf_counter() - t0, 4)}
    log.info("%6.2fs → generate(run=%s cycle=%d job=%s) examples=%d requests=%d tokens=%d+%d "
             "cost=%.4f retries=%s rejects=%s", stats["wall_s"], run_id, cycle, job_id,
             len(rows), stats["requests"], stats["tokens_in"], stats["tokens_out"],
             stats["cost"], stats["retries_by_reason"], stats["rejects_by_reason"])
    return GenerationResult(table, stats)


ANSWER_FAILURES = ("malformed", "truncated")


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


def _model(answers: list[_Answer | BaseException]) -> str:
    return next((a.model for a in answers if isinstance(a, _Answer)), "")


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
                        host=urlsplit(chat.endpoint.base_url).netloc.rpartition("@")[2],
                        model=chat.endpoint.model, rpm=teacher.rpm, tpm=teacher.tpm)
    except redis_lib.RedisError as exc:
        log.warning("endpoint counters not recorded: %s", exc)
