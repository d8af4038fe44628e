"""The OpenAI-compatible client over real HTTP against the simulated teacher: retries,
Retry-After, permanent errors, timeouts, caps on attempts and time, the shared cool-down."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from pathlib import Path

import pytest
import redis

from tests.teachers.clocks import SteppedClock, VirtualTime
from tests.teachers.conftest import SimFactory, make_spec, sim_stats
from workers.teachers.accounting import Tally
from workers.teachers.errors import TeacherPermanentError, TeacherTransientError
from workers.teachers.openai import ChatClient, client_for, endpoint_for, parse_retry_after
from workers.teachers.ratelimit import GlobalRateLimiter
from workers.teachers.runtime import get_runtime

MESSAGES = [{"role": "user", "content": "Target labels: []\nNumber of examples: 2"}]


def _complete(url: str, client: redis.Redis | None = None, messages: list | None = None,
              **teacher: object) -> tuple[Tally, object]:
    spec = make_spec(teacher={"global_rate_limit": client is not None, **teacher})
    chat = client_for(spec.teacher, get_runtime(), client, url)
    tally = Tally()
    result = get_runtime().run(chat.complete(messages or MESSAGES, tally))
    return tally, result


def test_5xx_is_retried_until_it_succeeds(sim: SimFactory) -> None:
    url = sim(faults=("5xx",), fault_first=2)
    tally, done = _complete(url)
    assert sum(tally.retries.values()) == 2 and all(k.startswith("http_5") for k in tally.retries)
    assert done.model == "distillq-sim" and done.input_tokens > 0 and done.output_tokens > 0
    assert sim_stats(url)["requests"] == 3 and not tally.failures


def test_attempts_are_capped(sim: SimFactory) -> None:
    url = sim(faults=("5xx",), fault_rate=1.0)
    tally = Tally()
    chat = client_for(make_spec(teacher={"max_attempts": 3}).teacher, get_runtime(), None, url)
    with pytest.raises(TeacherTransientError):
        get_runtime().run(chat.complete(MESSAGES, tally))
    assert sim_stats(url)["requests"] == 3
    assert sum(tally.retries.values()) == 2 and sum(tally.failures.values()) == 1


def test_elapsed_time_is_capped(sim: SimFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer is a 5xx; 50 attempts are allowed but 1.5 s: the client waits (backoff
    0.25-0.5 s, 0.5-1 s, 1-2 s, ...) only while the wait ends before the cap, then gives up."""
    url = sim(faults=("5xx",), fault_rate=1.0)
    chat = client_for(make_spec(teacher={"max_attempts": 50, "max_elapsed_s": 1.5}).teacher,
                      get_runtime(), None, url)
    t = SteppedClock()
    monkeypatch.setattr(chat, "clock", t.clock)
    monkeypatch.setattr(chat, "sleep", t.sleep)
    with pytest.raises(TeacherTransientError):
        get_runtime().run(chat.complete(MESSAGES, Tally()))
    assert t.now < 1.5 and t.waits, "it retried, and no wait ended past the cap"
    assert sim_stats(url)["requests"] == len(t.waits) + 1 <= 3, "stopped by time, not attempts"


def test_timeouts_are_retried(sim: SimFactory) -> None:
    url = sim(faults=("timeout",), fault_first=1, hang_s=1.5)
    tally, _ = _complete(url, timeout_s=0.4)
    assert dict(tally.retries) == {"timeout": 1}


def test_connection_errors_are_retried_then_transient() -> None:
    tally = Tally()
    chat = client_for(make_spec(teacher={"max_attempts": 2}).teacher, get_runtime(), None,
                      "http://127.0.0.1:9")
    with pytest.raises(TeacherTransientError) as err:
        get_runtime().run(chat.complete(MESSAGES, tally))
    assert err.value.reason == "connection" and tally.retries == {"connection": 1}
    assert "127.0.0.1:9" in str(err.value), "the message names where it could not connect"


def test_an_invalid_url_is_permanent_and_named() -> None:
    chat = client_for(make_spec().teacher, get_runtime(), None, "http://[::1")
    with pytest.raises(TeacherPermanentError, match="is not a valid URL") as err:
        get_runtime().run(chat.complete(MESSAGES, Tally()))
    assert err.value.reason == "bad_url"


def test_a_rate_limiter_that_cannot_be_reached_fails_the_request_not_the_job(
        sim: SimFactory) -> None:
    """A Redis error while pacing is retried per request, like a failed request: it does not
    escape as a foreign error that would make the whole job (and its paid answers) run again."""
    url = sim()
    dead = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.2)
    tally = Tally()
    chat = client_for(make_spec(teacher={"max_attempts": 2}).teacher, get_runtime(), dead, url)
    with pytest.raises(TeacherTransientError, match="rate limiter unavailable") as err:
        get_runtime().run(chat.complete(MESSAGES, tally))
    assert err.value.reason == "ratelimit" and tally.retries == {"ratelimit": 1}
    assert sim_stats(url).get("requests", 0) == 0, "nothing sent unpaced"


def test_other_4xx_is_permanent_and_not_retried(sim: SimFactory, monkeypatch) -> None:
    url = sim(api_key="sekrit-value")
    tally = Tally()
    chat = client_for(make_spec().teacher, get_runtime(), None, url)
    with pytest.raises(TeacherPermanentError) as err:
        get_runtime().run(chat.complete(MESSAGES, tally))
    assert err.value.status == 401 and sim_stats(url)["requests"] == 1
    assert dict(tally.failures) == {"http_401": 1} and not tally.retries
    monkeypatch.setenv("DQ_TEST_KEY", "sekrit-value")
    teacher = make_spec(teacher={"api_key_env": "DQ_TEST_KEY"}).teacher
    get_runtime().run(client_for(teacher, get_runtime(), None, url).complete(MESSAGES, Tally()))
    assert "sekrit" not in repr(endpoint_for(teacher, url))


def test_429_retry_after_is_honoured_and_cools_everyone_down(
        sim: SimFactory, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's hint is waited out before the retry (the client's waits recorded, not
    timed) and shared with every client of the endpoint through Redis."""
    import workers.teachers.openai as client_module

    url = sim(rpm_limit=20)  # one request every 3 s: the second, sent right after, is refused
    spec = make_spec(teacher={"rpm": 6000})
    chat: ChatClient = client_for(spec.teacher, get_runtime(), redis_client, url)
    assert chat.limiter is not None
    hints: list[float | None] = []
    waits: list[float] = []

    def parse(headers: object, now: float | None = None) -> float | None:
        hints.append(parse_retry_after(headers, now))  # type: ignore[arg-type]
        return hints[-1]

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    monkeypatch.setattr(client_module, "parse_retry_after", parse)
    monkeypatch.setattr(chat, "sleep", sleep)
    first, second = Tally(), Tally()
    get_runtime().run(chat.complete(MESSAGES, first))
    get_runtime().run(chat.complete(MESSAGES, second))
    assert dict(second.retries) == {"http_429": 1}
    assert len(hints) == 1 and hints[0] is not None and hints[0] > 0
    assert len(waits) == 1 and waits[0] >= hints[0], "the hint is waited out"
    assert redis_client.exists(f"{chat.limiter.namespace}:cool")
    assert sim_stats(url)["status_429"] == 1


def test_cool_down_delays_other_clients(redis_client: redis.Redis) -> None:
    vt = VirtualTime()
    a, b = (GlobalRateLimiter(redis_client, "dq:rl:test", rpm=6000, tpm=10**9,
                              clock=vt.clock, sleep=vt.sleep) for _ in range(2))
    get_runtime().run(a.cool_down(0.6))
    assert get_runtime().run(b.cooldown_left()) == pytest.approx(0.6), "b sees a's cool-down"
    assert get_runtime().run(b.reserve(10)) == pytest.approx(0.6), "b's slot is after it"


def test_parse_retry_after() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "1"}) == 0.25
    now = time.time()
    assert 9 <= parse_retry_after({"Retry-After": formatdate(now + 10, usegmt=True)}, now) <= 10
    assert parse_retry_after({"Retry-After": formatdate(now - 10, usegmt=True)}, now) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None and parse_retry_after({}) is None
    assert parse_retry_after({"Retry-After": "inf"}) is None
    assert parse_retry_after({"retry-after-ms": "nan", "Retry-After": "2"}) == 2.0


def test_api_key_from_file_and_missing_key(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    teacher = make_spec(teacher={"api_key_file": str(key)}).teacher
    assert endpoint_for(teacher, "http://x").request_headers()["Authorization"] == \
        "Bearer sk-from-file"
    with pytest.raises(TeacherPermanentError, match="DQ_MISSING_KEY"):
        endpoint_for(make_spec(teacher={"api_key_env": "DQ_MISSING_KEY"}).teacher, "http://x")
    with pytest.raises(TeacherPermanentError, match="no base_url"):
        endpoint_for(make_spec().teacher)
    assert endpoint_for(teacher, "http://h/v1").url == "http://h/v1/chat/completions"
    assert endpoint_for(teacher, "http://h/").url == "http://h/v1/chat/completions"


def test_refused_attempts_give_their_token_estimate_back(sim: SimFactory,
                                                         redis_client: redis.Redis) -> None:
    url = sim(faults=("5xx",), fault_rate=1.0)
    spec = make_spec(teacher={"rpm": 10**6, "tpm": 60_000, "max_attempts": 2})  # 1000 tok/s
    chat = client_for(spec.teacher, get_runtime(), redis_client, url)
    assert chat.limiter is not None
    with pytest.raises(TeacherTransientError):
        get_runtime().run(chat.complete(MESSAGES, Tally()))       # each books ~2,070 tokens
    assert sim_stats(url)["requests"] == 2
    get_runtime().run(chat.limiter.flush())
    # both 5xx answers gave their estimate back: the next request need not wait ~4 s
    other = GlobalRateLimiter(redis_client, chat.limiter.namespace, rpm=10**6, tpm=60_000)
    assert get_runtime().run(other.reserve(1)) == pytest.approx(0.0, abs=0.05)
