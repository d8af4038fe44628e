"""The global rate limit: GCRA reservations in Redis, shared by separate OS processes.

The limiter's bookings and waits run on a simulated clock here (``VirtualTime``): a slot's
time is then exact, whatever else the machine is doing. The test with real processes and
the real clock checks what a slow machine cannot break: never more than the limit, no 429,
every process served. How close to the limit they get is a benchmark's question
(docs/benchmarks.md, "Teacher rate limit")."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import pytest
import redis
from runkit import wait_for

from tests.teachers._procs import hammer
from tests.teachers.clocks import VirtualTime
from tests.teachers.conftest import SimFactory, make_spec, sim_stats
from workers.teachers.accounting import Tally
from workers.teachers.openai import client_for
from workers.teachers.ratelimit import GlobalRateLimiter, endpoint_namespace
from workers.teachers.runtime import get_runtime


def _limiter(client: redis.Redis, rpm: float = 1200, tpm: float = 10**9,
             ns: str = "dq:rl:t", vt: VirtualTime | None = None) -> GlobalRateLimiter:
    """A limiter on simulated time ``vt`` (default: its own, frozen at the same start)."""
    vt = vt or VirtualTime()
    return GlobalRateLimiter(client, ns, rpm=rpm, tpm=tpm, clock=vt.clock, sleep=vt.sleep)


EXACT = 1e-6  # the limiter's Lua keeps 14 significant digits


def _reserve(lim: GlobalRateLimiter, tokens: int = 1) -> float:
    return get_runtime().run(lim.reserve(tokens))


def test_requests_get_evenly_spaced_slots(redis_client: redis.Redis) -> None:
    a, b = _limiter(redis_client), _limiter(redis_client)   # two "processes", one budget
    delays = [_reserve(x) for x in (a, b) * 5]  # all asked at the same (simulated) moment
    assert delays == pytest.approx([0.05 * i for i in range(10)], abs=EXACT)  # every 50 ms
    assert redis_client.pttl("dq:rl:t:req") > 60_000 - 1000


def test_tokens_per_minute_and_usage_correction(redis_client: redis.Redis) -> None:
    lim = _limiter(redis_client, rpm=10**6, tpm=6000)  # 100 tokens a second
    gap = 60 / 10**6  # the request rate's own spacing: a request every 60 µs
    assert _reserve(lim, 200) == pytest.approx(0.0, abs=EXACT)
    assert _reserve(lim, 50) == pytest.approx(2.0, abs=EXACT)      # waits for the first 200
    lim.adjust(-200)                               # the two used 200 tokens fewer than booked
    assert _reserve(lim, 10) == pytest.approx(2.0 + gap, abs=EXACT)  # still behind slot 2
    assert _reserve(lim, 10) == pytest.approx(2.1 + gap, abs=EXACT)  # not 2.6: refund counts
    lim.adjust(+300)                                     # travels with the next reservation
    assert _reserve(lim, 10) == pytest.approx(5.2 + gap, abs=EXACT)  # underestimates charged
    other = _limiter(redis_client, rpm=10**6, tpm=6000, ns="dq:rl:t2")
    assert _reserve(other, 200) == pytest.approx(0.0, abs=EXACT)
    other.adjust(-100)
    get_runtime().run(other.flush())
    assert _reserve(other, 1) == pytest.approx(1.0, abs=EXACT)


def test_endpoints_do_not_share_budgets(redis_client: redis.Redis) -> None:
    ns1, ns2 = endpoint_namespace("http://a/", "m"), endpoint_namespace("http://b", "m")
    assert ns1 == endpoint_namespace("http://a", "m") and ns1 != ns2
    x, y = _limiter(redis_client, rpm=60, ns=ns1), _limiter(redis_client, rpm=60, ns=ns2)
    _reserve(x)
    assert _reserve(y) == pytest.approx(0.0, abs=EXACT)
    assert _reserve(x) == pytest.approx(1.0, abs=EXACT)


def test_without_the_limiter_the_sim_answers_429(sim: SimFactory) -> None:
    """The control: the same load with no global limit does hit the endpoint's limit."""
    url = sim(rpm_limit=600)
    teacher = make_spec(teacher={"global_rate_limit": False, "concurrency": 16}).teacher
    chat = client_for(teacher, get_runtime(), None, url)

    async def burst() -> None:

        msgs = [[{"role": "user", "content": f"Number of examples: 1\n{i}"}] for i in range(40)]
        await asyncio.gather(*(chat.complete(m, Tally()) for m in msgs), return_exceptions=True)

    get_runtime().run(burst())
    assert sim_stats(url)["status_429"] > 0


@pytest.mark.slow
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
    assert all(r["times"] for r in results)                        # every process was served
    assert len(times) <= rpm / 60 * duration + 2                     # never over the limit
    assert sim_stats(url).get("status_429", 0) == 0
    assert not any(r["retries"] for r in results)


def _ahead(client: redis.Redis, key: str, vt: VirtualTime) -> float:
    """How far a TAT key is ahead of the limiter's (simulated) clock (s)."""
    return float(client.get(key) or 0) - vt.now


@pytest.mark.parametrize(("rpm", "tpm", "tokens", "key"), [
    (60, 10**9, 1, "dq:rl:t:req"),          # the request rate binds: one a second
    (10**6, 6000, 100, "dq:rl:t:tok"),      # the token rate binds: 100 tokens a second
])
def test_queueing_again_after_a_cool_down_hands_the_first_slot_back(
        redis_client: redis.Redis, rpm: float, tpm: float, tokens: int, key: str) -> None:
    vt = VirtualTime()
    a, b = (_limiter(redis_client, rpm, tpm, vt=vt) for _ in range(2))
    assert _reserve(a, tokens) == pytest.approx(0.0, abs=EXACT)      # slot at 0, next at 1
    waiting = get_runtime().submit(b.acquire(tokens))               # books the slot at 1
    wait_for(lambda: vt.sleeping() == 1, 60, "b to wait for its slot")
    vt.advance_to(0.5)
    get_runtime().run(a.cool_down(0.8))                              # a 429: nothing before 1.3
    vt.advance_to(1.0)                      # b wakes at its slot, finds the cool-down, waits
    wait_for(lambda: vt.sleeping() == 1 and not waiting.done(), 60, "b to queue again")
    vt.advance_to(1.3)
    waited = waiting.result(60)
    # b found the cool-down at 1.0 and queued again after it, handing back the slot at 1: it
    # goes at 1.3, not behind its own unused booking (2.0)
    assert waited == pytest.approx(1.3, abs=EXACT)
    assert _ahead(redis_client, key, vt) == pytest.approx(1.0, abs=EXACT)  # one booking


def test_a_cancelled_wait_hands_its_slot_back(redis_client: redis.Redis) -> None:
    vt = VirtualTime()
    a, b = (_limiter(redis_client, rpm=60, vt=vt) for _ in range(2))
    _reserve(a)                                                      # slot at 0, next at 1
    waiting = get_runtime().submit(b.acquire(1))                     # books 1, next at 2
    wait_for(lambda: vt.sleeping() == 1, 60, "b to wait for its slot")
    vt.advance_to(0.3)
    waiting.cancel()
    wait_for(lambda: vt.sleeping() == 0, 60, "b's wait to be cancelled")
    get_runtime().run(b.flush())
    assert _ahead(redis_client, "dq:rl:t:req", vt) == pytest.approx(0.7, abs=EXACT)


@pytest.mark.parametrize("stale", [None, "1.5"])
def test_giving_back_tokens_on_a_missing_or_stale_key(redis_client: redis.Redis,
                                                      stale: str | None) -> None:
    """A refund larger than what is booked must not push the TAT (and its expiry) into the
    past: Redis refuses a negative PX."""
    vt = VirtualTime()
    if stale is not None:
        redis_client.set("dq:rl:t:tok", stale)                       # long before now
    lim = _limiter(redis_client, rpm=10**6, tpm=6000, vt=vt)
    lim.adjust(-500)
    get_runtime().run(lim.flush())                                   # raised ResponseError
    assert 0 < redis_client.pttl("dq:rl:t:tok") <= 60_000
    lim.release(10)                                                  # and a request slot
    get_runtime().run(lim.flush())
    assert 0 < redis_client.pttl("dq:rl:t:req") <= 60_000
    assert _ahead(redis_client, "dq:rl:t:tok", vt) == pytest.approx(0.0, abs=EXACT)
    assert _reserve(lim, 100) == pytest.approx(0.0, abs=EXACT)        # no credit, no debt
    assert _reserve(lim, 1) == pytest.approx(1.0, abs=EXACT)
