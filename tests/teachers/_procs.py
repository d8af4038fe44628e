"""A worker process for the cross-process rate-limit test (importable under spawn)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from tests.teachers.conftest import make_spec
from workers.teachers.accounting import Tally
from workers.teachers.openai import client_for
from workers.teachers.runtime import get_runtime


def hammer(url: str, socket: str, rpm: int, concurrency: int, duration: float,
           ready: Any, go: Any, start: Any, out: Any) -> None:
    """Send requests as fast as the global limiter allows; report completion times."""
    client = redis.Redis(unix_socket_path=socket)
    teacher = make_spec(teacher={"rpm": rpm, "concurrency": concurrency,
                                 "max_attempts": 10}).teacher
    runtime = get_runtime()
    chat = client_for(teacher, runtime, client, url)
    tally = Tally()

    async def loop(deadline: float) -> list[float]:
        done = []
        while time.time() < deadline:
            msg = [{"role": "user", "content": f"Number of examples: 1\n{time.time()}"}]
            await chat.complete(msg, tally)
            done.append(time.time())
        return done

    async def main() -> list[float]:
        deadline = start.value + duration
        runs = await asyncio.gather(*(loop(deadline) for _ in range(concurrency)))
        return sorted(t for r in runs for t in r)

    ready.put("ready")
    go.wait(60)
    out.put({"times": runtime.run(main()), "retries": dict(tally.retries)})
    runtime.close()
