"""Where a run keeps its documents in storage, relative to ``<root>/<run_id>/`` (the layout in
docs/architecture.md). Shards are placed by storage itself (``storage.layout``). The documents
named here are those several modules share; a few others (``cancel.json``, ``test.json``,
``teacher/``) are still named where they are written and read."""

from __future__ import annotations

MANIFEST = "manifest.json"  # the spec, the taxonomy, the controller's decisions, the status


def cycle_dir(cycle: int) -> str:
    return f"cycle={cycle}"


def plan(cycle: int) -> str:
    """The cycle's generation job ids and totals (``distillq.plans``)."""
    return f"cycle={cycle}/plan.json"


def jobs_chunk(cycle: int, chunk: int) -> str:
    """Job payloads ``chunk * PLAN_CHUNK`` onwards."""
    return f"cycle={cycle}/jobs/part-{chunk:05d}.json"


def eval_report(cycle: int) -> str:
    """The cycle's student on the validation split (its report and mined examples)."""
    return f"cycle={cycle}/eval.json"


def student(cycle: int) -> str:
    """The cycle's trained student, a committed folder."""
    return f"cycle={cycle}/student"


def jobstats(cycle: int, job_id: str) -> str:
    """A generate job's requests, tokens, cost and latency."""
    return f"cycle={cycle}/jobstats/{job_id}.json"


def failed_dir(cycle: int) -> str:
    return f"cycle={cycle}/failed"


def failed_record(cycle: int, kind: str, job_id: str) -> str:
    """A job that failed for good: ``error_type``, ``error``."""
    return f"cycle={cycle}/failed/{kind}-{job_id}.json"
