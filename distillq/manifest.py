"""A run's manifest (``manifest.json``): its spec, taxonomy, the controller's decisions and its
status, as a typed model. Storage is the source of truth and this module is the manifest's one
writer: everything that changes a run's status or records a decision does it through the
methods below and ``save_manifest``.

    created (orchestrator.runs)  → status running
    decide()                     a cycle's metric, the best cycle so far, continue or stop
    stop_at()                    the loop is over: ``final`` names the best cycle
    finish()                     done, failed or cancelled (``stop_reason``, ``finished_at``)
    reopen()                     ``orchestrator resume`` of a failed or cancelled run
    change_teacher()             ``resume --teacher``: corrected teacher settings, recorded

The JSON is the model's fields, an unset optional one left out.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distillq import paths
from distillq.errors import InvalidInputError, ManifestError
from distillq.plans import JsonStore
from distillq.spec import RunSpec, parse_spec

Status = Literal["running", "done", "failed", "cancelled"]
TERMINAL: tuple[Status, ...] = ("done", "failed", "cancelled")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Decision(_Doc):
    """What the controller decided after training ``cycle``."""

    cycle: int
    value: float  # the cycle's validation ``metric``
    metric: str
    best_cycle: int  # the best so far: the last cycle that gained more than loop.min_delta
    best_value: float
    action: Literal["continue", "stop"]
    reason: str  # why it stops ("" to continue)
    at: float


class Final(_Doc):
    """The loop is over: the student of ``best_cycle`` is the run's; it is tested next."""

    best_cycle: int
    reason: str


class TeacherChange(_Doc):
    """Teacher settings ``orchestrator resume --teacher`` changed: field -> [old, new]."""

    at: float
    changes: dict[str, list[Any]]


# what `resume --teacher` may change: how to reach and pace the teacher, never what the run
# learns from (the data, the student, the prompts, the prices its spend was counted at)
RESUMABLE_TEACHER_FIELDS = (
    "base_url", "model", "api_key_env", "api_key_file", "headers", "rpm", "tpm",
    "global_rate_limit", "concurrency", "timeout_s", "max_attempts", "max_elapsed_s",
    "max_output_tokens", "json_mode", "send_seed", "extra_body", "preflight",
)


class Manifest(_Doc):
    run_id: str
    spec: dict[str, Any]  # as the user wrote it, normalised (``distillq.spec.spec_to_dict``)
    taxonomy: list[str] = Field(min_length=1)
    created_at: float
    status: Status = "running"
    decisions: list[Decision] = []
    counts: dict[str, int] = {}  # examples per split: seed_train, val, pool, test
    final: Final | None = None
    stop_reason: str | None = None
    finished_at: float | None = None
    resumed_at: float | None = None
    teacher_changes: list[TeacherChange] = []

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def cycle(self) -> int:
        """The cycle the loop is in: the number of cycles decided."""
        return len(self.decisions)

    def run_spec(self) -> RunSpec:
        return parse_spec(self.spec, f"manifest of {self.run_id}")

    def decide(self, decision: Decision) -> None:
        self.decisions.append(decision)
        if decision.action == "stop":
            self.final = Final(best_cycle=decision.best_cycle, reason=decision.reason)

    def stop_at(self, best_cycle: int, reason: str) -> None:
        self.final = Final(best_cycle=best_cycle, reason=reason)

    def finish(self, status: Status, reason: str, at: float) -> None:
        self.status, self.stop_reason, self.finished_at = status, reason, at

    def reopen(self, at: float) -> None:
        self.status, self.stop_reason, self.resumed_at = "running", None, at

    def change_teacher(self, changes: dict[str, Any], at: float) -> None:
        """Apply ``resume --teacher`` settings (RESUMABLE_TEACHER_FIELDS only); the spec with
        them must still parse (SpecError naming the field otherwise), and nothing is changed
        then. Recorded in ``teacher_changes``."""
        unknown = sorted(set(changes) - set(RESUMABLE_TEACHER_FIELDS))
        if unknown:
            raise InvalidInputError(
                f"teacher.{unknown[0]} cannot be changed on resume (these can: "
                f"{', '.join(RESUMABLE_TEACHER_FIELDS)})")
        teacher = dict(self.spec.get("teacher") or {})
        spec = {**self.spec, "teacher": {**teacher, **changes}}
        parse_spec(spec, f"manifest of {self.run_id} with the new teacher settings")
        self.spec = spec
        self.teacher_changes.append(TeacherChange(
            at=at, changes={k: [teacher.get(k), v] for k, v in changes.items()}))

    def best_so_far(self) -> int | None:
        """The final best cycle, else the last decision's, else None (nothing trained)."""
        if self.final is not None:
            return self.final.best_cycle
        return self.decisions[-1].best_cycle if self.decisions else None

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        if not data["teacher_changes"]:  # a run never changed keeps the manifest it had
            del data["teacher_changes"]
        return data


def parse_manifest(data: Any, run_id: str) -> Manifest:
    """A manifest read from storage; ManifestError names what is wrong with it."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                             for e in exc.errors())
        raise ManifestError(f"manifest of {run_id} is not valid: {problems}") from None


def read_manifest(store: JsonStore, run_id: str) -> Manifest | None:
    """The run's manifest, None if it has none."""
    data = store.read_json(run_id, paths.MANIFEST)
    return None if data is None else parse_manifest(data, run_id)


def save_manifest(store: JsonStore, manifest: Manifest) -> None:
    store.write_json(manifest.run_id, paths.MANIFEST, manifest.to_json())


def require_manifest(store: JsonStore, run_id: str) -> Manifest:
    """The run's manifest; a worker's job on a run without one fails for good."""
    manifest = read_manifest(store, run_id)
    if manifest is None:
        raise ManifestError(f"run {run_id!r} has no manifest in its storage")
    return manifest
