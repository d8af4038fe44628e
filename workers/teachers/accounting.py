"""Accounting: tokens, latency and cost per request and per job; the run's spend in Redis.

Every HTTP attempt that returned ``usage`` is paid for, including answers that were then
thrown away (malformed JSON, rejected examples), so job totals are what the endpoint bills.
A job's totals travel with its result (``GenerationResult.stats``); the controller sums them
per cycle and run from storage. Independently, each request adds its tokens and cost to the
Redis hash ``dq:{run_id}:spend`` (fields ``tokens``, ``tokens_in``, ``tokens_out``, ``cost``,
``requests``; and ``asked_examples`` / ``asked_tokens_out``, the examples those answers were
asked for and their output tokens, from which ``output_tokens_per_example`` learns the
rate limiter's estimate) as soon as it returns (``generate._Spend``, per answer, while the job's other
requests are still in flight), so concurrent jobs see one another's spend and
``check_budget`` can refuse to start a job once a ``BudgetSpec`` cap is reached. That counter
counts money actually spent: a job that is delivered twice is paid for twice. A Redis error
while adding never fails a job: the amount is sent again with the next answer and at the end
of the job, and logged if it still cannot be (the job's stats in storage keep the truth).

Per teacher endpoint, every job also adds its counters to the hash ``<namespace>:stats``
(``namespace`` = ``ratelimit.endpoint_namespace``, ``dq:rl:<hash>``, the rate limiter's own
prefix): ``requests``, ``attempts``, ``tokens``, ``retry:<reason>``, ``failure:<reason>``
(``http_429`` among the reasons), plus ``host``, ``model``, ``rpm`` and ``tpm`` of the endpoint.
``orchestrator serve --metrics-port`` exports them (``orchestrator/metrics.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from distillq.errors import BudgetExceededError
from distillq.keys import ENDPOINT_STATS_KEY, SPEND_CHECKED, SPEND_KEY, as_text
from distillq.spec import BudgetSpec, PriceSpec

# Process-wide counters ("retry:<reason>", "failure:<reason>", "reject:<reason>"), for logs
# and metrics; per-job counts live in the job's Tally.
PROCESS_COUNTS: Counter[str] = Counter()


def request_cost(price: PriceSpec, input_tokens: int, output_tokens: int,
                 cached_tokens: int = 0) -> float:
    """What a request costs; ``cached_tokens`` of its input (served from the provider's prompt
    cache) at ``price.cached_input_per_1k`` when the spec sets it."""
    cached = min(max(0, cached_tokens), input_tokens)
    cached_rate = price.input_per_1k if price.cached_input_per_1k is None \
        else price.cached_input_per_1k
    return ((input_tokens - cached) * price.input_per_1k + cached * cached_rate
            + output_tokens * price.output_per_1k) / 1000.0


@dataclass
class RequestRecord:
    """One logical teacher request (all its HTTP attempts)."""

    request_id: str
    api_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cost: float = 0.0
    attempts: int = 0
    kept: int = 0
    cached_tokens: int = 0  # of input_tokens, served from the provider's prompt cache
    simulated: bool = False  # an answer came from distillq's simulated teacher
    real: bool = False  # an answer came from any other server

    def add(self, input_tokens: int, output_tokens: int, latency_s: float, cost: float,
            cached_tokens: int = 0, simulated: bool = False) -> None:
        """One answer of the request (each attempt that got one)."""
        self.simulated = self.simulated or simulated
        self.real = self.real or not simulated
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.latency_s += latency_s
        self.cost += cost
        self.cached_tokens += cached_tokens


@dataclass
class Tally:
    """What one job did: its requests, and retries / failures / rejects by reason."""

    retries: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    requests: list[RequestRecord] = field(default_factory=list)

    def retry(self, reason: str) -> None:
        self.retries[reason] += 1
        PROCESS_COUNTS[f"retry:{reason}"] += 1

    def fail(self, reason: str) -> None:
        self.failures[reason] += 1
        PROCESS_COUNTS[f"failure:{reason}"] += 1

    def reject(self, reasons: Counter[str]) -> None:
        self.rejects.update(reasons)
        PROCESS_COUNTS.update({f"reject:{k}": v for k, v in reasons.items()})

    def stats(self, examples: int) -> dict[str, Any]:
        """The job's totals, in the keys the controller and the report sum."""
        reqs = self.requests
        return {
            "examples": examples,
            "requests": len(reqs),
            "attempts": sum(r.attempts for r in reqs),
            "tokens_in": sum(r.input_tokens for r in reqs),
            "tokens_out": sum(r.output_tokens for r in reqs),
            "tokens_cached": sum(r.cached_tokens for r in reqs),
            "requests_simulated": sum(r.simulated for r in reqs),  # answered by the sim
            "requests_real": sum(r.real for r in reqs),  # answered by another server
            "cost": sum(r.cost for r in reqs),
            "latency_s": round(sum(r.latency_s for r in reqs), 4),
            "retries_by_reason": dict(self.retries),
            "failures_by_reason": dict(self.failures),
            "rejects_by_reason": dict(self.rejects),
        }


def read_spend(client: redis.Redis, run_id: str) -> dict[str, float]:
    return _spend_of(client.hgetall(SPEND_KEY.format(run_id=run_id)))


def _spend_of(raw: Any) -> dict[str, float]:
    got = {as_text(k): float(v) for k, v in raw.items()}
    got.pop(SPEND_CHECKED, None)  # a mark, not spend
    return got


def restore_spend(client: redis.Redis, run_id: str, stored: dict[str, float]) -> dict[str, float]:
    """Raise the run's spend counter to at least ``stored`` — the spend its committed jobs
    recorded in storage (``orchestrator.runs.spend``) — mark it checked (``SPEND_CHECKED``, in
    the same transaction), and return what was added.

    Redis can lose the counter (a restart without persistence, FLUSHALL, the fresh embedded
    Redis of an ``orchestrator resume``); a budget must not then start again from zero. The
    counter is read and raised under WATCH: a worker's addition (or a loss) between the two
    makes it read again."""
    key = SPEND_KEY.format(run_id=run_id)
    wanted = {"tokens_in": stored.get("tokens_in", 0.0),
              "tokens_out": stored.get("tokens_out", 0.0), "cost": stored.get("cost", 0.0),
              "requests": stored.get("requests", 0.0)}
    wanted["tokens"] = wanted["tokens_in"] + wanted["tokens_out"]
    added: dict[str, float] = {}

    def raise_to_stored(pipe: Any) -> None:
        now = _spend_of(pipe.hgetall(key))  # watched: executed at once
        added.clear()
        added.update({f: v - now.get(f, 0.0) for f, v in wanted.items()
                      if v - now.get(f, 0.0) > 1e-9})
        pipe.multi()
        for name, diff in added.items():
            if name == "cost":
                pipe.hincrbyfloat(key, name, diff)
            else:
                pipe.hincrby(key, name, int(round(diff)))
        pipe.hset(key, SPEND_CHECKED, 1)

    client.transaction(raise_to_stored, key)
    return added


def record_spend(client: redis.Redis, run_id: str, input_tokens: int, output_tokens: int,
                 cost: float, requests: int = 1, asked: int = 0) -> None:
    """Add requests' spend to the run's counter (one atomic transaction). ``asked``: the
    examples these answers were asked for (0: not known; then the output tokens do not
    count towards ``output_tokens_per_example`` either)."""
    key = SPEND_KEY.format(run_id=run_id)
    pipe = client.pipeline(transaction=True)
    pipe.hincrby(key, "tokens", input_tokens + output_tokens)
    pipe.hincrby(key, "tokens_in", input_tokens)
    pipe.hincrby(key, "tokens_out", output_tokens)
    pipe.hincrbyfloat(key, "cost", cost)
    pipe.hincrby(key, "requests", requests)
    if asked:
        pipe.hincrby(key, "asked_examples", asked)
        pipe.hincrby(key, "asked_tokens_out", output_tokens)
    pipe.execute()


OUTPUT_TOKENS_PER_EXAMPLE = 80  # the prior: what an example is taken to cost before answers say
PRIOR_EXAMPLES = 40  # the prior's weight, in examples (a few requests' worth)


def output_tokens_per_example(spent: dict[str, float]) -> float:
    """The output tokens one asked-for example costs, for the rate limiter's estimate before a
    request: the run's answers so far (``read_spend``), shrunk towards the prior
    ``OUTPUT_TOKENS_PER_EXAMPLE`` while they are few. Long examples (a task of paragraphs,
    not one-line intents) are then booked at their real size, not a fixed guess: booked too
    low, a job's first wave overshoots the endpoint's TPM and draws 429s; too high, it waits
    for tokens it will not use."""
    asked = max(0.0, spent.get("asked_examples", 0.0))
    tokens = max(0.0, spent.get("asked_tokens_out", 0.0))
    return ((tokens + OUTPUT_TOKENS_PER_EXAMPLE * PRIOR_EXAMPLES)
            / (asked + PRIOR_EXAMPLES))


def check_budget(client: redis.Redis, run_id: str, budget: BudgetSpec) -> dict[str, float]:
    """Raise BudgetExceededError when a cap is reached; return the spend so far."""
    spent = read_spend(client, run_id)
    tokens, cost = spent.get("tokens", 0.0), spent.get("cost", 0.0)
    if budget.max_tokens is not None and tokens >= budget.max_tokens:
        raise BudgetExceededError(
            f"run {run_id}: token budget spent ({tokens:.0f} of {budget.max_tokens})")
    if budget.max_cost is not None and cost >= budget.max_cost:
        raise BudgetExceededError(
            f"run {run_id}: cost budget spent ({cost:.4f} of {budget.max_cost})")
    return spent


def record_endpoint(client: redis.Redis, namespace: str, tally: Tally, *, host: str,
                    model: str, rpm: float, tpm: float) -> None:
    """Add a job's requests, retries and failures to its endpoint's counters (one transaction).
    ``host`` is the endpoint's host:port only, never a URL with credentials."""
    reqs = tally.requests
    key = ENDPOINT_STATS_KEY.format(namespace=namespace)
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping={"host": host, "model": model, "rpm": rpm, "tpm": tpm})
    pipe.hincrby(key, "requests", len(reqs))
    pipe.hincrby(key, "attempts", sum(r.attempts for r in reqs))
    pipe.hincrby(key, "tokens", sum(r.input_tokens + r.output_tokens for r in reqs))
    for prefix, counts in (("retry", tally.retries), ("failure", tally.failures)):
        for reason, n in counts.items():
            pipe.hincrby(key, f"{prefix}:{reason}", n)
    pipe.execute()
