"""Job ids: one type, ``JobId``, rendered one way per use.

A job is a kind, a cycle and a name. Generate and attribute jobs are named by the cycle's plan
(``c01-0003``: ``plan_name``); score jobs by the unlabelled shard they score (``u00000``); a
run has one train job and one select job per cycle, one test job (of the best cycle) and one
prepare-teacher job (cycle 0), named ``train``, ``select``, ``test`` and ``teacher``.

    rendering          example                        where
    .name              c01-0003                       plan.json, shards' job_id, jobstats
    .key               c01/gen/c01-0003               the in-flight and started tables
    .task_id(run, n)   r1:c01/gen/c01-0003:2          the Celery task id of send n
    .failed_record     cycle=1/failed/generate-c01-0003.json
    .task, .args(…)    distillq.generate, [r1, 1, c01-0003, uri]   the message

``sent_job(task_id)`` and ``key_cycle(key)`` read the renderings back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from distillq import paths, queues

# kind → (Celery task, key part); the kind is also the failure record's prefix
_KINDS = {
    "generate": (queues.GENERATE, "gen"),
    "attribute": (queues.ATTRIBUTE, "attr"),
    "train": (queues.TRAIN, "train"),
    "test": (queues.TEST, "test"),
    "prepare_teacher": (queues.PREPARE_TEACHER, "teacher"),
    "score": (queues.SCORE, "score"),  # one per unlabelled shard (u00000, ...) and cycle
    "select": (queues.SELECT, "select"),
}
# the name of the run's (or the cycle's) only job of a kind
SINGLE_JOBS = {"train": "train", "test": "test", "prepare_teacher": "teacher",
               "select": "select"}


def plan_name(cycle: int, index: int) -> str:
    """The name of a cycle's ``index``-th generation job (stable: re-planning gives the same)."""
    return f"c{cycle:02d}-{index:04d}"


def plan_index(cycle: int, name: str) -> int | None:
    """The plan position of ``name`` when it is one of ``cycle``'s plan names, else None."""
    prefix, _, index = name.partition("-")
    return int(index) if prefix == f"c{cycle:02d}" and index.isdigit() else None


def request_id(name: str, index: int) -> str:
    """The id of a generate job's ``index``-th teacher request: its seed, and its rows'
    ``prompt_id`` in the shard."""
    return f"{name}-r{index:02d}"


@dataclass(slots=True)
class JobId:
    """A job; treat it as immutable. The controller makes one per planned job and tick, so it
    is a slotted class whose key is built once, not a frozen dataclass (twice the cost)."""

    kind: str
    cycle: int
    name: str
    key: str = field(init=False, repr=False, compare=False)  # the in-flight table's key

    def __post_init__(self) -> None:
        try:
            part = _KINDS[self.kind][1]
        except KeyError:
            raise ValueError(f"unknown job kind {self.kind!r} (one of {', '.join(_KINDS)})") \
                from None
        if self.kind in ("test", "prepare_teacher"):  # one per run
            self.key = part
        elif self.kind in ("train", "select"):  # one per cycle
            self.key = f"c{self.cycle:02d}/{part}"
        else:
            self.key = f"c{self.cycle:02d}/{part}/{self.name}"

    @classmethod
    def generate(cls, cycle: int, name: str) -> JobId:
        return cls("generate", cycle, name)

    @classmethod
    def attribute(cls, cycle: int, name: str) -> JobId:
        return cls("attribute", cycle, name)

    @classmethod
    def single(cls, kind: str, cycle: int = 0) -> JobId:
        """The cycle's train job, the run's test job (of ``cycle``), its teacher preparation."""
        return cls(kind, cycle, SINGLE_JOBS[kind])

    @property
    def task(self) -> str:
        return _KINDS[self.kind][0]

    def task_id(self, run_id: str, send: int) -> str:
        return f"{run_id}:{self.key}:{send}"

    @property
    def failed_record(self) -> str:
        return paths.failed_record(self.cycle, self.kind, self.name)

    def args(self, run_id: str, storage: str) -> list[Any]:
        """The task's arguments (the wire format: see ``distillq.queues``)."""
        if self.kind == "prepare_teacher":
            return [run_id, storage]
        if self.kind in ("train", "test", "select"):
            return [run_id, self.cycle, storage]
        return [run_id, self.cycle, self.name, storage]


def key_prefix(kind: str, cycle: int) -> str:
    """What the keys of a cycle's generate (or attribute) jobs start with."""
    return f"c{cycle:02d}/{_KINDS[kind][1]}/"


def key_cycle(key: str) -> int | None:
    """The cycle of a job key; None for the run-level ones (``teacher``, ``test``)."""
    head, sep, _ = key.partition("/")
    if sep and head[:1] == "c" and head[1:].isdigit():
        return int(head[1:])
    return None


def sent_job(task_id: str) -> str:
    """``<run>:<key>`` of a task id, whichever send of the job it names (the started table's
    field); an id that is not the controller's comes back whole."""
    head, _, send = task_id.rpartition(":")
    return head if head and send.isdigit() else task_id


def failed_names(listing: Iterable[str], kind: str) -> set[str]:
    """The names of the ``kind`` jobs recorded as failed, from a listing of a cycle's
    ``failed_dir`` (file names as ``JobId.failed_record`` writes them)."""
    prefix = f"{kind}-"
    return {n[len(prefix):-len(".json")] for n in listing
            if n.startswith(prefix) and n.endswith(".json")}
