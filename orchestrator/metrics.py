"""Prometheus metrics, served by ``orchestrator serve --metrics-port PORT``.

Everything is read at scrape time from Redis (queue depths, in-flight jobs, teacher counters)
and storage (committed jobs, spend, validation metric) — the orchestrator keeps no counters of
its own that a restart could lose. Scrape config: docs/scaling.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from orchestrator.controller import INFLIGHT
from orchestrator.driver import RUNS_KEY
from orchestrator.runs import load_manifest, spend
from storage.store import ShardStore
from workers.app import QUEUES

log = logging.getLogger("distillq.metrics")
TEACHER_STATS = "dq:teacher:stats:*"  # hashes written by workers.teachers (counters by reason)


class DistillqCollector(Collector):
    def __init__(self, client: redis.Redis):
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield self._queues()
        runs = {k.decode(): v.decode() for k, v in self.client.hgetall(RUNS_KEY).items()}
        yield from self._runs(runs)
        yield from self._teacher()

    def _queues(self) -> GaugeMetricFamily:
        g = GaugeMetricFamily("distillq_queue_depth", "messages waiting in a Celery queue",
                              labels=["queue"])
        for q in QUEUES:
            g.add_metric([q], float(self.client.llen(q)))
        return g

    def _runs(self, runs: dict[str, str]) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("distillq_jobs", "jobs of the current cycle by state",
                                 labels=["run", "state"])
        tokens = GaugeMetricFamily("distillq_teacher_tokens", "teacher tokens spent",
                                   labels=["run"])
        cost = GaugeMetricFamily("distillq_teacher_cost", "teacher cost spent", labels=["run"])
        metric = GaugeMetricFamily("distillq_validation_metric", "last validation metric",
                                   labels=["run", "metric"])
        cycle_g = GaugeMetricFamily("distillq_cycle", "current cycle", labels=["run"])
        for run_id, uri in sorted(runs.items()):
            try:
                self._run(ShardStore(uri), run_id, jobs, tokens, cost, metric, cycle_g)
            except Exception as exc:  # a scrape must not fail because one run is unreadable
                log.warning("metrics for run %s unavailable: %s", run_id, exc)
        yield from (jobs, tokens, cost, metric, cycle_g)

    def _run(self, store: ShardStore, run_id: str, *gauges: GaugeMetricFamily) -> None:
        jobs, tokens, cost, metric, cycle_g = gauges
        manifest = load_manifest(store, run_id)
        cycle = len(manifest["decisions"])
        cycle_g.add_metric([run_id], float(cycle))
        plan = store.read_json(run_id, f"cycle={cycle}/plan.json") or {"jobs": []}
        planned = set(plan["jobs"])
        committed = len(planned & set(store.list_jobs(run_id, cycle, "generated")))
        inflight = len(self.client.hkeys(INFLIGHT.format(run_id=run_id)))
        for state, value in (("planned", len(planned)), ("committed", committed),
                             ("sent_total", inflight)):
            jobs.add_metric([run_id, state], float(value))
        spent = spend(store, run_id, max(cycle, 0))
        tokens.add_metric([run_id], spent["tokens_in"] + spent["tokens_out"])
        cost.add_metric([run_id], spent["cost"])
        if manifest["decisions"]:
            last = manifest["decisions"][-1]
            metric.add_metric([run_id, last["metric"]], float(last["value"]))

    def _teacher(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("distillq_teacher_events", "teacher requests, retries and "
                              "failures by endpoint and reason", labels=["endpoint", "event"])
        for key in self.client.scan_iter(match=TEACHER_STATS, count=100):
            endpoint = key.decode().rsplit(":", 1)[-1]
            for event, value in self.client.hgetall(key).items():
                g.add_metric([endpoint, event.decode()], float(_number(value)))
        yield g


def _number(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return float(json.loads(raw))


def start_metrics_server(client: redis.Redis, port: int) -> None:
    REGISTRY.register(DistillqCollector(client))
    start_http_server(port)
    log.info("Prometheus metrics on :%d/metrics", port)
