"""A cycle's plan in storage: the job payloads in chunks of ``PLAN_CHUNK`` under
``cycle=<c>/jobs/part-<n>.json``, then ``cycle=<c>/plan.json`` with the job ids in order. The
controller writes it; a generate task reads its one job's chunk."""

from __future__ import annotations

from typing import Any, Protocol

from distillq import paths
from distillq.jobs import plan_index

PLAN_CHUNK = 1000


class JsonStore(Protocol):
    """What plan and run-state I/O needs of a store (``storage.ShardStore`` is one)."""

    def read_json(self, run_id: str, relpath: str) -> Any: ...

    def write_json(self, run_id: str, relpath: str, obj: Any) -> None: ...


def write_plan(store: JsonStore, run_id: str, cycle: int,
               jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Job payloads in chunks of ``PLAN_CHUNK`` (a task reads one chunk), then plan.json."""
    for start in range(0, len(jobs), PLAN_CHUNK):
        chunk = {job["job_id"]: job for job in jobs[start : start + PLAN_CHUNK]}
        store.write_json(run_id, paths.jobs_chunk(cycle, start // PLAN_CHUNK), chunk)
    plan = {"cycle": cycle, "chunk": PLAN_CHUNK, "jobs": [job["job_id"] for job in jobs],
            "examples": sum(int(job["n_examples"]) for job in jobs),
            "labelling": [job["job_id"] for job in jobs if job.get("kind") == "label"]}
    store.write_json(run_id, paths.plan(cycle), plan)
    return plan


def read_job(store: JsonStore, run_id: str, cycle: int, job_id: str) -> dict[str, Any] | None:
    """One job's payload, from its chunk. A plan name (``distillq.jobs.plan_name``) gives its
    position, so the chunk is known without reading plan.json (a 100k-job plan is megabytes)."""
    index = plan_index(cycle, job_id)
    if index is not None:
        chunk = store.read_json(run_id, paths.jobs_chunk(cycle, index // PLAN_CHUNK))
        if chunk is not None and job_id in chunk:
            return chunk[job_id]
    plan = store.read_json(run_id, paths.plan(cycle))
    if plan is None or job_id not in plan["jobs"]:
        return None
    index_in_plan = plan["jobs"].index(job_id)
    chunk = store.read_json(
        run_id, paths.jobs_chunk(cycle, index_in_plan // plan['chunk']))
    return None if chunk is None else chunk.get(job_id)
