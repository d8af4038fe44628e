"""Parquet shard store: schemas, layout, atomic idempotent commits, reads (docs/storage.md)."""

from storage.dedup import normalise_text
from storage.schemas import ATTRIBUTIONS, EXAMPLES, KINDS, PREDICTIONS, empty, validate
from storage.store import ShardStore

__all__ = [
    "ATTRIBUTIONS", "EXAMPLES", "KINDS", "PREDICTIONS", "ShardStore", "empty",
    "normalise_text", "validate",
]
