"""Prometheus metrics, served by ``orchestrator serve --metrics-port PORT`` (``/metrics``).

Everything is read at scrape time from Redis and storage — the orchestrator keeps no counters
of its own that a restart could lose:

- queues: ``distillq_queue_depth{queue}`` (messages waiting, ``LLEN``) and
  ``distillq_unacked_messages`` (delivered to a worker, not yet acknowledged);
- runs (the ``dq:runs`` hash of ``serve``): ``distillq_run_status{run,status}``,
  ``distillq_cycle{run}``, ``distillq_jobs{run,state}`` for the current cycle's generation
  jobs (``planned`` = ``committed`` + ``failed`` + ``in_flight`` + ``waiting``),
  ``distillq_job_resends{run}``, ``distillq_validation_metric{run,metric}`` (the last trained
  cycle's) and ``distillq_best_validation_metric{run,metric}``;
- spend per run, from the workers' live counter ``dq:{run}:spend``
  (``workers.teachers.accounting``; falls back to the committed job statistics in storage when
  Redis lost it): ``distillq_teacher_tokens{run,direction}``, ``distillq_teacher_cost{run}``,
  ``distillq_teacher_requests{run}``;
- per teacher endpoint (namespace ``dq:rl:<hash>`` of ``workers.teachers.ratelimit``; labels
  ``endpoint`` = that hash, ``host``, ``model``): the configured budget
  ``distillq_ratelimit_limit{budget="requests_per_minute"|"tokens_per_minute"}``, how far ahead
  it is booked ``distillq_ratelimit_backlog_seconds{budget="requests"|"tokens"}`` (0: budget
  to spare; > 0: workers are queueing for it, the limit is the bottleneck), the shared 429
  cool-down ``distillq_ratelimit_cooldown_seconds``, and the counters the workers add per job
  to ``<namespace>:stats``: ``distillq_teacher_endpoint_requests_total``,
  ``distillq_teacher_endpoint_attempts_total``, ``distillq_teacher_endpoint_tokens_total``,
  ``distillq_teacher_429_total``, ``distillq_teacher_retries_total{reason}`` and
  ``distillq_teacher_failures_total{reason}``.

Scrape config: docs/scaling.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, get_args

import redis
from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from distillq import paths
from distillq.jobs import failed_names, key_prefix
from distillq.keys import (
    ENDPOINT_STATS_KEY,
    INFLIGHT,
    RATELIMIT_KEYS,
    RATELIMIT_PREFIX,
    RESENDS,
    RUNS_KEY,
    SPEND_KEY,
    as_text,
)
from distillq.manifest import Status
from distillq.queues import QUEUES
from orchestrator.runs import load_manifest, spend
from storage.store import ShardStore

log = logging.getLogger("distillq.metrics")

ENDPOINT_LABELS = ["endpoint", "host", "model"]
JOB_STATES = ("planned", "committed", "failed", "in_flight", "waiting")
RUN_STATES: tuple[str, ...] = get_args(Status)


def _float(raw: Any, default: float = 0.0) -> float:
    try:
        return float(as_text(raw))
    except (TypeError, ValueError):
        return default


class DistillqCollector(Collector):
    """``now``: the clock the booked-ahead and cool-down gauges are measured from, in Unix
    seconds; default Redis's own (``TIME``), the clock the limiter books with."""

    def __init__(self, client: redis.Redis, now: Callable[[], float] | None = None):
        self.client = client
        self._now = now or self._redis_time

    def _redis_time(self) -> float:
        secs, micros = self.client.time()
        return float(secs) + float(micros) / 1e6

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        runs = {as_text(k): as_text(v) for k, v in self.client.hgetall(RUNS_KEY).items()}
        yield from self._runs(runs)
        yield from self._endpoints()

    # ---- queues ------------------------------------------------------------------------
    def _queues(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("distillq_queue_depth", "messages waiting in a Celery queue",
                                  labels=["queue"])
        for q in QUEUES:
            depth.add_metric([q], float(self.client.llen(q)))
        yield depth
        yield GaugeMetricFamily("distillq_unacked_messages", "messages delivered to workers "
                                "and not yet acknowledged (all queues)",
                                value=float(self.client.hlen("unacked")))

    # ---- runs --------------------------------------------------------------------------
    def _runs(self, runs: dict[str, str]) -> Iterator[GaugeMetricFamily]:
        g = {
            "status": GaugeMetricFamily("distillq_run_status", "1 for the run's status",
                                        labels=["run", "status"]),
            "cycle": GaugeMetricFamily("distillq_cycle", "current cycle", labels=["run"]),
            "jobs": GaugeMetricFamily("distillq_jobs", "generation jobs of the current cycle "
                                      "by state", labels=["run", "state"]),
            "resends": GaugeMetricFamily("distillq_job_resends", "jobs sent again after their "
                                         "deadline (all cycles since the run began or was "
                                         "last resumed)", labels=["run"]),
            "tokens": GaugeMetricFamily("distillq_teacher_tokens", "teacher tokens spent",
                                        labels=["run", "direction"]),
            "cost": GaugeMetricFamily("distillq_teacher_cost", "teacher cost spent (the "
                                      "spec's price units)", labels=["run"]),
            "requests": GaugeMetricFamily("distillq_teacher_requests", "teacher requests "
                                          "paid for", labels=["run"]),
            "metric": GaugeMetricFamily("distillq_validation_metric", "validation metric of "
                                        "the last trained cycle", labels=["run", "metric"]),
            "best": GaugeMetricFamily("distillq_best_validation_metric", "best validation "
                                      "metric so far", labels=["run", "metric"]),
        }
        for run_id, uri in sorted(runs.items()):
            try:
                self._run(ShardStore(uri), run_id, g)
            except Exception as exc:  # a scrape must not fail because one run is unreadable
                log.warning("metrics for run %s unavailable: %s", run_id, exc)
        yield from g.values()

    def _run(self, store: ShardStore, run_id: str, g: dict[str, GaugeMetricFamily]) -> None:
        manifest = load_manifest(store, run_id)
        for status in RUN_STATES:
            g["status"].add_metric([run_id, status], float(manifest.status == status))
        decisions = manifest.decisions
        # the cycle in progress; once the loop has stopped, the last one that ran
        cycle = len(decisions) - 1 if manifest.final else len(decisions)
        g["cycle"].add_metric([run_id], float(cycle))
        for state, value in self._jobs(store, run_id, cycle).items():
            g["jobs"].add_metric([run_id, state], float(value))
        # one snapshot of both: the controller moves a decided cycle's re-sends between them
        pipe = self.client.pipeline(transaction=True)
        pipe.hvals(INFLIGHT.format(run_id=run_id))
        pipe.get(RESENDS.format(run_id=run_id))
        inflight, forgotten = pipe.execute()
        resends = sum(max(0, int(_float(_sends(v))) - 1) for v in inflight)
        resends += int(_float(forgotten or 0))
        g["resends"].add_metric([run_id], float(resends))
        live = {as_text(k): _float(v) for k, v in
                self.client.hgetall(SPEND_KEY.format(run_id=run_id)).items()}
        spent = live or spend(store, run_id, cycle)
        g["tokens"].add_metric([run_id, "in"], spent.get("tokens_in", 0.0))
        g["tokens"].add_metric([run_id, "out"], spent.get("tokens_out", 0.0))
        g["cost"].add_metric([run_id], spent.get("cost", 0.0))
        g["requests"].add_metric([run_id], spent.get("requests", 0.0))
        if decisions:
            last = decisions[-1]
            g["metric"].add_metric([run_id, last.metric], last.value)
            g["best"].add_metric([run_id, last.metric], last.best_value)

    def _jobs(self, store: ShardStore, run_id: str, cycle: int) -> dict[str, int]:
        plan = store.read_json(run_id, paths.plan(cycle)) or {"jobs": []}
        planned = set(plan["jobs"])
        committed = planned & set(store.list_jobs(run_id, cycle, "generated"))
        failed = failed_names(store.list_names(run_id, paths.failed_dir(cycle)),
                              "generate") & (planned - committed)
        prefix = key_prefix("generate", cycle)
        sent = {as_text(k)[len(prefix):] for k in self.client.hkeys(INFLIGHT.format(run_id=run_id))
                if as_text(k).startswith(prefix)}
        in_flight = (sent & planned) - committed - failed
        return {"planned": len(planned), "committed": len(committed), "failed": len(failed),
                "in_flight": len(in_flight),
                "waiting": len(planned) - len(committed) - len(failed) - len(in_flight)}

    # ---- teacher endpoints -------------------------------------------------------------
    def _namespaces(self) -> set[str]:
        found = set()
        for key in self.client.scan_iter(match=f"{RATELIMIT_PREFIX}*", count=500):
            ns, _, suffix = as_text(key).rpartition(":")
            if suffix in ("req", "tok", "cool", "stats"):
                found.add(ns)
        return found

    def _endpoints(self) -> Iterator[Metric]:
        limit = GaugeMetricFamily("distillq_ratelimit_limit", "configured global rate limit "
                                  "of a teacher endpoint", labels=[*ENDPOINT_LABELS, "budget"])
        backlog = GaugeMetricFamily("distillq_ratelimit_backlog_seconds", "how far ahead the "
                                    "endpoint's budget is booked (0: budget to spare)",
                                    labels=[*ENDPOINT_LABELS, "budget"])
        cool = GaugeMetricFamily("distillq_ratelimit_cooldown_seconds", "shared pause left "
                                 "after a 429", labels=ENDPOINT_LABELS)
        c = {name: CounterMetricFamily(f"distillq_teacher_{name}", doc, labels=ENDPOINT_LABELS)
             for name, doc in (("endpoint_requests", "teacher requests (per endpoint)"),
                               ("endpoint_attempts", "HTTP attempts (per endpoint)"),
                               ("endpoint_tokens", "tokens (per endpoint)"),
                               ("429", "HTTP 429 answers (per endpoint)"))}
        retries = CounterMetricFamily("distillq_teacher_retries", "retried attempts by reason",
                                      labels=[*ENDPOINT_LABELS, "reason"])
        failures = CounterMetricFamily("distillq_teacher_failures", "requests failed for good "
                                       "by reason", labels=[*ENDPOINT_LABELS, "reason"])
        now = self._now()
        for ns in sorted(self._namespaces()):
            stats = {as_text(k): as_text(v) for k, v in
                     self.client.hgetall(ENDPOINT_STATS_KEY.format(namespace=ns)).items()}
            labels = [ns[len(RATELIMIT_PREFIX):], stats.get("host", ""), stats.get("model", "")]
            if "rpm" in stats:
                limit.add_metric([*labels, "requests_per_minute"], _float(stats["rpm"]))
                limit.add_metric([*labels, "tokens_per_minute"], _float(stats["tpm"]))
            req, tok, cd = self.client.mget(*(key.format(namespace=ns) for key in RATELIMIT_KEYS))
            backlog.add_metric([*labels, "requests"], max(0.0, _float(req) - now))
            backlog.add_metric([*labels, "tokens"], max(0.0, _float(tok) - now))
            cool.add_metric(labels, max(0.0, _float(cd) - now))
            for name in ("requests", "attempts", "tokens"):
                c[f"endpoint_{name}"].add_metric(labels, _float(stats.get(name)))
            c["429"].add_metric(labels, _float(stats.get("retry:http_429"))
                                + _float(stats.get("failure:http_429")))
            for field, value in stats.items():
                kind, _, reason = field.partition(":")
                if kind == "retry" and reason:
                    retries.add_metric([*labels, reason], _float(value))
                elif kind == "failure" and reason:
                    failures.add_metric([*labels, reason], _float(value))
        yield from (limit, backlog, cool, *c.values(), retries, failures)


def _sends(raw: Any) -> Any:
    try:
        return json.loads(as_text(raw)).get("sends", 0)
    except (ValueError, AttributeError):
        return 0


def start_metrics_server(client: redis.Redis, port: int, addr: str = "0.0.0.0") -> None:
    REGISTRY.register(DistillqCollector(client))
    start_http_server(port, addr=addr)
    log.info("Prometheus metrics on %s:%d/metrics", addr, port)
