"""Asking the teacher for one request's examples, and asking again when the answer cannot be
used — never as the same request. A malformed answer (no JSON examples object) is asked
again, twice at most (``MALFORMED_RETRIES``), with another seed and the conversation extended
by the bad answer and a repair message naming what was wrong; one cut at ``max_tokens``
(``finish_reason: length``) as two requests for half the examples each, one failing
cancelling the other. Every re-ask's last user message names it, so its text differs from
every other request's even where no seed is sent or read. Each answer is paid for, and added
to the run's spend counter as it comes back (``Spend``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis as redis_lib

from distillq.jobs import request_id
from distillq.spec import PriceSpec
from workers.teachers.accounting import RequestRecord, Tally, record_spend, request_cost
from workers.teachers.completion import Completion
from workers.teachers.errors import MalformedOutputError, TeacherTransientError
from workers.teachers.openai import ChatClient, request_seed
from workers.teachers.parsing import extract_items

log = logging.getLogger(__name__)

MALFORMED_RETRIES = 2
T = TypeVar("T")


@dataclass
class Answer:
    record: RequestRecord
    items: list[Any]
    model: str


class Spend:
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


REPAIR = {  # by the answer's key
    "examples": ("Your answer could not be used: {problem}. Answer again with only the JSON "
                 'object {{"examples": [...]}} holding {n} examples, each {{"text": ..., '
                 '"label": ...}}, and nothing else.'),
    "labels": ("Your answer could not be used: {problem}. Answer again with only the JSON "
               'object {{"labels": [...]}} holding {n} entries, each {{"id": ..., '
               '"label": ...}}, and nothing else.'),
}


class Request(Protocol):
    """What a request needs to be asked: its messages and how many items it asks for."""

    @property
    def messages(self) -> list[dict[str, str]]: ...

    @property
    def n(self) -> int: ...

ANSWER_SHOWN_CHARS = 1500  # of a bad answer, sent back with the repair request


@dataclass
class Asking:
    """What every request of one job shares."""

    client: ChatClient
    tally: Tally
    price: PriceSpec
    spend: Spend
    per_example: float  # the output tokens an item is expected to cost (the limiter's)
    split: Callable[[Any], tuple[Any, Any]]  # a request as two asking for half its items each
    attempt: int = 0  # the job's earlier attempts that failed on their answers
    answer_key: str = "examples"  # the answer's list: {"examples": [...]} or {"labels": [...]}


async def ask_one(ask: Asking, prompt: Request, record: RequestRecord, part: str = "") -> Answer:
    """One request. A malformed answer is asked again (it is still paid for) with another seed
    and a repair message naming what was wrong; one cut at ``max_tokens`` is asked again as
    two requests for half the items each (``part``: which half, for their seeds). No re-ask
    repeats an earlier request."""
    messages = prompt.messages
    for round_ in range(MALFORMED_RETRIES + 1):
        variant = "".join(x for x in (f"a{ask.attempt}" if ask.attempt else "", part,
                                      f"m{round_}" if round_ else ""))
        done = await _complete(ask, _marked(messages, record.request_id, variant), prompt.n,
                               record, request_seed(record.request_id, variant))
        if done.truncated and prompt.n > 1:
            ask.tally.retry("truncated")
            answers = await _all_or_none([ask_one(ask, half, record, f"{part}s{i}")
                                          for i, half in enumerate(ask.split(prompt))])
            return Answer(record, [x for a in answers for x in a.items], answers[0].model)
        if done.truncated:
            limit = ask.client.teacher.max_output_tokens
            error: TeacherTransientError = TeacherTransientError(
                "truncated", f"the answer was cut at {limit} tokens (teacher.max_output_tokens)")
        else:
            try:
                return Answer(record, extract_items(done.text, ask.answer_key), done.model)
            except MalformedOutputError as exc:
                error = exc
        if round_ == MALFORMED_RETRIES:
            ask.tally.fail(error.reason)
            raise error
        ask.tally.retry(error.reason)
        problem = str(error).removeprefix(f"{error.reason}: ")
        messages = [*prompt.messages,
                    {"role": "assistant", "content": done.text[:ANSWER_SHOWN_CHARS]},
                    {"role": "user",
                     "content": REPAIR[ask.answer_key].format(problem=problem, n=prompt.n)}]
    raise AssertionError("unreachable")


RE_ASK_MARK = "\n\n(request {request}/{variant})"  # a re-ask's last line (``_marked``)
RE_ASK_MARK_RE = re.compile(r"\n\n\(request [^\n()]+\)$")  # it, read back (the sim)


def _marked(messages: list[dict[str, str]], request: str,
            variant: str) -> list[dict[str, str]]:
    """A re-ask's messages, told apart from every other request's in their text too (a
    server may ignore the seed, or the spec send none): the prompt's last user message gains
    a line naming the request and its variant. The first ask of a request is left as built."""
    if not variant:
        return messages
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    marked = dict(messages[last])
    marked["content"] = marked["content"] + RE_ASK_MARK.format(request=request, variant=variant)
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


async def _complete(ask: Asking, messages: list[dict[str, str]], n: int, record: RequestRecord,
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
    record.add(done.input_tokens, done.output_tokens, done.latency_s, cost, done.cached_tokens,
               done.simulated)
    record.api_id = done.api_id
    if paid:  # on the run's counter now, not when the whole job is done; only examples
        # teach the limiter what an example costs (``output_tokens_per_example``)
        asked = n if ask.answer_key == "examples" else 0
        await ask.spend.add(done.input_tokens, done.output_tokens, cost, int(first), asked)
    return done


async def ask_all(ask: Asking, prompts: Sequence[Request],
                   job_id: str) -> list[Answer | BaseException]:
    records = [RequestRecord(request_id(job_id, i)) for i in range(len(prompts))]
    ask.tally.requests.extend(records)
    coros = [ask_one(ask, p, r) for p, r in zip(prompts, records, strict=True)]
    return list(await asyncio.gather(*coros, return_exceptions=True))
