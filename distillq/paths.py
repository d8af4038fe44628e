"""Where a run keeps its documents in storage, relative to ``<root>/<run_id>/`` (the layout in
docs/architecture.md). Shards are placed by storage itself (``storage.layout``); every other
document a run holds is named here and nowhere else."""

from __future__ import annotations

MANIFEST = "manifest.json"  # the spec, the taxonomy, the controller's decisions, the status
CANCEL = "cancel.json"  # `orchestrator cancel` asked the run to stop (``at``)
TEST_RESULT = "test.json"  # the best cycle's student on the test split
TEACHER_DIR = "teacher"  # the attribution teacher, fine-tuned on the seed (committed folder)
TEACHER_STATE = "teacher/training_state.json"  # how that fine-tuning went
TEACHER_URL = "teacher_url.json"  # where a teacher started beside the run answers
ATTRIBUTION_QUALITY = "attribution_quality.json"  # rationale quality, once per run
CONTROLLER_MARK = "controller.json"  # the driving controller's mark (orchestrator.runlock)
REPORT_DIR = "report"  # the run report (Markdown, plots)


def cycle_dir(cycle: int) -> str:
    return f"cycle={cycle}"


def plan(cycle: int) -> str:
    """The cycle's generation job ids and totals (``distillq.plans``)."""
    return f"{cycle_dir(cycle)}/plan.json"


def jobs_chunk(cycle: int, chunk: int) -> str:
    """Job payloads ``chunk * PLAN_CHUNK`` onwards."""
    return f"{cycle_dir(cycle)}/jobs/part-{chunk:05d}.json"


def eval_report(cycle: int) -> str:
    """The cycle's student on the validation split (its report and mined examples)."""
    return f"{cycle_dir(cycle)}/eval.json"


def selection(cycle: int) -> str:
    """The unlabelled texts the cycle's select job chose for the teacher to label."""
    return f"{cycle_dir(cycle)}/selection.json"


def student(cycle: int) -> str:
    """The cycle's trained student, a committed folder."""
    return f"{cycle_dir(cycle)}/student"


def jobstats(cycle: int, job_id: str) -> str:
    """A generate job's requests, tokens, cost and latency."""
    return f"{cycle_dir(cycle)}/jobstats/{job_id}.json"


def failed_attempts_dir(cycle: int) -> str:
    return f"{cycle_dir(cycle)}/jobstats-failed"


def failed_attempt(cycle: int, job_id: str, stamp: str) -> str:
    """What a generate attempt that failed had paid for (its job's stats, ``failed``)."""
    return f"{failed_attempts_dir(cycle)}/{job_id}.{stamp}.json"


def failed_dir(cycle: int) -> str:
    return f"{cycle_dir(cycle)}/failed"


def failed_record(cycle: int, kind: str, job_id: str) -> str:
    """A job that failed for good: ``error_type``, ``error`` (``distillq.jobs.JobId`` names it)."""
    return f"{failed_dir(cycle)}/{kind}-{job_id}.json"


def failed_before_resume(cycle: int, name: str, stamp: str) -> str:
    """A failure record ``orchestrator resume`` cleared (``name`` is its file's, less .json)."""
    return f"{cycle_dir(cycle)}/failed-before-resume/{name}.{stamp}.json"
