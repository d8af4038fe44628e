"""The Celery app against a real Redis and a real worker process."""

from __future__ import annotations

import pickle
import time
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from distillq.queues import ROUTES
from orchestrator.embedded import LocalCluster
from workers.app import (
    TIME_LIMITS,
    VISIBILITY_TIMEOUT,
    BrokerSettings,
    app,
    celery_config,
    configure,
)


def test_config_is_json_only_with_deliberate_delivery() -> None:
    conf = celery_config(BrokerSettings("redis://:secret@example:6379/3"))
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] > 6 * 3600
    assert conf["worker_send_task_events"]
    assert {r["queue"] for r in ROUTES.values()} == {"generate", "attribute", "train"}


def test_broker_urls() -> None:
    assert BrokerSettings("unix:///tmp/r.sock").kombu_url == "redis+socket:///tmp/r.sock"
    tls = BrokerSettings("rediss://:pw@host:6380/0?ssl_cert_reqs=none")
    assert tls.ssl_options is not None and tls.ssl_options["ssl_cert_reqs"] == 0
    assert BrokerSettings("rediss://host:6380/0").ssl_options == {"ssl_cert_reqs": 2}
    with pytest.raises(RuntimeError, match="REDIS_URL is not set"):
        BrokerSettings.from_env({})


def _log_has(log: Path, needle: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and needle in log.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_worker_runs_json_and_refuses_pickle(tmp_path: Path, redis_url: str) -> None:
    cluster = LocalCluster(tmp_path, redis_url, pools=(("generate", "threads", 2),))
    cluster.start()
    try:
        configure(redis_url)
        cluster.wait_ready()
        log = tmp_path / "logs" / "worker-generate-0.log"
        # a pickled message: its body would run ping if it were ever deserialised
        bad_id = str(uuid.uuid4())
        with Connection(BrokerSettings(redis_url).kombu_url) as conn:
            producer = conn.Producer(serializer="pickle")
            producer.publish(
                pickle.dumps(((["from-pickle"]), {}, {})), routing_key="generate",
                exchange="", content_type="application/x-python-serialize",
                content_encoding="binary",
                headers={"task": "distillq.ping", "id": bad_id, "lang": "py"},
                declare=[], serializer=None,
            )
        good_id = str(uuid.uuid4())
        app.send_task("distillq.ping", args=["from-json"], task_id=good_id, queue="generate")
        assert _log_has(log, f"distillq.ping[{good_id}] succeeded")
        text = log.read_text(errors="replace")
        assert "ContentDisallowed" in text or "untrusted content" in text
        assert f"distillq.ping[{bad_id}]" not in text
    finally:
        cluster.stop()


def test_every_task_has_its_queues_time_limits_below_the_visibility_timeout(
        redis_url: str) -> None:
    configure(redis_url)
    from workers import tasks

    for name, route in ROUTES.items():
        task = app.tasks[name]
        assert task.time_limit == TIME_LIMITS[route["queue"]]
        assert 0 < task.soft_time_limit < task.time_limit < VISIBILITY_TIMEOUT
    # the threads pool enforces none of them: generate_job has its own, earlier deadline
    assert 0 < tasks.GENERATE_DEADLINE_S < app.tasks["distillq.generate"].soft_time_limit
