"""What the orchestrator tests share: a small run (3 classes, run id ``r1``), a hand-moved
clock, the sends a controller makes, and the steps workers would take (an evaluation written,
shards committed, a send marked started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import redis

from distillq.spec import parse_spec
from orchestrator.controller import Controller
from orchestrator.datasets import Labelled
from orchestrator.runs import examples_table
from workers.context import mark_started


class Sent(NamedTuple):
    """One send the controller made: ``send(task, args, task_id)``."""

    task: str  # "distillq.generate", "distillq.train", ...
    args: list[Any]  # [run_id, cycle, ...]; generate: [run_id, cycle, job_id, storage]
    task_id: str  # "r1:c00/train:1": run, in-flight key, send number

    @property
    def cycle(self) -> int:
        return int(self.args[1])

    @property
    def job(self) -> str:
        """The generate job's id (``c01-0003``)."""
        return str(self.args[2])


class Clock:
    """The controller's clock, moved by hand (``clock.now += 61``): deadlines without sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_dataset(tmp_path: Path) -> Path:
    rows = ["text,label"] + [f"text number {i} of class {c},c{c}" for c in range(3)
                             for i in range(20)]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def make_spec(tmp_path: Path, **over: Any) -> Any:
    data: dict[str, Any] = {
        "run_id": "r1", "storage": str(tmp_path / "store"),
        "dataset": {"train": str(write_dataset(tmp_path)), "test": str(write_dataset(tmp_path)),
                    "seed_size": 30},
        "generation": {"examples_per_cycle": 12, "examples_per_request": 4},
        "loop": {"max_cycles": 3, "patience": 1, "generate_deadline_s": 60, "max_sends": 3},
    }
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_spec(data)


def with_unlabelled(tmp_path: Path, rows: int = 250) -> dict[str, Any]:
    """Spec overrides for a run that labels: ``rows`` unlabelled texts in 100-text shards,
    half of each cycle's budget labelled, 3 texts a request."""
    pool = tmp_path / "unlabelled.csv"
    pool.write_text("text\n" + "".join(f"an unlabelled text number {i}\n" for i in range(rows)))
    return {"dataset": {"unlabelled": str(pool)},
            "labelling": {"share": 0.5, "shard_rows": 100, "texts_per_request": 3},
            "loop": {"train_deadline_s": 60, "queue_deadline_s": 60}}


def write_eval(ctl: Controller, cycle: int, f1: float) -> None:
    report = {"cycle": cycle, "macro_f1": f1, "accuracy": f1, "loss": 1 - f1,
              "per_class": {c: {"precision": f1, "recall": f1, "f1": f1, "support": 2}
                            for c in ("c0", "c1", "c2")},
              "confusions": [["c0", "c1", 2]], "mined": {}}
    ctl.store.write_json("r1", f"cycle={cycle}/eval.json", report)


def commit_jobs(ctl: Controller, cycle: int, job_ids: list[str]) -> None:
    for job in job_ids:
        data = Labelled([f"{job}-{i}" for i in range(2)], [f"{job} text {i}" for i in range(2)],
                        ["c0", "c1"])
        ctl.store.commit("r1", cycle, "generated", job,
                         examples_table(data, "r1", cycle, "teacher", job, job))


def plan_cycle_one(ctl: Controller) -> None:
    """Cycle 0's training sent and evaluated at 0.5, decided, and cycle 1 planned and sent."""
    ctl.tick()
    write_eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()


def failed_in_cycle_one(setup: Any) -> tuple[Controller, list[Sent], Clock, str]:
    """A run failed by one permanently failed generate job of cycle 1 (no failure tolerated)."""
    ctl, sent, clock = setup(generation={"tolerated_failure_fraction": 0.0})
    plan_cycle_one(ctl)
    job = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"][0]
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{job}.json", {"error": "boom"})
    assert ctl.tick() == "failed"
    return ctl, sent, clock, job


def mark_sends_started(redis_client: redis.Redis, sent: list[Sent], at: float) -> None:
    """What a worker does first with a job, and then as a heartbeat: mark it, at ``at`` of
    the controller's clock (workers.context)."""
    for _, args, task_id in sent:
        mark_started(redis_client, args[0], task_id, at=at)
