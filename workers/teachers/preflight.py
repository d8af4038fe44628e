"""Pre-flight: one minimal request to the teacher before a run writes or trains anything.

A wrong ``base_url``, ``model`` or key, or a server that is not listening, would otherwise
show only after the seed student has trained, as generation jobs failing one by one. The
orchestrator calls ``preflight`` first (``run``, ``submit``, ``resume``): one chat request
asking for a two-token answer, with the run's own headers, key, seed field, ``json_mode`` and
``extra_body``, so a server that refuses any of them refuses here. It is answered or refused
within seconds; a refusal raises ``TeacherUnavailableError`` carrying the server's own
message (the API key and header values, should the server echo them, are blanked), and the
CLI exits with ``EXIT_TEACHER`` (5). A 429 is not a refusal — the endpoint is there and the
key works — unless it says the account's quota or credit is spent (OpenAI's
``insufficient_quota``): waiting would not mend that.

After an answer it asks ``GET /v1/models``: a server that lists its models without the
spec's ``model`` answered anyway — llama-cpp-python answers any name with the one model it
serves, and names that model as asked in its answers and so in distillq's records — so the
line printed says so, naming the models listed. A server without the endpoint is not
questioned. An answer from distillq's simulated teacher (its ``system_fingerprint``) is named
as the simulation in that line, as the run's report will name it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, replace

import aiohttp

from distillq.errors import TeacherUnavailableError
from distillq.spec import TeacherSpec
from workers.teachers.completion import read_completion
from workers.teachers.errors import TeacherPermanentError, TeacherTransientError
from workers.teachers.openai import RETRYABLE_STATUS, Endpoint, endpoint_for, host_of, payload

PROMPT = [{"role": "user", "content": 'Reply with the JSON {"ok": true} and nothing else.'}]
MAX_TOKENS = 16
TIMEOUT_CAP_S = 30.0  # the most one pre-flight attempt waits, whatever teacher.timeout_s
ATTEMPTS = 2  # a 5xx, a timeout or a 408/409/425 is tried once more, a second later
RETRIED = RETRYABLE_STATUS - {429}  # as the client retries them (429: see QUOTA)
QUOTA = re.compile(r"quota|billing|credit", re.IGNORECASE)  # a 429 that waiting will not mend


@dataclass(frozen=True)
class Preflight:
    """What the teacher answered: the model it names, how long it took, whether it was busy."""

    model: str
    host: str
    latency_s: float
    rate_limited: bool = False
    asked: str = ""  # the spec's model
    listed: tuple[str, ...] = ()  # the server's models, where they lack ``asked``
    simulated: bool = False  # the answer came from distillq's simulated teacher

    def line(self) -> str:
        busy = " (rate limited now: the run will wait for it)" if self.rate_limited else ""
        line = f"teacher {self.model} at {self.host} answered in {self.latency_s:.2f}s{busy}"
        if self.simulated:
            line += "; it is distillq's SIMULATED teacher, not an LLM, and the report will say so"
        if self.listed:
            shown = ", ".join(repr(m) for m in self.listed[:5])
            more = f" and {len(self.listed) - 5} more" if len(self.listed) > 5 else ""
            line += (f"; warning: the server lists the models {shown}{more}, not "
                     f"{self.asked!r}: it answers under any name, so check teacher.model")
        return line


def preflight(teacher: TeacherSpec, base_url: str | None = None) -> Preflight:
    """Send the pre-flight request (see the module docstring); TeacherUnavailableError if the
    teacher cannot be reached or refuses it."""
    try:
        endpoint = endpoint_for(teacher, base_url)
    except TeacherPermanentError as exc:  # no key where the spec says one is
        raise TeacherUnavailableError(f"teacher {teacher.model}: {exc}") from None
    return asyncio.run(_preflight(teacher, endpoint))


async def _preflight(teacher: TeacherSpec, endpoint: Endpoint) -> Preflight:
    body = payload(teacher, endpoint.model, PROMPT, MAX_TOKENS, seed=0)
    timeout = aiohttp.ClientTimeout(total=min(teacher.timeout_s, TIMEOUT_CAP_S))
    where = f"teacher {endpoint.model!r} at {host_of(endpoint.base_url)}"
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, ATTEMPTS + 1):
            t0 = time.monotonic()
            try:
                async with session.post(endpoint.url, json=body,
                                        headers=endpoint.request_headers()) as resp:
                    status, raw = resp.status, await resp.read()
            except (asyncio.TimeoutError, TimeoutError):
                problem = f"no answer within {timeout.total:.0f}s"
            except aiohttp.InvalidURL:
                raise TeacherUnavailableError(f"{where}: not a valid URL") from None
            except aiohttp.ClientError as exc:
                problem = f"cannot connect: {type(exc).__name__}: {exc}"
            else:
                latency = time.monotonic() - t0
                if status == 200:
                    return await _listed(session, endpoint,
                                         _answered(raw, endpoint, latency, where))
                message = _server_message(raw, endpoint)
                if status == 429 and not QUOTA.search(message):
                    return Preflight(endpoint.model, host_of(endpoint.base_url), latency, True)
                problem = f"HTTP {status}: {message}"
                if status < 500 and status not in RETRIED:  # 429 here: out of quota, not busy
                    raise TeacherUnavailableError(f"{where} refused the request: {problem}")
            if attempt < ATTEMPTS:
                await asyncio.sleep(1.0)
    raise TeacherUnavailableError(f"{where}: {problem}")


async def _listed(session: aiohttp.ClientSession, endpoint: Endpoint,
                  answered: Preflight) -> Preflight:
    """``answered``, with the server's models where they lack the spec's."""
    listed = await _models(session, endpoint)
    if listed and endpoint.model not in listed:
        return replace(answered, asked=endpoint.model, listed=listed)
    return answered


async def _models(session: aiohttp.ClientSession, endpoint: Endpoint) -> tuple[str, ...]:
    """The model ids ``GET /v1/models`` lists; () where it lists none or is not there."""
    try:
        async with session.get(endpoint.api("models"),
                               headers=endpoint.request_headers()) as resp:
            data = await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, ValueError):
        return ()
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return ()
    return tuple(str(r["id"]) for r in rows if isinstance(r, dict) and "id" in r)


def _answered(raw: bytes, endpoint: Endpoint, latency: float, where: str) -> Preflight:
    try:
        answer = read_completion(raw, latency, 0, endpoint.model)
    except TeacherTransientError:
        head = endpoint.blank(raw.decode("utf-8", "replace"))[:200]
        raise TeacherUnavailableError(f"{where} answered, but not with a chat completion: "
                                      f"{head!r}") from None
    return Preflight(answer.model, host_of(endpoint.base_url), latency,
                     simulated=answer.simulated)


def _server_message(raw: bytes, endpoint: Endpoint) -> str:
    """The server's own error message (OpenAI's ``{"error": {"message": ...}}`` and the
    usual variants), else the start of its answer; secrets blanked wherever they appear."""
    text = endpoint.blank(raw[:20000].decode("utf-8", "replace"))
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error:
            text = error if isinstance(error, str) else json.dumps(error)
    return " ".join(text.split())[:500] or "(no message)"
