"""The quality study's command runs end to end (a reduced version: the full study is a
benchmark, see docs/quality.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_quality_study_runs_and_writes_its_table(tmp_path: Path, banking77: Path) -> None:
    from bench.quality.run import main

    out = tmp_path / "quality.md"
    assert main(["--rows", "0,2", "--seeds", "0", "--data", str(banking77), "--classes", "4",
                 "--seed-size", "80", "--test-limit", "60", "--layers", "1", "--epochs", "2",
                 "--lr", "1e-3", "--batch-size", "16", "--max-cycles", "1",
                 "--examples-per-cycle", "16", "--examples-per-request", "4",
                 "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "The teacher is simulated" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0 |") or
            line.startswith("| 2 |")]
    assert len(rows) == 2
    results = json.loads(out.with_suffix(".json").read_text())
    assert set(results) == {"0", "2"}
    guided = results["2"][0]
    assert 0.0 <= guided["macro_f1"] <= 1.0 and guided["tokens"] > 0 and guided["cost"] > 0
    assert 0 <= guided["added"] <= 16  # up to the best cycle
    assert results["0"][0]["added"] > 16, "the upper bound trains on the whole split"
