"""The task shells' failure paths, run eagerly (``Task.apply``: Celery's real retry and trace
machinery, no worker) against the session's private Redis and a local store: a missing or
malformed manifest and a transient error that used up its retries are recorded where the
controller reads failures (``cycle=<c>/failed/<kind>-<job>.json``) and notified; a Redis blip
is retried."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from manifestkit import write_manifest

from distillq.errors import PermanentError
from distillq.keys import EVENTS_KEY
from distillq.manifest import require_manifest, save_manifest
from storage.schemas import EXAMPLES
from storage.store import ShardStore
from workers.app import configure

SPEC = {"dataset": {"train": "unused.csv"}, "teacher": {"kind": "sim"}}
JOB = "c01-0000"


@pytest.fixture
def tasks(redis_url: str) -> Any:
    configure(redis_url)
    from workers import tasks as module

    return module


@pytest.fixture
def store(tmp_path: Path) -> ShardStore:
    return ShardStore(tmp_path / "store")


def _events(client: redis.Redis, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.lrange(EVENTS_KEY.format(run_id=run_id), 0, -1)]


def _failed(store: ShardStore, run_id: str, cycle: int) -> dict[str, Any]:
    folder = f"cycle={cycle}/failed"
    return {n: store.read_json(run_id, f"{folder}/{n}") for n in store.list_names(run_id, folder)}


def _run_with_a_job(store: ShardStore, run_id: str) -> None:
    write_manifest(store, run_id, spec=SPEC)
    store.write_json(run_id, "cycle=1/jobs/part-00000.json",
                     {JOB: {"job_id": JOB, "n_examples": 1}})


@pytest.mark.parametrize(("task", "cycle", "name"), [
    ("generate", 1, f"generate-{JOB}.json"),
    ("train", 2, "train-train.json"),
])
def test_a_run_without_a_manifest_is_recorded_and_notified(
        tasks: Any, store: ShardStore, redis_client: redis.Redis, task: str, cycle: int,
        name: str) -> None:
    run_id = f"nomanifest-{task}"
    args = [run_id, cycle, JOB, store.uri] if task == "generate" else [run_id, cycle, store.uri]
    result = getattr(tasks, task).apply(args=args)
    assert result.failed() and isinstance(result.result, PermanentError)
    failed = _failed(store, run_id, cycle)
    assert list(failed) == [name]
    record = failed[name]
    assert set(record) == {"kind", "job_id", "error_type", "error"} and record["kind"] == task
    assert record["error_type"] == "ManifestError" and "no manifest" in record["error"]
    events = _events(redis_client, run_id)
    assert [(e["kind"], e["cycle"], e["ok"]) for e in events] == [(task, cycle, False)]


def test_a_malformed_manifest_is_a_recorded_permanent_failure(
        tasks: Any, store: ShardStore, redis_client: redis.Redis) -> None:
    run_id = "malformed"
    store.write_json(run_id, "manifest.json", {"spec": SPEC})  # no taxonomy
    result = tasks.generate.apply(args=[run_id, 1, JOB, store.uri])
    assert result.failed() and isinstance(result.result, PermanentError)
    record = _failed(store, run_id, 1)[f"generate-{JOB}.json"]
    assert record["job_id"] == JOB and record["error_type"] == "ManifestError"
    assert "manifest of malformed is not valid" in record["error"] and "taxonomy" in record["error"]
    assert [e["ok"] for e in _events(redis_client, run_id)] == [False]


def test_a_redis_blip_is_retried(tasks: Any, store: ShardStore, redis_client: redis.Redis,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.teachers.generate as gen

    run_id = "blip"
    _run_with_a_job(store, run_id)
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> gen.GenerationResult:
        calls.append(1)
        if len(calls) <= 2:  # redis-py's ConnectionError is no builtin ConnectionError
            raise redis.exceptions.ConnectionError("Error 111 connecting")
        return gen.GenerationResult(pa.Table.from_pylist([], schema=EXAMPLES), {"examples": 0})

    monkeypatch.setattr(tasks, "generate_job", flaky)
    result = tasks.generate.apply(args=[run_id, 1, JOB, store.uri])
    assert result.successful(), result.result
    assert len(calls) == 3 and store.has(run_id, 1, "generated", JOB)
    assert _failed(store, run_id, 1) == {}
    assert [e["ok"] for e in _events(redis_client, run_id)] == [True]


@pytest.mark.parametrize(("status", "cancel", "why"), [
    ("cancelled", False, "the run is cancelled"),
    ("failed", False, "the run is failed"),
    ("running", True, "the run is being cancelled"),
])
def test_a_job_of_a_run_that_ended_while_it_waited_is_not_paid_for(
        tasks: Any, store: ShardStore, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch, status: str, cancel: bool, why: str) -> None:

    run_id = f"ended-{status}"
    _run_with_a_job(store, run_id)
    manifest = require_manifest(store, run_id)
    save_manifest(store, manifest.model_copy(update={"status": status}))
    if cancel:
        store.write_json(run_id, "cancel.json", {"at": 1.0})
    called: list[int] = []
    monkeypatch.setattr(tasks, "generate_job", lambda *a, **k: called.append(1))
    result = tasks.generate.apply(args=[run_id, 1, JOB, store.uri],
                                  task_id=f"{run_id}:c01/gen/{JOB}:2")  # the controller's id
    assert result.successful() and result.result == {"skipped": why}
    assert called == [] and not store.has(run_id, 1, "generated", JOB)
    assert _failed(store, run_id, 1) == {}
    # the job left the queue: the controller may now hold it to its deadline
    started = redis_client.hkeys(f"dq:{run_id}:started")
    assert started == [f"{run_id}:c01/gen/{JOB}".encode()]


@pytest.mark.parametrize("error", [redis.exceptions.TimeoutError("Timeout reading"),
                                   ConnectionError("refused"),
                                   # unexpected (a bug, a folder gone): retried the same way
                                   RuntimeError("Parent directory /x/epochs does not exist")])
def test_retries_used_up_are_recorded_and_notified(
        tasks: Any, store: ShardStore, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    import workers.teachers.generate as gen

    run_id = f"exhausted-{type(error).__module__.split('.')[0]}"
    _run_with_a_job(store, run_id)
    calls: list[int] = []

    def down(*args: Any, **kwargs: Any) -> gen.GenerationResult:
        calls.append(1)
        raise error

    monkeypatch.setattr(tasks, "generate_job", down)
    result = tasks.generate.apply(args=[run_id, 1, JOB, store.uri])
    assert result.failed() and type(result.result) is type(error)
    max_retries = tasks.generate.max_retries
    assert len(calls) == max_retries + 1                 # every retry was made, then no more
    record = _failed(store, run_id, 1)[f"generate-{JOB}.json"]
    assert set(record) == {"kind", "job_id", "error_type", "error"}
    assert record["error_type"] == type(error).__name__
    assert f"gave up after {max_retries} retries" in record["error"]
    assert [e["ok"] for e in _events(redis_client, run_id)] == [False]


def test_scratch_is_per_run_and_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ids are unique within a storage only: the same id in two storages (two studies, a
    test beside a real run) must not share scratch, or one's cleanup deletes the other's
    epoch checkpoints mid-training."""
    from workers.context import workdir

    monkeypatch.setenv("DISTILLQ_WORKDIR", str(tmp_path))
    a, b = workdir("r1", "/data/a"), workdir("r1", "/data/b")
    assert a != b and a.is_dir() and b.is_dir() and a.parent == b.parent == tmp_path
    assert workdir("r1", "/data/a") == a and a.name.startswith("r1-")


def test_a_budget_refusal_is_recorded_with_its_error_type(
        tasks: Any, store: ShardStore, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller tells budget refusals from failures by the record's ``error_type``."""
    import workers.teachers.generate as gen
    from distillq.errors import BudgetExceededError

    run_id = "budget-refused"
    _run_with_a_job(store, run_id)

    def refuse(*args: Any, **kwargs: Any) -> gen.GenerationResult:
        raise BudgetExceededError(f"run {run_id}: cost budget spent (1.0000 of 1.0)")

    monkeypatch.setattr(tasks, "generate_job", refuse)
    result = tasks.generate.apply(args=[run_id, 1, JOB, store.uri])
    assert result.failed() and isinstance(result.result, BudgetExceededError)
    record = _failed(store, run_id, 1)[f"generate-{JOB}.json"]
    assert record["error_type"] == "BudgetExceededError"
    assert record["error"].startswith("BudgetExceededError: run budget-refused: cost budget")
    assert [e["ok"] for e in _events(redis_client, run_id)] == [False]


def test_what_a_failed_attempt_paid_for_is_recorded_and_counted(
        tasks: Any, store: ShardStore, redis_client: redis.Redis) -> None:
    """Every answer of a generate job that then fails (here: malformed, after its re-asks) is
    paid for: its attempt's stats are recorded and the run's spend in storage counts them as
    wasted; the run's counter in Redis and storage agree."""
    from orchestrator.runs import failed_attempts, spend_split
    from tests.teachers.conftest import LABELS, make_job, make_pool
    from workers.teachers.accounting import read_spend
    from workers.teachers.sim import start_sim

    url, stop = start_sim(make_pool(), faults=("malformed",), fault_rate=1.0)
    try:
        run_id = "paid"
        write_manifest(store, run_id, taxonomy=LABELS,
                       spec={"dataset": {"train": "unused.csv"},
                             "teacher": {"kind": "sim", "rpm": 60000, "max_attempts": 1},
                             "generation": {"examples_per_request": 4}})
        store.write_json(run_id, "cycle=1/jobs/part-00000.json",
                         {JOB: make_job(make_pool(per_label=30, seed=99), job_id=JOB, n=8)})
        redis_client.set(f"dq:{run_id}:teacher_url", url)
        result = tasks.generate.apply(args=[run_id, 1, JOB, store.uri])
    finally:
        stop()
    assert result.failed()
    records = failed_attempts(store, run_id, 1)
    assert len(records) == 1 + tasks.generate.max_retries, "the first attempt and each retry"
    for record in records:
        assert record["job_id"] == JOB and record["failed"] and record["requests"] == 2
        assert record["failures_by_reason"] == {"malformed": 2}
        assert record["retries_by_reason"] == {"malformed": 4}  # two re-asks of each request
    split = spend_split(store, run_id, 1)
    assert split["kept"]["cost"] == 0 and split["wasted"]["tokens_in"] > 0
    live = read_spend(redis_client, run_id)
    assert live["tokens"] == split["paid"]["tokens_in"] + split["paid"]["tokens_out"]


def test_a_generate_task_keeps_marking_its_job_while_it_runs(
        tasks: Any, store: ShardStore, redis_client: redis.Redis) -> None:
    """The heartbeat from the task itself (its beats run on another thread than the task's
    Celery request): the job's mark moves on while its requests wait for the one slot."""
    from tests.teachers.conftest import LABELS, make_job, make_pool
    from workers.teachers.sim import start_sim

    url, stop = start_sim(make_pool(), latency_ms=800)
    run_id = "beating"
    try:
        write_manifest(store, run_id, taxonomy=LABELS,
                       spec={"dataset": {"train": "unused.csv"},
                             "teacher": {"kind": "sim", "rpm": 60000, "concurrency": 1},
                             "generation": {"examples_per_request": 2},
                             "loop": {"generate_deadline_s": 4}})
        store.write_json(run_id, "cycle=1/jobs/part-00000.json",
                         {JOB: make_job(make_pool(per_label=30, seed=99), job_id=JOB, n=6)})
        redis_client.set(f"dq:{run_id}:teacher_url", url)
        field = f"{run_id}:c01/gen/{JOB}"
        seconds, micros = redis_client.time()
        t0 = seconds + micros / 1e6  # the Redis server's clock, which the marks are in
        result = tasks.generate.apply(args=[run_id, 1, JOB, store.uri],
                                      task_id=f"{field}:1")
        marked = float(redis_client.hget(f"dq:{run_id}:started", field))
    finally:
        stop()
    assert result.successful(), result.result
    assert marked >= t0 + 1.0, "marked again after its start, by the heartbeat"
