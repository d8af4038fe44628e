"""The global rate limit: GCRA reservations in Redis, shared by separate OS processes."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
import redis

from tests.teachers._procs import hammer
from tests.teachers.conftest import SimFactory, make_spec, sim_stats
from workers.teachers.accounting import Tally
from workers.teachers.openai import client_for
from workers.teachers.ratelimit import GlobalRateLimiter, endpoint_namespace
from workers.teachers.runtime import get_runtime


def _limiter(client: redis.Redis, rpm: float = 1200, tpm: float = 10**9,
             ns: str = "dq:rl:t") -> GlobalRateLimiter:
    return GlobalRateLimiter(client, ns, rpm=rpm, tpm=tpm)


def _reserve(lim: GlobalRateLimiter, tokens: int = 1) -> float:
    return get_runtime().run(lim.reserve(tokens))


def test_requests_get_evenly_spaced_slots(redis_client: redis.Redis) -> None:
    a, b = _limiter(redis_client), _limiter(redis_client)   # two "processes", one budget
    delays = [_reserve(x) for x in (a, b) * 5]
    assert delays[0] == pytest.approx(0.0, abs=0.01)
    gaps = [y - x for x, y in zip(delays, delays[1:], strict=False)]
    assert all(g == pytest.approx(0.05, abs=0.01) for g in gaps)   # 1200/min = every 50 ms
    assert redis_client.pttl("dq:rl:t:req") > 60_000 - 1000


def test_tokens_per_minute_and_usage_correction(redis_client: redis.Redis) -> None:
    lim = _limiter(redis_client, rpm=10**6, tpm=6000)  # 100 tokens a second
    assert _reserve(lim, 200) == pytest.approx(0.0, abs=0.01)
    assert _reserve(lim, 50) == pytest.approx(2.0, abs=0.05)      # waits for the first 200
    lim.adjust(-200)                               # the two used 200 tokens fewer than booked
    assert _reserve(lim, 10) == pytest.approx(2.0, abs=0.05)     # still queued behind slot 2
    assert _reserve(lim, 10) == pytest.approx(2.1, abs=0.05)     # not 2.6: the refund counts
    lim.adjust(+300)                                     # travels with the next reservation
    assert _reserve(lim, 10) == pytest.approx(5.2, abs=0.05)     # underestimates are charged
    other = _limiter(redis_client, rpm=10**6, tpm=6000, ns="dq:rl:t2")
    assert _reserve(other, 200) == pytest.approx(0.0, abs=0.01)
    other.adjust(-100)
    get_runtime().run(other.flush())
    assert _reserve(other, 1) == pytest.approx(1.0, abs=0.05)


def test_endpoints_do_not_share_budgets(redis_client: redis.Redis) -> None:
    ns1, ns2 = endpoint_namespace("http://a/", "m"), endpoint_namespace("http://b", "m")
    assert ns1 == endpoint_namespace("http://a", "m") and ns1 != ns2
    x, y = _limiter(redis_client, rpm=60, ns=ns1), _limiter(redis_client, rpm=60, ns=ns2)
    _reserve(x)
    assert _reserve(y) == pytest.approx(0.0, abs=0.01) and _reserve(x) > 0.9


def test_without_the_limiter_the_sim_answers_429(sim: SimFactory) -> None:
    """The control: the same load with no global limit does hit the endpoint's limit."""
    url = sim(rpm_limit=600)
    teacher = make_spec(teacher={"global_rate_limit": False, "concurrency": 16}).teacher
    chat = client_for(teacher, get_runtime(), None, url)

    async def burst() -> None:
        import asyncio

        msgs = [[{"role": "user", "content": f"Number of examples: 1\n{i}"}] for i in range(40)]
        await asyncio.gather(*(chat.complete(m, Tally()) for m in msgs), return_exceptions=True)

    get_runtime().run(burst())
    assert sim_stats(url)["status_429"] > 0


def test_four_processes_share_the_limit_without_429s(sim: SimFactory, redis_client: redis.Redis,
                                                     embedded_redis: object) -> None:
    rpm, duration, procs = 600, 6.0, 4
    url = sim(rpm_limit=rpm)
    ctx = mp.get_context("spawn")
    ready, out, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    socket = embedded_redis.socket  # type: ignore[attr-defined]
    workers = [ctx.Process(target=hammer, args=(url, socket, rpm, 4, duration, ready, go,
                                                start, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            ready.get(timeout=60)
        start.value = time.time()
        go.set()
        results = [out.get(timeout=60) for _ in workers]
    finally:
        for w in workers:
            w.join(20)
    times = [t for r in results for t in r["times"] if t <= start.value + duration]
    assert all(len(r["times"]) > 5 for r in results)              # every process got its share
    assert 0.9 * rpm / 60 * duration <= len(times) <= rpm / 60 * duration + 2
    assert sim_stats(url).get("status_429", 0) == 0
    assert not any(r["retries"] for r in results)
