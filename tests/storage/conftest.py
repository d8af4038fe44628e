"""Fixtures of the storage tests: example tables, a store on a real temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from shard_tables import MakeExamples, examples

from storage import ShardStore


@pytest.fixture
def make_examples() -> MakeExamples:
    return examples


@pytest.fixture
def store(tmp_path: Path) -> ShardStore:
    return ShardStore(tmp_path / "root")
