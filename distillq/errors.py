"""The distillq exception tree, and the exit codes the CLI maps it to.

    DistillqError
    ├── TransientError          retried (network blips, 429, 5xx, a Redis restart)
    └── PermanentError          never retried
        ├── InvalidInputError   bad spec, dataset, run id or URI — the CLI exits 2
        │   └── SpecError       the run spec, with every problem by field
        ├── TeacherUnavailableError  the pre-flight request: unreachable, or refused — exit 5
        ├── StorageError        a path outside the root, a corrupt shard
        │   └── ManifestError   a run's manifest.json that is not a valid manifest
        └── BudgetExceededError a token or cost cap of the run is reached

Everyone imports them from here; the teachers add their own leaves
(``workers.teachers.errors``). Celery tasks declare ``autoretry_for=(TransientError,)`` and let
PermanentError fail the job.
"""

from __future__ import annotations

# what `orchestrator` exits with: a run that failed, input refused (nothing written), Redis
# unreachable (nothing written), any other error a command cannot get past, the teacher
# unreachable or refusing the pre-flight request (nothing written)
EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_ERROR, EXIT_TEACHER = 1, 2, 3, 4, 5


class DistillqError(Exception):
    """Base of every error distillq raises on purpose."""


class TransientError(DistillqError):
    """A failure that may succeed when tried again."""


class PermanentError(DistillqError):
    """A failure that will fail again: never retried."""


class InvalidInputError(PermanentError):
    """User input (spec, dataset, ids, URIs) is wrong; the message names the problem."""


class StorageError(PermanentError):
    """Storage refused an operation or holds something unreadable."""


class TeacherUnavailableError(PermanentError):
    """The teacher did not answer the pre-flight request, or refused it; the message names the
    endpoint (never its key) and gives the server's own words."""


class ManifestError(StorageError):
    """A run's manifest in storage is not a valid manifest; the message names each problem."""


class SpecError(InvalidInputError):
    """The run spec is invalid; ``problems`` lists ``(field, message)`` pairs."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {field}: {msg}" for field, msg in problems)
        super().__init__(f"invalid run spec {path}:\n{lines}")


class BudgetExceededError(PermanentError):
    """A token or cost cap of the run is reached: no new generation is started."""
