"""The global rate limit: requests/min and tokens/min per teacher endpoint, shared in Redis.

Celery's ``rate_limit`` is per worker instance; this one is shared by every process on every
machine that talks to the same Redis. It is a GCRA ("virtual scheduling") limiter used in
*reservation* mode: one atomic Lua call gives the caller its start time, at most
``60 / rpm`` seconds after the previous caller's and late enough that the tokens already
reserved fit in the tokens/min budget, and moves the two "theoretical arrival times" (TAT)
forward. The caller sleeps until its slot and sends. Requests therefore leave evenly spaced
— no burst at the top of each minute, no herd of pollers — and N processes together get the
full limit. Time is the Redis server's clock, so the machines' clocks do not matter (tests
give the limiter a simulated clock instead).

Tokens are estimated before a call and corrected with the response's ``usage``: the
correction is carried by the process's next reservation (``adjust`` books it locally), so a
request costs one Redis round trip, not two. An attempt the endpoint refused (429, 5xx: no
completion, no tokens) gives its whole estimate back the same way. A slot that is booked but
never used (a waiter that finds a cool-down and queues again, or is cancelled) is handed back
(``release``: its request and its tokens) with the next reservation too, so queueing again
after a cool-down does not book twice.
A 429 sets a shared "cool-down until" key (``cool_down``): every later reservation, in any
process, starts after it.

Keys (``namespace`` = ``dq:rl:<hash of base_url + model>``): ``<ns>:req``, ``<ns>:tok``,
``<ns>:cool``; they expire a minute after the last reserved slot.

The limiter takes a ``redis.Redis`` client. For plain TCP, TLS and unix-socket clients it
opens an asyncio twin of it (same address and credentials) on the runtime loop; for anything
else (Sentinel, custom connection classes) it runs the sync client on a small thread pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.connection as aconn

from distillq.keys import RATELIMIT_KEYS, RATELIMIT_PREFIX

# KEYS: req TAT, tok TAT, cool-down-until.  ARGV[1]: the time now ('' : the Redis server's
# clock, as in production), ARGV[2]: mode, then mode-specific numbers.
LUA = """
redis.replicate_commands()
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local mode = ARGV[2]
local function num(key) return tonumber(redis.call('GET', key) or '0') or 0 end
local function put(key, v) redis.call('SET', key, tostring(v), 'PX', math.ceil((v - now) * 1000) + 60000) end
local cool = num(KEYS[3])
if mode == 'cool' then
  local u = now + tonumber(ARGV[3])
  if u > cool then put(KEYS[3], u); cool = u end
  return tostring(cool - now)
elseif mode == 'left' then
  return tostring(math.max(0, cool - now))
end
-- a TAT moved by delta seconds; never below now (an old or missing key reads 0, and a
-- negative expiry would make SET fail)
local function moved(key, delta)
  local tat = num(key)
  if delta > 0 then tat = math.max(tat, now) end
  return math.max(tat + delta, now)
end
if mode == 'adjust' then
  -- ARGV[3..6]: tokens, 60/tpm, requests, 60/rpm (the last two optional: requests given back)
  local tdelta = tonumber(ARGV[3]) * tonumber(ARGV[4])
  local rdelta = tonumber(ARGV[5] or '0') * tonumber(ARGV[6] or '0')
  if tdelta ~= 0 then put(KEYS[2], moved(KEYS[2], tdelta)) end
  if rdelta ~= 0 then put(KEYS[1], moved(KEYS[1], rdelta)) end
  return '0'
end
local ri, ti, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ttat = moved(KEYS[2], tonumber(ARGV[8] or '0') * ti)
local rtat = moved(KEYS[1], tonumber(ARGV[9] or '0') * ri)
local start = math.max(now, cool, rtat - tonumber(ARGV[6]), ttat - tonumber(ARGV[7]))
put(KEYS[1], math.max(rtat, start) + ri)
put(KEYS[2], math.max(ttat, start) + cost * ti)
return tostring(start - now)
"""

RECHECK_AFTER_S = 0.05  # after a wait this long, look at the cool-down again before sending

_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _executor() -> ThreadPoolExecutor:
    """One small thread pool per process for the blocking Redis calls."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(4, thread_name_prefix="distillq-rl"))
        return _pool[1]


_ASYNC_CLASSES = {
    redis.connection.Connection: aconn.Connection,
    redis.connection.SSLConnection: aconn.SSLConnection,
    redis.connection.UnixDomainSocketConnection: aconn.UnixDomainSocketConnection,
}
_ASYNC_KWARGS = {
    "host", "port", "path", "db", "username", "password", "socket_timeout",
    "socket_connect_timeout", "socket_keepalive", "client_name", "ssl_keyfile",
    "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname",
}


def async_twin(client: redis.Redis) -> redis.asyncio.Redis | None:
    """An asyncio client to the same server as ``client``, or None if it cannot be made."""
    pool = client.connection_pool
    cls = _ASYNC_CLASSES.get(getattr(pool, "connection_class", None))  # type: ignore[arg-type]
    if cls is None or getattr(pool, "connection_kwargs", {}).get("credential_provider"):
        return None
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k in _ASYNC_KWARGS}
    apool = redis.asyncio.ConnectionPool(connection_class=cls, **kwargs)
    return redis.asyncio.Redis(connection_pool=apool)


def endpoint_namespace(base_url: str, model: str) -> str:
    """Redis key prefix of one endpoint: the same for every process that uses it."""
    digest = hashlib.sha256(f"{base_url.rstrip('/')}|{model}".encode()).hexdigest()[:16]
    return f"{RATELIMIT_PREFIX}{digest}"


class GlobalRateLimiter:
    """Paces one endpoint's requests and tokens across all processes sharing ``client``.

    ``burst_s``: how many seconds of traffic may leave at once after an idle spell (0: none,
    every request gets its own evenly spaced slot). The Redis calls go through an asyncio twin
    of ``client`` where one can be made, else through a small thread pool, so the event loop
    never blocks on the network.

    ``clock`` and ``sleep``: the time slots are booked and waited in. By default the Redis
    server's clock books (one clock for every machine) and ``asyncio.sleep`` waits; tests give
    a simulated clock to both, so that a slot's time does not depend on the machine's speed.
    """

    def __init__(self, client: redis.Redis, namespace: str, rpm: float, tpm: float,
                 burst_s: float = 0.0, executor: ThreadPoolExecutor | None = None,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.namespace = namespace
        self.rpm, self.tpm = float(rpm), float(tpm)
        self._keys = [key.format(namespace=namespace) for key in RATELIMIT_KEYS]
        self._script = client.register_script(LUA)
        self._client = client
        self._burst_s = burst_s
        self._executor = executor
        self._async: redis.asyncio.Redis | None = None
        self._async_script: Any = None
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._pending = 0  # token correction not yet sent
        self._pending_requests = 0  # request slots handed back, not yet sent (<= 0)

    async def _call(self, *args: Any) -> float:
        args = ("" if self._clock is None else self._clock(), *args)
        if self._executor is None and self._async is None:
            self._async = async_twin(self._client)   # on the loop that will use it
            if self._async is None:
                self._executor = _executor()
            else:
                self._async_script = self._async.register_script(LUA)
        if self._async_script is not None:
            return float(await self._async_script(keys=self._keys, args=list(args)))
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(
            self._executor, lambda: self._script(keys=self._keys, args=list(args),
                                                 client=self._client))
        return float(raw)

    async def reserve(self, tokens: int) -> float:
        """Book the next slot for one request of ``tokens``; return the seconds until it."""
        pending, self._pending = self._pending, 0
        requests, self._pending_requests = self._pending_requests, 0
        try:
            return await self._call("reserve", 60.0 / self.rpm, 60.0 / self.tpm,
                                    max(0, tokens), self._burst_s, self._burst_s, pending,
                                    requests)
        except BaseException:
            self._pending += pending
            self._pending_requests += requests
            raise

    async def acquire(self, tokens: int) -> float:
        """Wait for a slot (and for any shared cool-down); return the seconds waited.

        A slot booked here and then not used — a cool-down came in while we slept, so we
        queue again after it; or we are cancelled — is handed back (``release``)."""
        clock = self._clock or time.monotonic
        t0 = clock()
        booked = False
        try:
            while True:
                delay = await self.reserve(tokens)
                booked = True
                if delay <= 0:
                    break
                await self._sleep(delay)
                if delay < RECHECK_AFTER_S:
                    break
                left = await self.cooldown_left()
                if left <= 0:
                    break
                self.release(tokens)  # a 429 came in while we slept: queue again after it
                booked = False
                await self._sleep(left)
        except BaseException:
            if booked:
                self.release(tokens)
            raise
        return clock() - t0

    def adjust(self, delta_tokens: int) -> None:
        """Correct the token budget once the real usage is known (negative: give back); the
        correction travels with this process's next reservation (``flush`` sends it now)."""
        self._pending += delta_tokens

    def release(self, tokens: int) -> None:
        """Hand back one reserved slot that was not used: its request and its ``tokens``
        (carried by the next reservation, like ``adjust``)."""
        self._pending -= max(0, tokens)
        self._pending_requests -= 1

    async def flush(self) -> None:
        pending, self._pending = self._pending, 0
        requests, self._pending_requests = self._pending_requests, 0
        if pending or requests:
            try:
                await self._call("adjust", pending, 60.0 / self.tpm, requests, 60.0 / self.rpm)
            except BaseException:
                self._pending += pending
                self._pending_requests += requests
                raise

    async def cool_down(self, seconds: float) -> float:
        """Tell every process to send nothing for ``seconds``; return the cool-down left."""
        return await self._call("cool", max(0.0, seconds))

    async def cooldown_left(self) -> float:
        return await self._call("left")
