"""An async client for OpenAI-compatible ``POST {base_url}/v1/chat/completions`` endpoints.

OpenAI, vLLM, TGI, llama.cpp's server, Ollama and most gateways speak this protocol. One
``ChatClient`` per endpoint per process (``client_for``) lives on the process's runtime loop
and shares its ``aiohttp`` session; at most ``TeacherSpec.concurrency`` requests are in flight
per process, and the global limiter (``ratelimit``) paces all processes together.

Retries (tenacity): 429, 408, 5xx, connection errors and timeouts are retried with exponential
backoff and jitter, honouring ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms``;
any other 4xx is a ``TeacherPermanentError``. Attempts stop at ``max_attempts`` or before a wait
would end at or after ``max_elapsed_s`` (``stop_after_attempt | _StopBeforeDelay``). The first
attempt runs outside tenacity: almost every request succeeds at once, and tenacity's
per-attempt machinery cost ~40% of the client's throughput at 2,000+ requests/s
(docs/benchmarks.md, "Teacher throughput"); a request that fails once is handed to tenacity.

The API key comes from an environment variable or a file, is sent only in the
``Authorization`` header, and never appears in a repr, log or error.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.stop import stop_base

from distillq.spec import TeacherSpec
from workers.teachers.accounting import Tally
from workers.teachers.completion import Completion, read_completion
from workers.teachers.errors import TeacherPermanentError, TeacherTransientError
from workers.teachers.ratelimit import GlobalRateLimiter, endpoint_namespace
from workers.teachers.runtime import Runtime

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429}
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
DEFAULT_COOL_DOWN_S = 1.0


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests. The key and headers are kept out of ``repr``."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return self.api("chat/completions")

    def api(self, path: str) -> str:
        """The URL of ``/v1/<path>`` (``base_url`` with or without its ``/v1``)."""
        base = self.base_url.rstrip("/")
        return f"{base}/{path}" if base.endswith("/v1") else f"{base}/v1/{path}"

    @property
    def namespace(self) -> str:
        return endpoint_namespace(self.base_url, self.model)

    def blank(self, text: str) -> str:
        """``text`` with the API key and the header values blanked (a server that echoes
        them: never in a record, a log or a message)."""
        for secret in (self.api_key, *self.headers.values()):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def request_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def load_api_key(teacher: TeacherSpec, env: Mapping[str, str] | None = None) -> str | None:
    """The API key from ``api_key_env`` or ``api_key_file``; errors name the source only."""
    env = os.environ if env is None else env
    if teacher.api_key_env:
        value = env.get(teacher.api_key_env, "").strip()
        if not value:
            raise TeacherPermanentError(
                "no_api_key", f"environment variable {teacher.api_key_env} is not set or empty")
        return value
    if teacher.api_key_file:
        try:
            value = Path(teacher.api_key_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TeacherPermanentError(
                "no_api_key", f"cannot read API key file {teacher.api_key_file}: "
                f"{exc.strerror or type(exc).__name__}") from None
        if not value:
            raise TeacherPermanentError("no_api_key", f"API key file {teacher.api_key_file} is empty")
        return value
    return None


def host_of(url: str) -> str:
    """``host:port`` of a URL, never its credentials (what logs, records and reports show)."""
    return urlsplit(url).netloc.rpartition("@")[2]


def endpoint_for(teacher: TeacherSpec, base_url: str | None = None,
                 env: Mapping[str, str] | None = None) -> Endpoint:
    """The endpoint of a teacher spec; ``base_url`` overrides (the embedded sim's URL)."""
    url = base_url or teacher.base_url
    if not url:
        raise TeacherPermanentError(
            "no_endpoint", f"teacher kind {teacher.kind!r} has no base_url and none was given")
    return Endpoint(url, teacher.model, load_api_key(teacher, env), dict(teacher.headers))


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            millis = float(ms)
            if math.isfinite(millis):
                return max(0.0, millis / 1000.0)
        except ValueError:
            pass
    value = (headers.get("Retry-After") or headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        number = float(value)
        return max(0.0, number) if math.isfinite(number) else None  # "inf", "nan": no hint
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def request_seed(request_id: str, variant: str = "") -> int:
    """A request's seed, from its id (``<job>-r<k>``, the job id naming its cycle): the same
    on every HTTP retry and redelivery of the request, different for every other request — so
    two cycles sending the same prompt do not get the same answer back. ``variant`` names a
    re-ask of it (after a malformed or truncated answer, or in a job-level retry): another
    seed, so a deterministic server does not give the same answer again."""
    key = f"{request_id}/{variant}" if variant else request_id
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def payload(teacher: TeacherSpec, model: str, messages: list[dict[str, str]], max_tokens: int,
            seed: int | None = None) -> dict[str, Any]:
    """The body of a chat request as the spec asks for it (``teacher.extra_body`` last: it
    may only add fields)."""
    body: dict[str, Any] = {"model": model, "messages": messages,
                            "temperature": teacher.temperature, "max_tokens": max_tokens}
    if teacher.json_mode:
        body["response_format"] = {"type": "json_object"}
    if seed is not None and teacher.send_seed:
        body["seed"] = seed
    body.update(teacher.extra_body)
    return body


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A provider-neutral estimate: about four characters per token."""
    return math.ceil(sum(len(m.get("content", "")) for m in messages) / 4) + 4 * len(messages)


def _backoff(attempt: int) -> float:
    """Exponential backoff with full jitter on top of half the base."""
    base = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (attempt - 1))
    return base / 2 + random.uniform(0, base / 2)


def _outcome(state: RetryCallState) -> TeacherTransientError:
    exc = state.outcome.exception() if state.outcome else None
    if not isinstance(exc, TeacherTransientError):  # only these are retried
        raise RuntimeError(f"unexpected retry outcome: {exc!r}")
    return exc


def _wait(exc: TeacherTransientError, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt``: the server's hint, else backoff."""
    hint = exc.retry_after
    if hint is not None:
        return hint + random.uniform(0, 0.1 + 0.1 * hint)
    return _backoff(attempt)


class _StopBeforeDelay(stop_base):
    """Stop before a wait that would end at or after ``cap`` seconds after ``started``, on
    ``clock`` (tenacity's ``stop_before_delay`` reads its own clock, which tests cannot set)."""

    def __init__(self, clock: Callable[[], float], cap: float, started: float):
        self.clock, self.cap, self.started = clock, cap, started

    def past(self, wait: float) -> bool:
        return self.clock() - self.started + wait >= self.cap

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.past(retry_state.upcoming_sleep)


class ChatClient:
    """Sends chat requests to one endpoint with retries, pacing and a concurrency bound.

    ``clock`` and ``sleep`` are the time the retries are measured and waited in
    (``max_elapsed_s``, backoff, ``Retry-After``); tests set both to a simulated clock.
    """

    def __init__(self, endpoint: Endpoint, teacher: TeacherSpec, runtime: Runtime,
                 limiter: GlobalRateLimiter | None) -> None:
        self.endpoint = endpoint
        self.teacher = teacher
        self.limiter = limiter
        self._runtime = runtime
        self._semaphore: asyncio.Semaphore | None = None
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def _slots(self) -> asyncio.Semaphore:
        if self._semaphore is None:  # created on the loop that uses it
            self._semaphore = asyncio.Semaphore(self.teacher.concurrency)
        return self._semaphore

    def payload(self, messages: list[dict[str, str]], max_tokens: int,
                seed: int | None = None) -> dict[str, Any]:
        return payload(self.teacher, self.endpoint.model, messages, max_tokens, seed)

    async def complete(self, messages: list[dict[str, str]], tally: Tally, *,
                       max_tokens: int | None = None, expected_output_tokens: int = 0,
                       attempts: list[int] | None = None, seed: int | None = None) -> Completion:
        """Send one chat request, retrying transient failures; count them in ``tally``.

        ``attempts`` (optional) receives one entry per HTTP attempt made. ``seed``: the
        request's own (``request_seed``), sent on every attempt when ``teacher.send_seed``.
        """
        max_tokens = max_tokens or self.teacher.max_output_tokens
        body = self.payload(messages, max_tokens, seed)
        estimate_in = estimate_tokens(messages)
        estimate = estimate_in + min(max_tokens, expected_output_tokens or max_tokens)
        started = self.clock()
        try:
            try:  # the first attempt has no retry machinery: almost every request succeeds
                return await self._attempt(body, estimate_in, estimate, attempts)
            except TeacherTransientError as exc:
                out_of_time = _StopBeforeDelay(self.clock, self.teacher.max_elapsed_s, started)
                wait = _wait(exc, 1)
                if self.teacher.max_attempts <= 1 or out_of_time.past(wait):
                    raise
                self._on_retry(exc, 1, tally)
                await self.sleep(wait)
            # then tenacity: the remaining attempts within the remaining time
            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.teacher.max_attempts - 1) | out_of_time,
                sleep=self.sleep,
                wait=lambda state: _wait(_outcome(state), state.attempt_number + 1),
                retry=retry_if_exception_type(TeacherTransientError),
                before_sleep=lambda state: self._on_retry(
                    _outcome(state), state.attempt_number + 1, tally),
                reraise=True)
            return await retrying(self._attempt, body, estimate_in, estimate, attempts)
        except (TeacherTransientError, TeacherPermanentError) as exc:
            tally.fail(exc.reason)
            log.warning("teacher %s failed for good: %s", self.endpoint.model, exc)
            raise

    def _on_retry(self, exc: TeacherTransientError, attempt: int, tally: Tally) -> None:
        tally.retry(exc.reason)
        log.debug("retry %d of %s after %s", attempt, self.endpoint.model, exc.reason)

    async def _attempt(self, body: dict[str, Any], estimate_in: int, estimate: int,
                       attempts: list[int] | None) -> Completion:
        async with self._slots():
            if self.limiter is not None:
                try:
                    await self.limiter.acquire(estimate)
                except redis.RedisError as exc:  # retried like any request that failed,
                    # not by re-running the whole job (and paying its answers again)
                    raise TeacherTransientError(
                        "ratelimit", f"rate limiter unavailable: {type(exc).__name__}: {exc}"
                    ) from None
            if attempts is not None:
                attempts.append(1)
            t0 = time.monotonic()
            status, headers, raw = await self._post(body)
            latency = time.monotonic() - t0
        if status != 200:
            if self.limiter is not None:  # refused (429, 5xx, 4xx): no tokens were used
                self.limiter.adjust(-estimate)
            await self._raise_for_status(status, headers, raw)
        completion = read_completion(raw, latency, estimate_in, self.endpoint.model)
        if self.limiter is not None:
            actual = completion.input_tokens + completion.output_tokens
            self.limiter.adjust(actual - estimate)
        return completion

    async def _post(self, body: dict[str, Any]) -> tuple[int, Mapping[str, str], bytes]:
        timeout = aiohttp.ClientTimeout(total=self.teacher.timeout_s)
        session = self._runtime.session()
        try:
            async with session.post(self.endpoint.url, json=body, timeout=timeout,
                                    headers=self.endpoint.request_headers()) as resp:
                return resp.status, resp.headers, await resp.read()
        except asyncio.TimeoutError:
            raise TeacherTransientError(
                "timeout", f"no answer within {self.teacher.timeout_s}s") from None
        except aiohttp.InvalidURL as exc:
            raise TeacherPermanentError("bad_url", f"{self.endpoint.url} is not a valid URL: "
                                        f"{exc}") from None
        except aiohttp.ClientError as exc:  # host:port and the cause, never credentials
            raise TeacherTransientError("connection", f"{type(exc).__name__}: {exc}") from None

    async def _raise_for_status(self, status: int, headers: Mapping[str, str],
                                raw: bytes) -> None:
        detail = self.endpoint.blank(raw[:4000].decode("utf-8", "replace"))[:300]
        if status == 429:
            wait = parse_retry_after(headers)
            if wait is not None:  # a daily quota's "come back tomorrow", a skewed clock
                wait = min(wait, self.teacher.max_elapsed_s)
            if self.limiter is not None:
                try:
                    await self.limiter.cool_down(DEFAULT_COOL_DOWN_S if wait is None else wait)
                except redis.RedisError as exc:
                    log.warning("could not share a cool-down of %s: %s", self.endpoint.model,
                                exc)
            raise TeacherTransientError("http_429", detail, retry_after=wait)
        if status >= 500 or status in RETRYABLE_STATUS:
            raise TeacherTransientError(f"http_{status}", detail, parse_retry_after(headers))
        raise TeacherPermanentError(f"http_{status}", detail, status)


def client_for(teacher: TeacherSpec, runtime: Runtime, redis_client: redis.Redis | None,
               base_url: str | None = None) -> ChatClient:
    """The process's client for this teacher endpoint (created once, reused by every task)."""
    endpoint = endpoint_for(teacher, base_url)
    key = ("chat", endpoint.namespace, teacher.model_dump_json(), id(redis_client))

    def make() -> ChatClient:
        limiter = None
        if teacher.global_rate_limit and redis_client is not None:
            limiter = GlobalRateLimiter(redis_client, endpoint.namespace, teacher.rpm, teacher.tpm)
        return ChatClient(endpoint, teacher, runtime, limiter)

    return runtime.shared(key, make)
