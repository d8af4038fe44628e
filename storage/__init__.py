"""Parquet shard store: schemas, layout, atomic idempotent commits, reads (docs/storage.md)."""

from storage.dedup import normalise_text
from storage.schemas import (
    ATTRIBUTIONS,
    EXAMPLES,
    KINDS,
    PREDICTIONS,
    SCORES,
    UNLABELLED,
    empty,
    validate,
)
from storage.store import ShardStore

__all__ = [
    "ATTRIBUTIONS", "EXAMPLES", "KINDS", "PREDICTIONS", "SCORES", "UNLABELLED", "ShardStore",
    "empty",
    "normalise_text", "validate",
]
