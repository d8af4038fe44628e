"""Worker errors: the shared tree (see ``storage.errors``) plus teacher-specific leaves."""

from __future__ import annotations

from storage.errors import (
    DistillqError,
    InvalidInputError,
    PermanentError,
    StorageError,
    TransientError,
)

__all__ = [
    "DistillqError",
    "InvalidInputError",
    "PermanentError",
    "StorageError",
    "TransientError",
    "BudgetExceededError",
]


class BudgetExceededError(PermanentError):
    """A token or cost cap of the run is reached: no new generation is started."""
