"""The dispatcher (orchestrator/dispatch.py): the in-flight table of a run against a real Redis.
How it sends through a controller's ticks is tested in test_controller.py."""

from __future__ import annotations

import json

import redis

from distillq.jobs import JobId
from distillq.keys import INFLIGHT
from distillq.spec import LoopSpec
from orchestrator.dispatch import Dispatcher


def test_dropping_a_decided_cycle_twice_counts_its_resends_once(
        redis_client: redis.Redis) -> None:
    """Two controllers (or a retried EXEC) dropping the same snapshot: the re-sends are
    counted by the entries actually removed, once."""
    from distillq.keys import RESENDS

    table = INFLIGHT.format(run_id="r1")
    redis_client.hset(table, mapping={
        "c00/train": json.dumps({"sent_at": 1.0, "sends": 3}),
        "c01/gen/c01-0000": json.dumps({"sent_at": 1.0, "sends": 2}),
        "c02/gen/c02-0000": json.dumps({"sent_at": 1.0, "sends": 4}),
        "teacher": json.dumps({"sent_at": 1.0, "sends": 2})})
    redis_client.hset("dq:r1:started", mapping={"r1:c01/gen/c01-0000": 1, "r1:c02/train": 1})
    first = Dispatcher(redis_client, "r1", lambda *a: None)
    second = Dispatcher(redis_client, "r1", lambda *a: None)
    first.load(LoopSpec())
    second.load(LoopSpec())  # the same snapshot
    first.forget_before(2)
    second.forget_before(2)
    assert int(redis_client.get(RESENDS.format(run_id="r1"))) == 2 + 1
    assert {k.decode() for k in redis_client.hkeys(table)} == {"c02/gen/c02-0000", "teacher"}
    assert redis_client.hkeys("dq:r1:started") == [b"r1:c02/train"]
    assert set(second.inflight) == {"c02/gen/c02-0000", "teacher"}


def test_a_send_is_recorded_then_made_once_per_deadline_until_max_sends(
        redis_client: redis.Redis) -> None:
    now = [100.0]
    sent: list[tuple[str, list[object], str]] = []
    dispatch = Dispatcher(redis_client, "r1", lambda *a: sent.append(a), clock=lambda: now[0])
    job, loop = JobId.generate(1, "c01-0000"), LoopSpec(max_sends=2)

    def tick() -> int:
        dispatch.load(loop)
        gave_up = dispatch.ensure(job, "/store", deadline_s=60)
        dispatch.flush()
        return gave_up

    assert tick() == 0 and sent == [("distillq.generate", ["r1", 1, "c01-0000", "/store"],
                                     "r1:c01/gen/c01-0000:1")]
    entry = json.loads(redis_client.hget(INFLIGHT.format(run_id="r1"), job.key))
    assert entry == {"sent_at": 100.0, "sends": 1, "requeued": 0}
    now[0] += 59
    assert tick() == 0 and len(sent) == 1, "within its deadline: not sent again"
    now[0] += 1
    assert tick() == 0 and sent[-1][2] == "r1:c01/gen/c01-0000:2"
    now[0] += 60
    assert tick() == 2 and len(sent) == 2, "max_sends used up: the caller records the failure"


def test_a_flush_without_sending_records_but_sends_nothing(redis_client: redis.Redis) -> None:
    sent: list[object] = []
    dispatch = Dispatcher(redis_client, "r1", lambda *a: sent.append(a), clock=lambda: 5.0)
    dispatch.load(LoopSpec())
    dispatch.ensure(JobId.single("train", 3), "/store", deadline_s=60)
    dispatch.flush(send=False)
    assert sent == [] and redis_client.hexists(INFLIGHT.format(run_id="r1"), "c03/train")
