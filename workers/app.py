"""The one Celery app of distillq.

Configuration is read once, when Celery first needs it (``_LazyConfig``), from the worker's
environment at start: ``REDIS_URL`` (``redis://``, ``rediss://`` with TLS, passwords included,
or ``unix:///path/redis.sock`` as the embedded Redis uses). Nothing is read at import time.

Delivery semantics, chosen on purpose (see docs/delivery.md):

- ``task_acks_late``: a message is acknowledged only after its task returns, so a worker that
  dies mid-task does not lose the job: Redis redelivers it. Every task is idempotent (one shard
  per deterministic job id, committed atomically), so running a job twice is harmless.
- ``task_reject_on_worker_lost``: when a prefork child is killed (SIGKILL, OOM) the message is
  requeued at once instead of being acknowledged as failed. A task that kills its worker every
  time would loop; the controller's per-job attempt count stops that (a job that was sent
  ``max_sends`` times is failed permanently).
- Time limits per queue (``TIME_LIMITS``): every task gets ``time_limit`` (hard) and
  ``soft_time_limit`` (``SOFT_MARGIN_S`` earlier: ``SoftTimeLimitExceeded`` is raised inside the
  task so it can unwind) from its queue in ``ROUTES`` (``task_time_limits``, applied as task
  options in workers/tasks.py). Only pools with a supervising parent enforce them: prefork
  (the attribute and train workers) kills a child that passes the hard limit; the ``threads``
  pool (and ``solo``) ignores both limits, since a thread cannot be killed. The generate
  workers run ``-P threads`` (compose.yaml, README): there a job is bounded instead by the
  teacher client's own timeouts — ``teacher.timeout_s`` per HTTP attempt (aiohttp
  ``ClientTimeout``), at most ``max_attempts`` attempts within ``max_elapsed_s`` — and by
  ``generate_job``'s deadline (the generate soft limit), which cancels its requests and
  raises a TransientError.
- ``visibility_timeout`` (Redis transport) is above the longest task's hard time limit, so a
  long training job is never handed to a second worker while the first is still on it. A worker
  killed as a whole (not just its child) leaves its messages unacknowledged until that timeout;
  the controller does not wait for it: it re-sends jobs whose deadline has passed. A task
  killed at its hard limit is acknowledged as failed (``acks_late`` acknowledges timeouts too);
  the controller re-sends it once its deadline has passed.
- Prefetch 1: a worker reserves one message per execution slot, so long attribute and train
  jobs are never queued behind each other inside one worker while another worker is idle.
- JSON only: ``accept_content=["json"]``. A pickled message is refused by the worker (kombu's
  ContentDisallowed) and logged; it never reaches a task.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery, Task
from kombu import Queue, pools

from distillq.queues import QUEUES, ROUTES
from workers.flower import publish_options

# Hard time limits per queue (seconds); the visibility timeout sits above the largest.
TIME_LIMITS = {"generate": 30 * 60, "attribute": 2 * 3600, "train": 6 * 3600}
SOFT_MARGIN_S = 60  # the soft limit comes this much before the hard one
VISIBILITY_TIMEOUT = max(TIME_LIMITS.values()) + 3600


def task_time_limits(task_name: str) -> dict[str, int]:
    """``time_limit`` and ``soft_time_limit`` of a task, from its queue's ``TIME_LIMITS``.
    Enforced by the prefork pool only (see the module docstring)."""
    hard = TIME_LIMITS[ROUTES[task_name]["queue"]]
    return {"time_limit": hard, "soft_time_limit": hard - SOFT_MARGIN_S}


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is, built once from the environment at worker/CLI start."""

    redis_url: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BrokerSettings:
        env = dict(os.environ) if env is None else env
        url = env.get("REDIS_URL") or env.get("DISTILLQ_REDIS_URL")
        if not url:
            raise RuntimeError(
                "REDIS_URL is not set: point it at a Redis server (redis://, rediss://, "
                "unix:///path.sock), or use `orchestrator run`, which starts an embedded one"
            )
        return cls(redis_url=url)

    @property
    def kombu_url(self) -> str:
        """Celery/kombu spell unix sockets ``redis+socket:///path``."""
        if self.redis_url.startswith("unix://"):
            parts = urlsplit(self.redis_url)
            query = f"?{parts.query}" if parts.query else ""
            return f"redis+socket://{parts.path}{query}"
        return self.redis_url

    @property
    def ssl_options(self) -> dict[str, Any] | None:
        """TLS for ``rediss://``: verify certificates unless the URL says otherwise."""
        if not self.redis_url.startswith("rediss://"):
            return None
        query = parse_qs(urlsplit(self.redis_url).query)
        reqs = (query.get("ssl_cert_reqs") or ["required"])[0].lower()
        mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(reqs, ssl.CERT_REQUIRED)
        opts: dict[str, Any] = {"ssl_cert_reqs": mode}
        for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if key in query:
                opts[key] = query[key][0]
        return opts


def celery_config(settings: BrokerSettings) -> dict[str, Any]:
    """The full Celery configuration for a given broker."""
    conf: dict[str, Any] = {
        "broker_url": settings.kombu_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
        "broker_connection_retry_on_startup": True,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "generate",
        "task_routes": ROUTES,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
    }
    conf["broker_use_ssl"] = settings.ssl_options  # None: plain (also undoes an earlier TLS URL)
    return conf


class DistillqTask(Task):  # type: ignore[misc]
    """Every send of a distillq task (retries included) carries ids-only ``argsrepr``: events,
    Flower and logs never see the arguments themselves (see workers/flower.py)."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        for key, value in publish_options(self.name, args).items():
            options.setdefault(key, value)
        return super().apply_async(args, kwargs, **options)


_explicit: dict[str, str] = {}


class _LazyConfig(Mapping[str, Any]):
    """The app's configuration source, built when Celery first loads its configuration (at
    worker or CLI start) from the explicit URL or the environment. A source rather than an
    ``on_configure`` handler: updating ``conf`` from inside that signal re-enters Celery's
    configuration loading once ``app.amqp`` exists (a RecursionError, logged and swallowed)."""

    def __init__(self) -> None:
        self._data: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._data is None:
            url = _explicit.get("redis_url")
            self._data = celery_config(BrokerSettings(url) if url else BrokerSettings.from_env())
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


app = Celery("distillq", include=["workers.tasks"], task_cls=DistillqTask)
app.config_from_object(_LazyConfig())


def configure(redis_url: str) -> Celery:
    """Point the app at a broker explicitly (the CLI and tests do this before first use)."""
    previous = _explicit.get("redis_url")
    _explicit["redis_url"] = redis_url
    app.conf.update(celery_config(BrokerSettings(redis_url)))
    if previous is not None and previous != redis_url:
        _drop_connections()
    return app


def _drop_connections() -> None:
    """Forget pooled broker connections (and producers) made for an earlier URL, as Celery does
    after a fork; the next use connects to the URL now configured. kombu keeps its pools in a
    process-wide registry keyed by connection: reset it too, or a later switch back to the same
    URL would be handed the pool closed here."""
    pools.reset()
    app._pool = None  # noqa: SLF001 - Celery keeps its broker pool here
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None  # noqa: SLF001


def redis_url() -> str:
    """The Redis URL this process uses (explicit, else from the environment)."""
    return _explicit.get("redis_url") or BrokerSettings.from_env().redis_url
