"""The controller (orchestrator/controller.py) against a real Redis and real storage: the tick,
planning, sends and their deadlines, stop decisions; workers are played by the test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from controller_kit import (
    Clock,
    Sent,
    commit_jobs,
    failed_in_cycle_one,
    make_spec,
    mark_sends_started,
    plan_cycle_one,
    with_unlabelled,
    write_eval,
)

from distillq import paths
from distillq.plans import read_job
from orchestrator.controller import Controller
from orchestrator.runs import create_run, load_manifest
from storage.schemas import SCORES
from storage.store import ShardStore


def test_cycle_zero_trains_on_the_seed_and_resends_after_deadline(setup: Any) -> None:
    ctl, sent, clock = setup()
    assert ctl.tick() == "running"
    assert [s.task for s in sent] == ["distillq.train"]
    assert sent[0].task_id == "r1:c00/train:1"
    ctl.tick()
    assert len(sent) == 1, "in flight and not past its deadline: not sent again"
    clock.now += 6 * 3600 + 1
    ctl.tick()
    assert [s.task_id for s in sent] == ["r1:c00/train:1", "r1:c00/train:2"]


def test_full_loop_plans_generates_trains_and_stops_on_patience(setup: Any) -> None:
    ctl, sent, clock = setup()
    ctl.tick()
    write_eval(ctl, 0, 0.5)
    ctl.tick()  # decide cycle 0: continue
    assert load_manifest(ctl.store, "r1").to_json()["decisions"][0]["action"] == "continue"
    sent.clear()
    ctl.tick()  # plan cycle 1 and send its generate jobs
    plan = ctl.store.read_json("r1", "cycle=1/plan.json")
    job_ids = plan["jobs"]
    assert plan["examples"] == 12
    assert sum(read_job(ctl.store, "r1", 1, j)["n_examples"] for j in job_ids) == 12
    assert sorted(s.job for s in sent) == sorted(job_ids)
    assert all(s.task == "distillq.generate" for s in sent)
    sent.clear()
    commit_jobs(ctl, 1, job_ids[:-1])
    ctl.tick()
    assert sent == [], "train waits for the last shard"
    commit_jobs(ctl, 1, job_ids[-1:])
    ctl.tick()
    assert [s.task for s in sent] == ["distillq.train"] and sent[0].cycle == 1
    write_eval(ctl, 1, 0.4)  # worse: patience 1 is used up
    ctl.tick()
    manifest = load_manifest(ctl.store, "r1").to_json()
    assert manifest["decisions"][-1]["action"] == "stop"
    assert manifest["final"]["best_cycle"] == 0
    sent.clear()
    ctl.tick()
    assert [s.task for s in sent] == ["distillq.test"] and sent[0].cycle == 0
    assert ctl.tick() == "running"
    ctl.store.write_json("r1", "test.json", {"cycle": 0, "macro_f1": 0.5})
    assert ctl.tick() == "done"


@pytest.mark.parametrize("settle", ["commit", "fail"])
def test_with_shared_examples_a_cycles_first_job_warms_the_prompt_cache(
        setup: Any, settle: str) -> None:
    """The first generate job of a cycle goes alone; the others once it is committed (or
    failed), so they find the prompt's shared part in the provider's cache."""
    ctl, sent, _ = setup(generation={"shared_examples": True,
                                     "tolerated_failure_fraction": 0.5})
    plan_cycle_one(ctl)
    jobs = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]
    assert len(jobs) > 1 and [s.job for s in sent if s.task == "distillq.generate"] == \
        jobs[:1]
    sent.clear()
    ctl.tick()
    assert sent == [], "the rest wait for the first"
    if settle == "commit":
        commit_jobs(ctl, 1, jobs[:1])
    else:
        ctl.store.write_json("r1", f"cycle=1/failed/generate-{jobs[0]}.json",
                             {"error": "boom"})
    ctl.tick()
    assert sorted(s.job for s in sent) == sorted(jobs[1:])


def test_a_slow_first_job_holds_the_others_back_one_deadline_at_most(setup: Any) -> None:
    ctl, sent, clock = setup(generation={"shared_examples": True})
    plan_cycle_one(ctl)
    jobs = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]
    sent.clear()
    clock.now += 59
    ctl.tick()
    assert sent == []
    clock.now += 2  # past generate_deadline_s (60) since the first went: the rest go too
    ctl.tick()
    assert sorted(s.job for s in sent) == sorted(jobs), "the first re-sent, the rest sent"


def test_an_unguided_cycle_has_nothing_to_warm(setup: Any) -> None:
    ctl, sent, _ = setup(generation={"shared_examples": True, "mode": "unguided"})
    plan_cycle_one(ctl)
    jobs = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]
    assert sorted(s.job for s in sent if s.task == "distillq.generate") == sorted(jobs)


def test_replanning_is_deterministic_after_a_restart(setup: Any, redis_client: Any) -> None:
    ctl, sent, clock = setup()
    plan_cycle_one(ctl)
    first = ctl.store.read_json("r1", "cycle=1/plan.json")
    redis_client.flushall()  # a lost Redis: everything uncommitted is sent again, same ids
    sent.clear()
    again = Controller(ctl.store, redis_client, "r1", lambda *a: sent.append(Sent(*a)), clock=clock)
    again.tick()
    assert ctl.store.read_json("r1", "cycle=1/plan.json") == first
    assert sorted(s.job for s in sent) == sorted(first["jobs"])


def test_max_cycles_and_cancel(setup: Any) -> None:
    ctl, sent, clock = setup(loop={"max_cycles": 0})
    ctl.tick()
    write_eval(ctl, 0, 0.5)
    ctl.tick()
    assert load_manifest(ctl.store, "r1").to_json()["final"]["reason"].startswith("max_cycles=0")
    ctl.store.write_json("r1", "cancel.json", {"at": clock.now + 1})
    assert ctl.tick() == "cancelled"
    assert ctl.tick() == "cancelled"


def test_permanent_generation_failures_over_tolerance_fail_the_run(setup: Any) -> None:
    ctl, sent, clock, job = failed_in_cycle_one(setup)
    assert "failed permanently" in load_manifest(ctl.store, "r1").to_json()["stop_reason"]


BUDGET = {"error_type": "BudgetExceededError",
          "error": "BudgetExceededError: run r1: cost budget spent (1.0000 of 1.0)"}


def _into_cycle_one(setup: Any, **over: Any) -> tuple[Controller, list[Any], list[str]]:
    ctl, sent, _ = setup(generation={"tolerated_failure_fraction": 0.0}, **over)
    plan_cycle_one(ctl)
    return ctl, sent, ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]


def test_a_budget_refusal_stops_the_loop_it_does_not_fail_the_run(setup: Any) -> None:
    """Jobs the budget refused are not failures (none tolerated here): the cycle trains on
    what was generated before the cap, then the loop stops for the budget."""
    ctl, sent, jobs = _into_cycle_one(setup, budget={"max_cost": 1.0})
    commit_jobs(ctl, 1, jobs[:1])
    assert len(jobs) >= 3
    for job in jobs[1:-1]:
        ctl.store.write_json("r1", f"cycle=1/failed/generate-{job}.json", BUDGET)
    # a record written before failure records had error_type: its text names the class
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{jobs[-1]}.json",
                         {"error": BUDGET["error"]})
    sent.clear()
    assert ctl.tick() == "running"
    assert [s.task for s in sent] == ["distillq.train"], "what was paid for is trained on"
    write_eval(ctl, 1, 0.6)
    ctl.tick()
    manifest = load_manifest(ctl.store, "r1").to_json()
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
    manifest = load_manifest(ctl.store, "r1").to_json()
    assert manifest["final"]["best_cycle"] == 0 and "budget spent before cycle 1" in \
        manifest["final"]["reason"]
    assert sent == [], "no training of a cycle without data"
    ctl.tick()
    assert [s.task for s in sent] == ["distillq.test"] and sent[0].cycle == 0
    # every cycle is over, the refused one too: only the test is in flight
    assert ctl.redis.hkeys("dq:r1:inflight") == [b"test"]
    ctl.store.write_json("r1", "test.json", {"cycle": 0, "macro_f1": 0.5})
    assert ctl.tick() == "done"
    assert "budget spent" in load_manifest(ctl.store, "r1").to_json()["stop_reason"]


def test_other_failures_still_count_against_the_tolerance(setup: Any) -> None:
    ctl, sent, jobs = _into_cycle_one(setup)
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{jobs[0]}.json", BUDGET)
    # The record's error_type decides, not its text: this one is a failure.
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{jobs[1]}.json",
                         {"error_type": "TeacherPermanentError", "error": BUDGET["error"]})
    assert ctl.tick() == "failed"
    assert "1 of" in load_manifest(ctl.store, "r1").to_json()["stop_reason"]


def test_a_lost_spend_counter_is_restored_from_storage_before_a_cycle(
        setup: Any, redis_client: redis.Redis) -> None:
    from workers.teachers.accounting import read_spend

    ctl, sent, jobs = _into_cycle_one(setup, budget={"max_tokens": 10_000})
    commit_jobs(ctl, 1, jobs)
    for job in jobs:
        ctl.store.write_json("r1", f"cycle=1/jobstats/{job}.json", {
            "tokens_in": 100, "tokens_out": 50, "cost": 0.25, "requests": 2})
    ctl.tick()
    write_eval(ctl, 1, 0.6)
    ctl.tick()  # decide cycle 1: continue
    redis_client.flushall()  # the counter the workers check the budget against is gone
    ctl.tick()  # plan cycle 2
    assert ctl.store.read_json("r1", "cycle=2/plan.json") is not None
    got = read_spend(redis_client, "r1")
    n = len(jobs)
    assert got == {"tokens_in": 100 * n, "tokens_out": 50 * n, "tokens": 150 * n,
                   "cost": pytest.approx(0.25 * n), "requests": 2 * n}


def test_a_controller_restarted_mid_cycle_restores_the_spend_of_that_cycle_too(
        setup: Any, redis_client: redis.Redis) -> None:
    """`resume` on a fresh embedded Redis, or a restart after Redis lost its data, in the
    middle of a cycle: the budget counts what the cycle's committed jobs and failed attempts
    paid before the rest of its jobs go out, not only the cycles before it."""
    from workers.teachers.accounting import read_spend, record_spend

    ctl, sent, jobs = _into_cycle_one(setup, budget={"max_tokens": 10_000})
    commit_jobs(ctl, 1, jobs[:1])
    ctl.store.write_json("r1", f"cycle=1/jobstats/{jobs[0]}.json", {
        "tokens_in": 100, "tokens_out": 50, "cost": 0.25, "requests": 2})
    ctl.store.write_json("r1", paths.failed_attempt(1, jobs[1], "t0"), {
        "tokens_in": 10, "tokens_out": 5, "cost": 0.05, "requests": 1})
    redis_client.flushall()
    restarted = Controller(ctl.store, redis_client, "r1", lambda *a: None, clock=Clock())
    restarted.tick()
    paid = {"tokens_in": 110, "tokens_out": 55, "tokens": 165, "cost": pytest.approx(0.3),
            "requests": 3}
    assert read_spend(redis_client, "r1") == paid
    redis_client.flushall()  # lost again, under the same controller, mid-cycle, and a worker
    record_spend(redis_client, "r1", 20, 10, 0.1)  # adds an answer before the controller ticks
    restarted.tick()
    assert read_spend(redis_client, "r1") == paid


def test_a_job_that_never_answers_is_failed_after_max_sends(
        setup: Any, redis_client: redis.Redis) -> None:
    ctl, sent, clock = setup()
    plan_cycle_one(ctl)
    n_jobs = len(sent) - 1
    for _ in range(3):
        # taken by a worker that then dies, say
        mark_sends_started(redis_client, sent, at=clock.now)
        clock.now += 61
        ctl.tick()
    assert ctl.tick() == "failed"  # every generate job used its 3 sends
    assert len(sent) == 1 + 3 * n_jobs


def test_every_send_is_recorded_before_it_is_made(
        tmp_path: Path, redis_client: redis.Redis) -> None:
    """A controller killed mid-dispatch must not have made sends it did not record (a restart
    would make them again: a second paid copy of each job)."""
    spec = make_spec(tmp_path, generation={"examples_per_cycle": 40, "examples_per_request": 1})
    store = ShardStore(spec.storage)
    create_run(spec, store)
    unrecorded: list[str] = []

    def send(task: str, args: list[Any], task_id: str) -> None:
        key = task_id.split(":", 1)[1].rsplit(":", 1)[0]
        if redis_client.hget("dq:r1:inflight", key) is None:
            unrecorded.append(key)

    ctl = Controller(store, redis_client, "r1", send, clock=Clock())
    plan_cycle_one(ctl)
    assert len(store.read_json("r1", "cycle=1/plan.json")["jobs"]) >= 10
    assert unrecorded == []


def test_a_tick_that_fails_the_run_sends_nothing(setup: Any, redis_client: redis.Redis) -> None:
    ctl, sent, clock = setup(generation={"tolerated_failure_fraction": 0.0})
    plan_cycle_one(ctl)
    mark_sends_started(redis_client, sent, at=clock.now)
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
    write_eval(ctl, 0, 0.5)
    ctl.tick()
    sent.clear()
    ctl.tick()
    jobs = sorted(s.job for s in sent)
    redis_client.rpush("generate", "a message waiting")  # the broker's queue is not empty
    # one job is taken by a worker, the others wait
    mark_sends_started(redis_client, sent[:1], at=clock.now)
    clock.now += 61
    ctl.tick()
    assert [s.job for s in sent[len(jobs):]] == [sent[0].job], "only the started one"
    commit_jobs(ctl, 1, [sent[0].job])  # its second send delivers
    for _ in range(5):  # far more than max_sends (3) queue deadlines: never failed for it
        clock.now += 1001
        assert ctl.tick() == "running"
    waiting = jobs[1:]
    assert sorted(s.job for s in sent if s.job in waiting) == sorted(waiting * 6)
    entry = json.loads(redis_client.hget("dq:r1:inflight", f"c01/gen/{waiting[0]}"))
    assert entry["sends"] == 6 and entry["requeued"] == 5
    # Not started and nothing left in the queue: lost (say, reserved by a worker killed
    # before it began); its own deadline applies again, and counts.
    redis_client.delete("generate")
    before = len(sent)
    clock.now += 61
    ctl.tick()
    assert sorted(s.job for s in sent[before:]) == sorted(waiting)
    entry = json.loads(redis_client.hget("dq:r1:inflight", f"c01/gen/{waiting[0]}"))
    assert entry["sends"] == 7 and entry["requeued"] == 5


def test_gains_below_min_delta_do_not_move_the_baseline(setup: Any) -> None:
    """0.50 → 0.505 → 0.509 with min_delta 0.01: neither later cycle counts as a gain, so the
    best stays cycle 0 at 0.50 — value and cycle agree — and patience 2 stops the run."""
    ctl, sent, clock = setup(loop={"patience": 2, "min_delta": 0.01, "max_cycles": 5})
    ctl.tick()
    for cycle, f1 in enumerate([0.50, 0.505, 0.509]):
        write_eval(ctl, cycle, f1)
        ctl.tick()  # decide
        if cycle < 2:
            ctl.tick()  # plan the next cycle
            plan = ctl.store.read_json("r1", f"cycle={cycle + 1}/plan.json")
            commit_jobs(ctl, cycle + 1, plan["jobs"])
            ctl.tick()  # send its training
    decisions = load_manifest(ctl.store, "r1").to_json()["decisions"]
    assert [(d["best_cycle"], d["best_value"]) for d in decisions] == [(0, 0.5)] * 3
    assert decisions[-1]["action"] == "stop" and "patience" in decisions[-1]["reason"]


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
        write_eval(ctl, 0, 0.5)
        ctl.tick()  # decide: stop (max_cycles 0)
        ctl.tick()  # test sent
    assert sent[-1].task == f"distillq.{kind}"
    ctl.store.write_json("r1", f"cycle={cycle}/failed/{kind}-{kind}.json",
                         {"kind": kind, "job_id": kind, "error": "RuntimeError: boom"})
    assert ctl.tick() == "failed"
    reason = load_manifest(ctl.store, "r1").to_json()["stop_reason"]
    assert reason == f"{kind} of cycle 0 failed: RuntimeError: boom"

    monkeypatch.setenv("REDIS_URL", redis_url)
    assert cmd_resume(argparse.Namespace(storage=ctl.store.uri, run_id="r1")) == 0
    sent.clear()
    again = Controller(ctl.store, ctl.redis, "r1", lambda *a: sent.append(Sent(*a)), clock=clock)
    assert again.tick() == "running" and [s.task for s in sent] == [f"distillq.{kind}"]


def test_a_decided_cycle_leaves_the_in_flight_and_started_tables(
        setup: Any, redis_client: redis.Redis) -> None:
    """The tables read each tick hold the current cycle's jobs; the re-sends of decided
    cycles are kept as a count (the ``distillq_job_resends`` metric counts the whole run)."""
    from distillq.jobs import key_cycle
    from distillq.keys import INFLIGHT, RESENDS, STARTED_KEY

    ctl, sent, clock = setup(loop={"max_cycles": 3, "patience": 3})
    ctl.tick()
    mark_sends_started(redis_client, sent, at=clock.now)
    write_eval(ctl, 0, 0.5)
    ctl.tick()
    sent.clear()
    ctl.tick()
    jobs = sorted(s.job for s in sent)
    mark_sends_started(redis_client, sent, at=clock.now)
    clock.now += 61  # every generate job past its deadline, started, nothing committed
    ctl.tick()
    commit_jobs(ctl, 1, jobs)
    ctl.tick()  # cycle 1's training goes out
    inflight = {k.decode() for k in redis_client.hkeys(INFLIGHT.format(run_id="r1"))}
    assert {key_cycle(k) for k in inflight} == {1} and "c01/train" in inflight  # c00 gone
    assert redis_client.hlen(STARTED_KEY.format(run_id="r1")) == len(jobs)
    write_eval(ctl, 1, 0.6)
    ctl.tick()  # decides cycle 1
    sent.clear()
    ctl.tick()  # into cycle 2: plans it and sends its jobs
    assert sent and {s[1][1] for s in sent} == {2}
    inflight = {k.decode() for k in redis_client.hkeys(INFLIGHT.format(run_id="r1"))}
    assert inflight and {key_cycle(k) for k in inflight} == {2}
    assert redis_client.hlen(STARTED_KEY.format(run_id="r1")) == 0
    assert int(redis_client.get(RESENDS.format(run_id="r1"))) == len(jobs)


def test_a_late_duplicate_marked_started_after_its_cycle_was_dropped_goes_too(
        setup: Any, redis_client: redis.Redis) -> None:
    ctl, sent, clock = setup()
    ctl.tick()
    write_eval(ctl, 0, 0.5)
    ctl.tick()
    sent.clear()
    ctl.tick()  # cycle 1's jobs go out; cycle 0's entries are dropped
    mark_sends_started(redis_client, [Sent("distillq.train", ["r1", 0, ""], "r1:c00/train:2")],
                       at=clock.now)
    clock.now += 61  # past the deadlines: the started table is read
    ctl.tick()
    assert redis_client.hkeys("dq:r1:started") == []


def test_a_job_its_worker_keeps_marking_is_not_re_sent(
        setup: Any, redis_client: redis.Redis) -> None:
    """A started job waiting in its worker for a request slot (teacher.concurrency, the rate
    limiter) past loop.generate_deadline_s: its heartbeat keeps it; once the marks stop for
    a deadline, it is re-sent."""
    ctl, sent, clock = setup()
    plan_cycle_one(ctl)
    generate = [s for s in sent if s.task == "distillq.generate"]
    mark_sends_started(redis_client, generate, at=clock.now)
    for _ in range(4):  # 4 x 40 s: far past the 60 s deadline, marked every 40 s
        clock.now += 40
        mark_sends_started(redis_client, generate, at=clock.now)
        before = len(sent)
        ctl.tick()
        assert len(sent) == before, "being worked on: not re-sent"
    clock.now += 61  # the worker died: no mark for a deadline
    ctl.tick()
    assert sorted(s.job for s in sent[-len(generate):]) == sorted(s.job for s in generate)


def test_a_labelling_cycle_scores_every_shard_then_selects_then_plans(
        setup: Any, tmp_path: Path) -> None:
    """Cycle 1 of a run with labelling.share: a score job per unlabelled shard; the select
    job once all are scored; then the plan, labelling jobs beside generation ones. A
    controller started again (after a kill mid-scoring) sends only the shards not scored."""
    ctl, sent, _ = setup(**with_unlabelled(tmp_path))
    ctl.tick()
    write_eval(ctl, 0, 0.5)
    ctl.tick()
    sent.clear()
    ctl.tick()
    assert sorted(s.args[2] for s in sent if s.task == "distillq.score") == \
        ["u00000", "u00001", "u00002"]
    assert ctl.store.read_json("r1", "cycle=1/plan.json") is None, "not planned yet"
    empty = pa.table({"id": [], "pred": [], "margin": [], "entropy": [], "embedding": []},
                     schema=SCORES)
    ctl.store.commit("r1", 1, "scores", "u00001", empty)
    # the controller is killed mid-scoring; a new one, past the jobs' deadline, sends again
    # only the two shards not scored
    again = Controller(ctl.store, ctl.redis, "r1", lambda *a: sent.append(Sent(*a)),
                       clock=ctl.clock)
    ctl.clock.now += 61  # type: ignore[attr-defined]
    sent.clear()
    again.tick()
    assert sorted(s.args[2] for s in sent if s.task == "distillq.score") == ["u00000", "u00002"]
    for shard in ("u00000", "u00002"):
        ctl.store.commit("r1", 1, "scores", shard, empty)
    sent.clear()
    again.tick()
    assert [s.task for s in sent] == ["distillq.select"]
    texts = [{"id": f"unlabelled:{i}", "text": f"an unlabelled text number {i}", "pred": "c0",
              "margin": 0.1} for i in range(6)]
    ctl.store.write_json("r1", "cycle=1/selection.json", {"texts": texts})
    sent.clear()
    again.tick()
    jobs = [read_job(ctl.store, "r1", 1, j) for j in
            ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]]
    label = [j for j in jobs if j.get("kind") == "label"]
    assert [len(j["texts"]) for j in label] == [3, 3]
    assert sum(j["n_examples"] for j in jobs if j.get("kind") != "label") == 6, "half of 12"
    assert sorted(s.job for s in sent) == sorted(j["job_id"] for j in jobs)


def test_a_score_job_that_failed_for_good_fails_the_run(setup: Any, tmp_path: Path) -> None:
    ctl, _, _ = setup(**with_unlabelled(tmp_path, rows=50))
    plan_cycle_one(ctl)
    ctl.store.write_json("r1", "cycle=1/failed/score-u00000.json", {"error": "no student"})
    assert ctl.tick() == "failed"
    assert "score of cycle 1 failed: no student" in load_manifest(ctl.store, "r1").stop_reason
