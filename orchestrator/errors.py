"""Orchestrator errors: the shared tree (see ``storage.errors``) plus spec errors."""

from __future__ import annotations

from storage.errors import DistillqError, InvalidInputError, PermanentError, TransientError

__all__ = ["DistillqError", "InvalidInputError", "PermanentError", "TransientError", "SpecError"]


class SpecError(InvalidInputError):
    """The run spec is invalid; ``problems`` lists ``(field, message)`` pairs."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {field}: {msg}" for field, msg in problems)
        super().__init__(f"invalid run spec {path}:\n{lines}")
