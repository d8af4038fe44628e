"""The controller against a real Redis and real storage; workers are played by the test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.controller import Controller, read_job
from orchestrator.datasets import Labelled
from orchestrator.runs import create_run, examples_table, load_manifest
from orchestrator.spec import parse_spec
from storage.store import ShardStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _dataset(tmp_path: Path) -> Path:
    rows = ["text,label"] + [f"text number {i} of class {c},c{c}" for c in range(3)
                             for i in range(20)]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _spec(tmp_path: Path, **over: Any) -> Any:
    data: dict[str, Any] = {
        "run_id": "r1", "storage": str(tmp_path / "store"),
        "dataset": {"train": str(_dataset(tmp_path)), "test": str(_dataset(tmp_path)),
                    "seed_size": 30},
        "generation": {"examples_per_cycle": 12, "examples_per_request": 4},
        "loop": {"max_cycles": 3, "patience": 1, "generate_deadline_s": 60, "max_sends": 3},
    }
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_spec(data)


@pytest.fixture
def setup(tmp_path: Path, redis_client: redis.Redis) -> Any:
    def make(**over: Any) -> tuple[Controller, list[tuple[str, list[Any], str]], Clock]:
        spec = _spec(tmp_path, **over)
        store = ShardStore(spec.storage)
        create_run(spec, store)
        sent: list[tuple[str, list[Any], str]] = []
        clock = Clock()
        ctl = Controller(store, redis_client, "r1", lambda *a: sent.append(a), clock=clock)
        return ctl, sent, clock

    return make


def _eval(ctl: Controller, cycle: int, f1: float) -> None:
    report = {"cycle": cycle, "macro_f1": f1, "accuracy": f1, "loss": 1 - f1,
              "per_class": {c: {"precision": f1, "recall": f1, "f1": f1, "support": 2}
                            for c in ("c0", "c1", "c2")},
              "confusions": [["c0", "c1", 2]], "mined": {}}
    ctl.store.write_json("r1", f"cycle={cycle}/eval.json", report)


def _commit_jobs(ctl: Controller, cycle: int, job_ids: list[str]) -> None:
    for job in job_ids:
        data = Labelled([f"{job}-{i}" for i in range(2)], [f"{job} text {i}" for i in range(2)],
                        ["c0", "c1"])
        ctl.store.commit("r1", cycle, "generated", job,
                         examples_table(data, "r1", cycle, "teacher", job, job))


def _failed_in_cycle_one(setup: Any) -> tuple[Controller, list[Any], Clock, str]:
    """A run failed by one permanently failed generate job of cycle 1 (no failure tolerated)."""
    ctl, sent, clock = setup(generation={"tolerated_failure_fraction": 0.0})
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()
    job = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"][0]
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{job}.json", {"error": "boom"})
    assert ctl.tick() == "failed"
    return ctl, sent, clock, job


def test_cycle_zero_trains_on_the_seed_and_resends_after_deadline(setup: Any) -> None:
    ctl, sent, clock = setup()
    assert ctl.tick() == "running"
    assert [s[0] for s in sent] == ["distillq.train"]
    assert sent[0][2] == "r1:c00/train:1"
    ctl.tick()
    assert len(sent) == 1, "in flight and not past its deadline: not sent again"
    clock.now += 6 * 3600 + 1
    ctl.tick()
    assert [s[2] for s in sent] == ["r1:c00/train:1", "r1:c00/train:2"]


def test_full_loop_plans_generates_trains_and_stops_on_patience(setup: Any) -> None:
    ctl, sent, clock = setup()
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()  # decide cycle 0: continue
    assert load_manifest(ctl.store, "r1")["decisions"][0]["action"] == "continue"
    sent.clear()
    ctl.tick()  # plan cycle 1 and send its generate jobs
    plan = ctl.store.read_json("r1", "cycle=1/plan.json")
    job_ids = plan["jobs"]
    assert plan["examples"] == 12
    assert sum(read_job(ctl.store, "r1", 1, j)["n_examples"] for j in job_ids) == 12
    assert sorted(s[1][2] for s in sent) == sorted(job_ids)
    assert all(s[0] == "distillq.generate" for s in sent)
    sent.clear()
    _commit_jobs(ctl, 1, job_ids[:-1])
    ctl.tick()
    assert sent == [], "train waits for the last shard"
    _commit_jobs(ctl, 1, job_ids[-1:])
    ctl.tick()
    assert [s[0] for s in sent] == ["distillq.train"] and sent[0][1][1] == 1
    _eval(ctl, 1, 0.4)  # worse: patience 1 is used up
    ctl.tick()
    manifest = load_manifest(ctl.store, "r1")
    assert manifest["decisions"][-1]["action"] == "stop"
    assert manifest["final"]["best_cycle"] == 0
    sent.clear()
    ctl.tick()
    assert [s[0] for s in sent] == ["distillq.test"] and sent[0][1][1] == 0
    assert ctl.tick() == "running"
    ctl.store.write_json("r1", "test.json", {"cycle": 0, "macro_f1": 0.5})
    assert ctl.tick() == "done"


def test_replanning_is_deterministic_after_a_restart(setup: Any, redis_client: Any) -> None:
    ctl, sent, clock = setup()
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()
    first = ctl.store.read_json("r1", "cycle=1/plan.json")
    redis_client.flushall()  # a lost Redis: everything uncommitted is sent again, same ids
    sent.clear()
    again = Controller(ctl.store, redis_client, "r1", lambda *a: sent.append(a), clock=clock)
    again.tick()
    assert ctl.store.read_json("r1", "cycle=1/plan.json") == first
    assert sorted(s[1][2] for s in sent) == sorted(first["jobs"])


def test_max_cycles_and_cancel(setup: Any) -> None:
    ctl, sent, clock = setup(loop={"max_cycles": 0})
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    assert load_manifest(ctl.store, "r1")["final"]["reason"].startswith("max_cycles=0")
    ctl.store.write_json("r1", "cancel.json", {"at": clock.now + 1})
    assert ctl.tick() == "cancelled"
    assert ctl.tick() == "cancelled"


def test_permanent_generation_failures_over_tolerance_fail_the_run(setup: Any) -> None:
    ctl, sent, clock, job = _failed_in_cycle_one(setup)
    assert "failed permanently" in load_manifest(ctl.store, "r1")["stop_reason"]


BUDGET = {"error_type": "BudgetExceededError",
          "error": "BudgetExceededError: run r1: cost budget spent (1.0000 of 1.0)"}


def _into_cycle_one(setup: Any, **over: Any) -> tuple[Controller, list[Any], list[str]]:
    ctl, sent, _ = setup(generation={"tolerated_failure_fraction": 0.0}, **over)
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()
    return ctl, sent, ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]


def test_a_budget_refusal_stops_the_loop_it_does_not_fail_the_run(setup: Any) -> None:
    """Jobs the budget refused are not failures (none tolerated here): the cycle trains on
    what was generated before the cap, then the loop stops for the budget."""
    ctl, sent, jobs = _into_cycle_one(setup, budget={"max_cost": 1.0})
    _commit_jobs(ctl, 1, jobs[:1])
    assert len(jobs) >= 3
    for job in jobs[1:-1]:
        ctl.store.write_json("r1", f"cycle=1/failed/generate-{job}.json", BUDGET)
    # a record written before failure records had error_type: its text names the class
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{jobs[-1]}.json",
                         {"error": BUDGET["error"]})
    sent.clear()
    assert ctl.tick() == "running"
    assert [s[0] for s in sent] == ["distillq.train"], "what was paid for is trained on"
    _eval(ctl, 1, 0.6)
    ctl.tick()
    manifest = load_manifest(ctl.store, "r1")
    assert manifest["decisions"][-1]["action"] == "stop"
    assert manifest["final"] == {"best_cycle": 1, "reason": "budget spent in cycle 1 ("
                                 + BUDGET["error"] + ")"}
    ctl.tick()
    ctl.store.write_json("r1", "test.json", {"cycle": 1, "macro_f1": 0.6})
    assert ctl.tick() == "done"


def test_a_cycle_the_budget_refused_entirely_ends_at_the_best_so_far(setup: Any) -> None:
    ctl, sent, jobs = _into_cycle_one(setup)
    for job in jobs:
        ctl.store.write_json("r1", f"cycle=1/failed/generate-{job}.json", BUDGET)
    sent.clear()
    assert ctl.tick() == "running"
    manifest = load_manifest(ctl.store, "r1")
    assert manifest["final"]["best_cycle"] == 0 and "budget spent before cycle 1" in \
        manifest["final"]["reason"]
    assert sent == [], "no training of a cycle without data"
    ctl.tick()
    assert [s[0] for s in sent] == ["distillq.test"] and sent[0][1][1] == 0
    # every cycle is over, the refused one too: only the test is in flight
    assert ctl.redis.hkeys("dq:r1:inflight") == [b"test"]
    ctl.store.write_json("r1", "test.json", {"cycle": 0, "macro_f1": 0.5})
    assert ctl.tick() == "done"
    assert "budget spent" in load_manifest(ctl.store, "r1")["stop_reason"]


def test_other_failures_still_count_against_the_tolerance(setup: Any) -> None:
    ctl, sent, jobs = _into_cycle_one(setup)
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{jobs[0]}.json", BUDGET)
    # The record's error_type decides, not its text: this one is a failure.
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{jobs[1]}.json",
                         {"error_type": "TeacherPermanentError", "error": BUDGET["error"]})
    assert ctl.tick() == "failed"
    assert "1 of" in load_manifest(ctl.store, "r1")["stop_reason"]


def test_a_lost_spend_counter_is_restored_from_storage_before_a_cycle(
        setup: Any, redis_client: redis.Redis) -> None:
    from workers.teachers.accounting import read_spend

    ctl, sent, jobs = _into_cycle_one(setup, budget={"max_tokens": 10_000})
    _commit_jobs(ctl, 1, jobs)
    for job in jobs:
        ctl.store.write_json("r1", f"cycle=1/jobstats/{job}.json", {
            "tokens_in": 100, "tokens_out": 50, "cost": 0.25, "requests": 2})
    ctl.tick()
    _eval(ctl, 1, 0.6)
    ctl.tick()  # decide cycle 1: continue
    redis_client.flushall()  # the counter the workers check the budget against is gone
    ctl.tick()  # plan cycle 2
    assert ctl.store.read_json("r1", "cycle=2/plan.json") is not None
    got = read_spend(redis_client, "r1")
    n = len(jobs)
    assert got == {"tokens_in": 100 * n, "tokens_out": 50 * n, "tokens": 150 * n,
                   "cost": pytest.approx(0.25 * n), "requests": 2 * n}


def _start(redis_client: redis.Redis, sent: list[Any]) -> None:
    """What a worker does first with a job: mark its send started (workers.context)."""
    from workers.context import mark_started

    for _, args, task_id in sent:
        mark_started(redis_client, args[0], task_id)


def test_a_job_that_never_answers_is_failed_after_max_sends(
        setup: Any, redis_client: redis.Redis) -> None:
    ctl, sent, clock = setup()
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()
    n_jobs = len(sent) - 1
    for _ in range(3):
        _start(redis_client, sent)  # taken by a worker that then dies, say
        clock.now += 61
        ctl.tick()
    assert ctl.tick() == "failed"  # every generate job used its 3 sends
    assert len(sent) == 1 + 3 * n_jobs


def test_every_send_is_recorded_before_it_is_made(
        tmp_path: Path, redis_client: redis.Redis) -> None:
    """A controller killed mid-dispatch must not have made sends it did not record (a restart
    would make them again: a second paid copy of each job)."""
    spec = _spec(tmp_path, generation={"examples_per_cycle": 40, "examples_per_request": 1})
    store = ShardStore(spec.storage)
    create_run(spec, store)
    unrecorded: list[str] = []

    def send(task: str, args: list[Any], task_id: str) -> None:
        key = task_id.split(":", 1)[1].rsplit(":", 1)[0]
        if redis_client.hget("dq:r1:inflight", key) is None:
            unrecorded.append(key)

    ctl = Controller(store, redis_client, "r1", send, clock=Clock())
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()
    assert len(store.read_json("r1", "cycle=1/plan.json")["jobs"]) >= 10
    assert unrecorded == []


def test_a_tick_that_fails_the_run_sends_nothing(setup: Any, redis_client: redis.Redis) -> None:
    ctl, sent, clock = setup(generation={"tolerated_failure_fraction": 0.0})
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()
    _start(redis_client, sent)
    job = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"][0]
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{job}.json", {"error": "boom"})
    clock.now += 61  # the other jobs are past their deadline: they would be re-sent
    sent.clear()
    assert ctl.tick() == "failed"
    assert sent == []


def test_a_job_still_in_the_queue_is_not_re_sent_at_its_deadline(
        setup: Any, redis_client: redis.Redis) -> None:
    """A big cycle or a slow teacher keeps jobs queued past their deadline: re-sending them
    would only grow the queue, and counting those sends would fail the run. While no worker
    has started them and their queue holds messages, they are re-sent after
    loop.queue_deadline_s, and that does not count towards max_sends."""
    ctl, sent, clock = setup(loop={"queue_deadline_s": 1000})
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    sent.clear()
    ctl.tick()
    jobs = sorted(s[1][2] for s in sent)
    redis_client.rpush("generate", "a message waiting")  # the broker's queue is not empty
    _start(redis_client, sent[:1])  # one job is taken by a worker, the others wait
    clock.now += 61
    ctl.tick()
    assert [s[1][2] for s in sent[len(jobs):]] == [sent[0][1][2]], "only the started one"
    _commit_jobs(ctl, 1, [sent[0][1][2]])  # its second send delivers
    for _ in range(5):  # far more than max_sends (3) queue deadlines: never failed for it
        clock.now += 1001
        assert ctl.tick() == "running"
    waiting = jobs[1:]
    assert sorted(s[1][2] for s in sent if s[1][2] in waiting) == sorted(waiting * 6)
    entry = json.loads(redis_client.hget("dq:r1:inflight", f"c01/gen/{waiting[0]}"))
    assert entry["sends"] == 6 and entry["requeued"] == 5
    # Not started and nothing left in the queue: lost (say, reserved by a worker killed
    # before it began); its own deadline applies again, and counts.
    redis_client.delete("generate")
    before = len(sent)
    clock.now += 61
    ctl.tick()
    assert sorted(s[1][2] for s in sent[before:]) == sorted(waiting)
    entry = json.loads(redis_client.hget("dq:r1:inflight", f"c01/gen/{waiting[0]}"))
    assert entry["sends"] == 7 and entry["requeued"] == 5


def test_run_lock_is_exclusive_and_a_dead_local_holder_is_taken_over(redis_client: Any) -> None:
    import socket
    import subprocess
    import sys

    from orchestrator.driver import RunLock

    first, second = RunLock(redis_client, "lk"), RunLock(redis_client, "lk")
    assert first.acquire() and first.acquire(), "the holder refreshes its own lock"
    assert not second.acquire(), "a live holder (this process) keeps the lock"
    first.release()
    assert second.acquire()
    second.release()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    place = second.token.split(":")[0]  # host name, boot and PID namespace
    assert place.startswith(socket.gethostname())
    redis_client.set("dq:lk:lock", f"{place}:{dead}:abc", px=30_000)
    assert second.acquire(), "a holder whose process is gone is taken over at once"
    assert redis_client.get("dq:lk:lock").decode() == second.token
    redis_client.set("dq:lk:lock", f"elsewhere.example:{dead}:abc", px=30_000)
    assert not second.acquire(), "a holder on another host is trusted until its lock expires"
    other_ns = f"{socket.gethostname()}~{place.split('~')[1]}~1:{dead}:abc"
    redis_client.set("dq:lk:lock", other_ns, px=30_000)
    assert not second.acquire(), \
        "a holder with this host name in another PID namespace (a container) is trusted too"


def test_gains_below_min_delta_do_not_move_the_baseline(setup: Any) -> None:
    """0.50 → 0.505 → 0.509 with min_delta 0.01: neither later cycle counts as a gain, so the
    best stays cycle 0 at 0.50 — value and cycle agree — and patience 2 stops the run."""
    ctl, sent, clock = setup(loop={"patience": 2, "min_delta": 0.01, "max_cycles": 5})
    ctl.tick()
    for cycle, f1 in enumerate([0.50, 0.505, 0.509]):
        _eval(ctl, cycle, f1)
        ctl.tick()  # decide
        if cycle < 2:
            ctl.tick()  # plan the next cycle
            plan = ctl.store.read_json("r1", f"cycle={cycle + 1}/plan.json")
            _commit_jobs(ctl, cycle + 1, plan["jobs"])
            ctl.tick()  # send its training
    decisions = load_manifest(ctl.store, "r1")["decisions"]
    assert [(d["best_cycle"], d["best_value"]) for d in decisions] == [(0, 0.5)] * 3
    assert decisions[-1]["action"] == "stop" and "patience" in decisions[-1]["reason"]


def test_watch_shows_a_cycle_with_a_plan(setup: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.progress import Progress

    ctl, sent, clock = setup()
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()  # cycle 1 planned
    jobs = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]
    _commit_jobs(ctl, 1, jobs[:1])
    with Progress(ctl.store, "r1") as progress:
        progress.refresh()
    out = capsys.readouterr().err  # progress goes to stderr
    assert f"cycle 1: generate (1/{len(jobs)} jobs generated)" in out


def test_resume_sends_the_failed_jobs_of_a_failed_run_again(
    setup: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from orchestrator.commands import cmd_resume
    from orchestrator.errors import InvalidInputError

    ctl, sent, clock, job = _failed_in_cycle_one(setup)
    ctl.redis.set("dq:r1:resends", 2)

    monkeypatch.setenv("REDIS_URL", redis_url)
    args = argparse.Namespace(storage=ctl.store.uri, run_id="r1")
    assert cmd_resume(args) == 0
    # sends counted before the failure start again from zero
    assert not ctl.redis.exists("dq:r1:inflight", "dq:r1:started", "dq:r1:resends")
    assert ctl.store.list_names("r1", "cycle=1/failed") == []
    (kept,) = ctl.store.list_names("r1", "cycle=1/failed-before-resume")
    assert kept.startswith(f"generate-{job}.")
    sent.clear()
    again = Controller(ctl.store, ctl.redis, "r1", lambda *a: sent.append(a), clock=clock)
    assert again.tick() == "running"
    assert [s[1][2] for s in sent if s[0] == "distillq.generate"].count(job) == 1

    ctl.store.write_json("r1", "manifest.json",
                         {**load_manifest(ctl.store, "r1"), "status": "done"})
    with pytest.raises(InvalidInputError, match="is done: there is nothing to resume"):
        cmd_resume(args)


def test_submit_to_an_unreachable_redis_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from orchestrator.cli import main

    spec = _spec(tmp_path)
    path = tmp_path / "spec.yaml"
    data = spec.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:1/0")
    assert main(["submit", str(path)]) == 3
    err = capsys.readouterr().err
    assert "cannot reach Redis at 127.0.0.1:1/0" in err and "secret" not in err
    assert not (tmp_path / "store").exists() or ShardStore(spec.storage).list_runs() == []
    monkeypatch.setenv("REDIS_URL", "http://127.0.0.1:1")
    assert main(["submit", str(path)]) == 2
    assert "REDIS_URL is not a Redis URL" in capsys.readouterr().err


def _run_with_broken_spec(tmp_path: Path) -> ShardStore:
    """Run r1, whose manifest's spec no longer validates (a negative learning rate)."""
    spec = _spec(tmp_path)
    store = ShardStore(spec.storage)
    create_run(spec, store)
    manifest = load_manifest(store, "r1")
    manifest["spec"]["student"]["lr"] = -1
    store.write_json("r1", "manifest.json", manifest)
    return store


def test_serve_fails_and_unregisters_a_run_that_cannot_be_driven(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """A permanent error in a tick (here: a manifest whose spec no longer validates) fails
    the run and frees its slot, instead of a traceback every poll for ever."""
    from orchestrator.driver import RUNS_KEY, _serve_one
    from workers.app import app

    store = _run_with_broken_spec(tmp_path)
    redis_client.hset(RUNS_KEY, "r1", store.uri)
    known = {"r1": store.uri}
    _serve_one(redis_client, "r1", store.uri, app, {}, {}, known)
    assert redis_client.hget(RUNS_KEY, "r1") is None and known == {}
    after = load_manifest(store, "r1")
    assert after["status"] == "failed" and "lr" in after["stop_reason"]


def test_serve_unregisters_a_broken_run_even_when_its_manifest_cannot_say_so(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest write that would mark the run failed fails too (a read-only mount): the
    manifest still says running, which must not pass for a resume and register it again."""
    from orchestrator.driver import RUNS_KEY, _serve_one
    from storage.errors import StorageError
    from workers.app import app

    store = _run_with_broken_spec(tmp_path)

    def read_only(self: ShardStore, run_id: str, relpath: str, obj: Any) -> None:
        raise StorageError(f"{relpath}: read-only file system")

    monkeypatch.setattr(ShardStore, "write_json", read_only)
    redis_client.hset(RUNS_KEY, "r1", store.uri)
    known = {"r1": store.uri}
    _serve_one(redis_client, "r1", store.uri, app, {}, {}, known)
    assert redis_client.hget(RUNS_KEY, "r1") is None and known == {}
    assert load_manifest(store, "r1")["status"] == "running", "as the mount left it"


def test_serve_keeps_a_run_that_resume_reopened_while_its_last_tick_ended_it(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """A tick reads the run as failed; before serve unregisters it, `resume` writes the
    manifest back to running and registers the run. serve must leave it registered, or
    nobody drives the resumed run."""
    from orchestrator.driver import RUNS_KEY, RunLock, _serve_one
    from workers.app import app

    spec = _spec(tmp_path)
    store = ShardStore(spec.storage)
    create_run(spec, store)

    class EndedAsResumed:  # the tick's verdict predates the resume below
        store = ShardStore(spec.storage)

        def tick(self) -> str:
            manifest = load_manifest(store, "r1")
            manifest["status"] = "running"  # what `resume` writes, then it registers
            store.write_json("r1", "manifest.json", manifest)
            redis_client.hset(RUNS_KEY, "r1", store.uri)
            return "failed"

    known = {"r1": store.uri}
    controllers: dict[str, Any] = {"r1": EndedAsResumed()}
    locks = {"r1": RunLock(redis_client, "r1", store=store)}
    _serve_one(redis_client, "r1", store.uri, app, locks, controllers, known)
    assert redis_client.hget(RUNS_KEY, "r1") == store.uri.encode()
    assert known == {"r1": store.uri} and controllers == {}


def test_controller_mark_keeps_out_controllers_of_other_redis_servers_only(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    from orchestrator.heartbeat import HEARTBEAT_FILE, Heartbeat

    store, clock = ShardStore(str(tmp_path / "store")), Clock()
    server = redis_client.info("server")["run_id"]
    mine = Heartbeat(store, redis_client, "r1", "me", ttl_ms=30_000, clock=clock,
                     monotonic=clock)

    def mark(token: str, redis_id: str, age: float) -> None:
        store.write_json("r1", HEARTBEAT_FILE, {"token": token, "redis": redis_id,
                                                "at": clock.now - age})
        clock.now += 11  # past this holder's next look

    assert mine.clear(), "no mark yet"
    assert store.read_json("r1", HEARTBEAT_FILE) == {"token": "me", "redis": server,
                                                     "at": clock.now}
    mark("serve", "another-redis", age=5)
    assert not mine.clear() and mine.rival is not None, "a live controller elsewhere"
    assert store.read_json("r1", HEARTBEAT_FILE)["token"] == "serve", "its mark is kept"
    clock.now += 29
    assert not mine.clear(), "unchanged for less than a TTL since this holder first read it"
    clock.now += 1
    assert mine.clear(), "unchanged for a TTL: that controller stopped"
    mark("dead-holder", server, age=1)
    assert mine.clear(), "the same Redis: the lock decides (a dead holder taken over)"
    mark("me", "before-redis-restarted", age=1)
    assert mine.clear(), "its own mark, written through a Redis that restarted since"
    mine.stop()
    assert store.read_json("r1", HEARTBEAT_FILE) is None, "a clean stop removes its mark"
    mark("serve", "another-redis", age=1)
    mine.stop()
    assert store.read_json("r1", HEARTBEAT_FILE) is not None, "never another's mark"


def test_a_mark_is_judged_by_the_writers_clock_only_at_first_sight(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """A dead writer whose clock ran an hour ahead must not keep the run for an hour, and a
    live one whose clock is behind is live while its mark keeps changing."""
    from orchestrator.heartbeat import HEARTBEAT_FILE, Heartbeat

    store, clock = ShardStore(str(tmp_path / "store")), Clock()

    def fresh() -> Heartbeat:  # a controller that has not looked yet
        return Heartbeat(store, redis_client, "r1", "me", ttl_ms=30_000, clock=clock,
                         monotonic=clock)

    def mark(at: float) -> None:
        store.write_json("r1", HEARTBEAT_FILE, {"token": "serve", "redis": "other", "at": at})

    mark(clock.now + 3600)
    assert fresh().clear(), "dated an hour ahead: not taken for live"
    mark(clock.now - 31)
    assert fresh().clear(), "more than a TTL old by its writer's clock"
    mark(clock.now - 25)  # the writer's clock 25 s behind: it looks nearly stale
    behind = fresh()
    assert not behind.clear()
    for _ in range(4):  # the writer renews it every 10 s (by its clock, still 25 s behind)
        clock.now += 10
        mark(clock.now - 25)
        assert not behind.clear(), "changed since the last look: live"
    clock.now += 30
    assert behind.clear(), "then unchanged for a TTL: gone"


def test_a_controller_overwritten_by_a_live_rival_stops_and_a_corrupt_mark_is_replaced(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    from orchestrator.heartbeat import HEARTBEAT_FILE, Heartbeat

    store, clock = ShardStore(str(tmp_path / "store")), Clock()
    mine = Heartbeat(store, redis_client, "r1", "me", ttl_ms=30_000, clock=clock,
                     monotonic=clock)
    assert mine.clear()
    # a controller on another Redis read no mark at the same moment and wrote its own after
    store.write_json("r1", HEARTBEAT_FILE, {"token": "twin", "redis": "other", "at": clock.now})
    clock.now += 10
    mine.beat()  # the lock keeper's next renewal looks first
    assert mine.rival is not None and mine.rival["token"] == "twin"
    assert not mine.clear(), "the last writer drives"
    assert store.read_json("r1", HEARTBEAT_FILE)["token"] == "twin"

    (tmp_path / "store" / "r1" / HEARTBEAT_FILE).write_text("{not json")
    clock.now += 1
    assert mine.clear(), "a corrupt mark keeps nobody out"
    assert store.read_json("r1", HEARTBEAT_FILE)["token"] == "me", "and is replaced"


def test_a_redis_without_an_id_counts_as_another_redis(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.heartbeat import HEARTBEAT_FILE, Heartbeat

    store, clock = ShardStore(str(tmp_path / "store")), Clock()
    mine = Heartbeat(store, redis_client, "r1", "me", ttl_ms=30_000, clock=clock,
                     monotonic=clock)
    monkeypatch.setattr(mine, "_redis_id", lambda: "")
    store.write_json("r1", HEARTBEAT_FILE, {"token": "proxy-user", "redis": "", "at": clock.now})
    assert not mine.clear()


def test_the_lock_keeper_renews_the_mark_during_a_long_tick(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """The mark is written from the thread that refreshes the lock, not only between ticks: a
    tick longer than the TTL (planning a huge cycle) must not let a rival in."""
    import time

    from orchestrator.driver import LockKeeper, RunLock
    from orchestrator.heartbeat import HEARTBEAT_FILE

    store = ShardStore(str(tmp_path / "store"))
    lock = RunLock(redis_client, "r1", ttl_ms=300, store=store)
    assert lock.acquire()
    first = store.read_json("r1", HEARTBEAT_FILE)["at"]
    with LockKeeper({"r1": lock}, ttl_ms=300):
        deadline = time.monotonic() + 10
        while store.read_json("r1", HEARTBEAT_FILE)["at"] == first:  # no tick meanwhile
            assert time.monotonic() < deadline, "the mark was never renewed"
            time.sleep(0.05)
    lock.release()
    assert store.read_json("r1", HEARTBEAT_FILE) is None


def test_drive_waits_while_a_controller_on_another_redis_drives_the_run(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedded `resume` (its own Redis) of a run that `serve` drives sends nothing until
    serve's mark in storage is older than the lock's TTL."""
    import time

    from orchestrator import driver
    from orchestrator.heartbeat import HEARTBEAT_FILE
    from workers.app import app

    spec = _spec(tmp_path)
    store = ShardStore(spec.storage)
    create_run(spec, store)
    sent: list[Any] = []
    monkeypatch.setattr(driver, "celery_sender", lambda app: lambda *a: sent.append(a))
    calls = iter(range(3))

    def stop_after_two() -> bool:
        return next(calls, 2) >= 2

    serve_mark = {"token": "serve", "redis": "another-redis", "at": time.time()}
    store.write_json("r1", HEARTBEAT_FILE, serve_mark)
    assert driver.drive(store, redis_client, "r1", app, poll_s=0.01,
                        should_stop=stop_after_two) == "running"
    assert sent == [] and store.read_json("r1", HEARTBEAT_FILE) == serve_mark
    assert redis_client.get("dq:r1:lock") is None, "the lock is released on the way out"

    store.write_json("r1", HEARTBEAT_FILE, serve_mark | {"at": time.time() - 31})
    calls = iter(range(3))
    driver.drive(store, redis_client, "r1", app, poll_s=0.01, should_stop=stop_after_two)
    assert sent, "the other controller's mark went stale: this one drives the run"
    assert store.read_json("r1", HEARTBEAT_FILE) is None, "and removes its own mark after"


def test_the_report_of_a_failed_run_counts_the_cycle_it_stopped_in(setup: Any) -> None:
    from orchestrator.report import write_report

    ctl, sent, clock, job = _failed_in_cycle_one(setup)
    text = Path(write_report(ctl.store, "r1")).read_text()
    spend = text.split("## Teacher spend per cycle")[1]
    assert "| 1 | 0 | 0 | 0 | 0 | 0.0000 | 1 generate, 0 attribute |" in spend
    assert "fails the run beyond it" in spend


def test_the_report_plots_the_kept_cycle_not_the_last_one() -> None:
    from orchestrator.report import best_eval

    evals = [{"cycle": c} for c in range(3)]
    decided = [{"cycle": 0, "best_cycle": 0}, {"cycle": 1, "best_cycle": 1},
               {"cycle": 2, "best_cycle": 1}]
    assert best_eval({"decisions": decided}, evals)["cycle"] == 1, "stopped early: best so far"
    assert best_eval({"decisions": decided, "final": {"best_cycle": 0}}, evals)["cycle"] == 0
    assert best_eval({"decisions": []}, evals)["cycle"] == 2


def test_a_lock_keeper_holds_locks_through_a_long_tick(redis_client: redis.Redis) -> None:
    import time

    from orchestrator.driver import LockKeeper, RunLock

    mine = RunLock(redis_client, "long", ttl_ms=1500)
    assert mine.acquire()
    with LockKeeper({"long": mine}, ttl_ms=1500):
        time.sleep(4.0)  # a tick well over two TTLs long
        assert not RunLock(redis_client, "long", ttl_ms=1500).acquire(), "still held"
    time.sleep(1.7)  # no keeper: the lock runs out
    assert RunLock(redis_client, "long", ttl_ms=1500).acquire()
    assert not mine.refresh(), "refresh never takes back a lock another holder has"


@pytest.mark.parametrize("kind", ["train", "test"])
def test_a_run_level_job_a_worker_gave_up_on_fails_the_run_at_once(
    setup: Any, kind: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not after the job's deadline (6 h for training): the worker's failure record ends the
    run on the next tick, and `resume` sends the job again."""
    import argparse

    from orchestrator.commands import cmd_resume

    ctl, sent, clock = setup(loop={"max_cycles": 0})
    ctl.tick()  # cycle 0's train sent
    cycle = 0
    if kind == "test":
        _eval(ctl, 0, 0.5)
        ctl.tick()  # decide: stop (max_cycles 0)
        ctl.tick()  # test sent
    assert sent[-1][0] == f"distillq.{kind}"
    ctl.store.write_json("r1", f"cycle={cycle}/failed/{kind}-{kind}.json",
                         {"kind": kind, "job_id": kind, "error": "RuntimeError: boom"})
    assert ctl.tick() == "failed"
    reason = load_manifest(ctl.store, "r1")["stop_reason"]
    assert reason == f"{kind} of cycle 0 failed: RuntimeError: boom"

    monkeypatch.setenv("REDIS_URL", redis_url)
    assert cmd_resume(argparse.Namespace(storage=ctl.store.uri, run_id="r1")) == 0
    sent.clear()
    again = Controller(ctl.store, ctl.redis, "r1", lambda *a: sent.append(a), clock=clock)
    assert again.tick() == "running" and [s[0] for s in sent] == [f"distillq.{kind}"]


def test_a_decided_cycle_leaves_the_in_flight_and_started_tables(
        setup: Any, redis_client: redis.Redis) -> None:
    """The tables read each tick hold the current cycle's jobs; the re-sends of decided
    cycles are kept as a count (the ``distillq_job_resends`` metric counts the whole run)."""
    from orchestrator.controller import INFLIGHT, RESENDS, key_cycle
    from workers.context import STARTED_KEY

    ctl, sent, clock = setup(loop={"max_cycles": 3, "patience": 3})
    ctl.tick()
    _start(redis_client, sent)
    _eval(ctl, 0, 0.5)
    ctl.tick()
    sent.clear()
    ctl.tick()
    jobs = sorted(s[1][2] for s in sent)
    _start(redis_client, sent)
    clock.now += 61  # every generate job past its deadline, started, nothing committed
    ctl.tick()
    _commit_jobs(ctl, 1, jobs)
    ctl.tick()  # cycle 1's training goes out
    inflight = {k.decode() for k in redis_client.hkeys(INFLIGHT.format(run_id="r1"))}
    assert {key_cycle(k) for k in inflight} == {1} and "c01/train" in inflight  # c00 gone
    assert redis_client.hlen(STARTED_KEY.format(run_id="r1")) == len(jobs)
    _eval(ctl, 1, 0.6)
    ctl.tick()  # decides cycle 1
    sent.clear()
    ctl.tick()  # into cycle 2: plans it and sends its jobs
    assert sent and {s[1][1] for s in sent} == {2}
    inflight = {k.decode() for k in redis_client.hkeys(INFLIGHT.format(run_id="r1"))}
    assert inflight and {key_cycle(k) for k in inflight} == {2}
    assert redis_client.hlen(STARTED_KEY.format(run_id="r1")) == 0
    assert int(redis_client.get(RESENDS.format(run_id="r1"))) == len(jobs)



def test_dropping_a_decided_cycle_twice_counts_its_resends_once(
        setup: Any, redis_client: redis.Redis) -> None:
    """Two controllers (or a retried EXEC) dropping the same snapshot: the re-sends are
    counted by the entries actually removed, once."""
    from orchestrator.controller import INFLIGHT, RESENDS

    ctl, _, _ = setup()
    table = INFLIGHT.format(run_id="r1")
    redis_client.hset(table, mapping={
        "c00/train": json.dumps({"sent_at": 1.0, "sends": 3}),
        "c01/gen/c01-0000": json.dumps({"sent_at": 1.0, "sends": 2}),
        "c02/gen/c02-0000": json.dumps({"sent_at": 1.0, "sends": 4}),
        "teacher": json.dumps({"sent_at": 1.0, "sends": 2})})
    redis_client.hset("dq:r1:started", mapping={"r1:c01/gen/c01-0000": 1, "r1:c02/train": 1})
    first = Controller(ctl.store, redis_client, "r1", lambda *a: None)
    second = Controller(ctl.store, redis_client, "r1", lambda *a: None)
    first._load_inflight()
    second._load_inflight()  # the same snapshot
    first._forget_before(2)
    second._forget_before(2)
    assert int(redis_client.get(RESENDS.format(run_id="r1"))) == 2 + 1
    assert {k.decode() for k in redis_client.hkeys(table)} == {"c02/gen/c02-0000", "teacher"}
    assert redis_client.hkeys("dq:r1:started") == [b"r1:c02/train"]
    assert set(second._inflight) == {"c02/gen/c02-0000", "teacher"}


def test_a_late_duplicate_marked_started_after_its_cycle_was_dropped_goes_too(
        setup: Any, redis_client: redis.Redis) -> None:
    ctl, sent, clock = setup()
    ctl.tick()
    _eval(ctl, 0, 0.5)
    ctl.tick()
    sent.clear()
    ctl.tick()  # cycle 1's jobs go out; cycle 0's entries are dropped
    _start(redis_client, [("distillq.train", ["r1", 0, ""], "r1:c00/train:2")])
    clock.now += 61  # past the deadlines: the started table is read
    ctl.tick()
    assert redis_client.hkeys("dq:r1:started") == []


def test_key_cycle() -> None:
    from orchestrator.controller import key_cycle

    assert key_cycle("c01/gen/c01-0003") == 1 and key_cycle("c12/train") == 12
    assert key_cycle("c100/attr/c100-0000") == 100
    assert key_cycle("test") is None and key_cycle("teacher") is None
    assert key_cycle("cx/train") is None and key_cycle("c/train") is None
