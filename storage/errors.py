"""The distillq exception tree.

    DistillqError
    ├── TransientError        retried (network blips, 429, 5xx, a Redis restart)
    └── PermanentError        never retried
        ├── InvalidInputError bad spec, dataset, run id or URI — the CLI exits 2
        └── StorageError      a path outside the root, a corrupt shard

Each package re-exports these from its own ``errors`` module and adds its own leaves.
Celery tasks declare ``autoretry_for=(TransientError,)`` and let PermanentError fail the job.
"""

from __future__ import annotations


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
