"""Every Redis key distillq uses, in one place. Redis holds only what can be rebuilt from
storage or lost without harm (docs/architecture.md): the queues, the in-flight table, locks,
counters and the run registry. ``{run_id}`` and ``{namespace}`` are filled with ``str.format``.
"""

from __future__ import annotations

from typing import Any


def as_text(value: Any) -> str:
    """A Redis reply (bytes unless the client decodes) as text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# the runs `serve` drives: hash run_id -> storage URI
RUNS_KEY = "dq:runs"

# per run
LOCK = "dq:{run_id}:lock"  # the controller that drives the run (orchestrator.runlock)
INFLIGHT = "dq:{run_id}:inflight"  # job key -> its sends: the controller's in-flight table
RESENDS = "dq:{run_id}:resends"  # re-sends of decided cycles' jobs, entries dropped
STARTED_KEY = "dq:{run_id}:started"  # send key -> when a worker last marked it (Redis time)
EVENTS_KEY = "dq:{run_id}:events"  # list: a worker committed; the controller wakes
TEACHER_URL_KEY = "dq:{run_id}:teacher_url"  # where the embedded sim teacher listens
# hash: teacher tokens, cost and requests so far; its field SPEND_CHECKED is set once the
# controller has raised it to what storage recorded: a hash without it lost its data (a
# flush, a restart without persistence), even if workers have added to it since
SPEND_KEY = "dq:{run_id}:spend"
SPEND_CHECKED = "checked"
REASKS_KEY = "dq:{run_id}:reasks"  # hash: job -> its attempts that failed on the answers

# per teacher endpoint: namespace = RATELIMIT_PREFIX + a hash of base URL and model
RATELIMIT_PREFIX = "dq:rl:"
RATELIMIT_KEYS = ("{namespace}:req", "{namespace}:tok", "{namespace}:cool")  # 2 TATs, cool
ENDPOINT_STATS_KEY = "{namespace}:stats"  # hash: requests, attempts, tokens, retries...
