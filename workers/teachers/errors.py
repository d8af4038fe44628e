"""Teacher errors: leaves of the distillq tree (``distillq.errors``).

    TransientError
    └── TeacherTransientError    429, 5xx, 408, timeouts, connection errors, malformed output
    PermanentError
    ├── TeacherPermanentError    any other 4xx, a missing API key or endpoint
    └── BudgetExceededError      a token or cost cap of the run is reached (distillq.errors)

Every teacher error carries a short ``reason`` (``http_429``, ``timeout``, ``malformed`` ...):
the key under which retries and failures are counted.
"""

from __future__ import annotations

from distillq.errors import PermanentError, TransientError

__all__ = [
    "MalformedOutputError",
    "TeacherPermanentError",
    "TeacherTransientError",
]


class TeacherTransientError(TransientError):
    """The request may succeed when sent again; ``retry_after`` is the server's hint (s)."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.retry_after = retry_after


class MalformedOutputError(TeacherTransientError):
    """The teacher answered, but not with the JSON object it was asked for."""

    def __init__(self, message: str):
        super().__init__("malformed", message)


class TeacherPermanentError(PermanentError):
    """The endpoint refused the request for a reason that sending it again will not fix."""

    def __init__(self, reason: str, message: str, status: int | None = None):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.status = status
