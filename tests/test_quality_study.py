"""The quality study's command runs end to end (a reduced version: the full study is a
benchmark, see docs/quality.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_quality_study_runs_and_writes_its_table(
    tmp_path: Path, banking77: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.quality.run import main

    out = tmp_path / "quality.md"
    small = ["--data", str(banking77), "--classes", "4", "--seed-size", "80",
             "--test-limit", "60", "--layers", "1", "--epochs", "2", "--lr", "1e-3",
             "--batch-size", "16", "--max-cycles", "1", "--examples-per-cycle", "16",
             "--examples-per-request", "4", "--work", str(tmp_path / "work"),
             "--results", str(tmp_path / "results"), "--out", str(out)]
    assert main(["--rows", "2,0", "--seeds", "0", *small]) == 0
    text = out.read_text()
    assert "The teacher is simulated" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0 |") or
            line.startswith("| 2 |")]
    assert len(rows) == 2
    assert "Not measured yet: (1) seed only" in text
    folders = {p.name: sorted(c.name for c in p.iterdir())
               for p in (tmp_path / "results").iterdir()}
    assert sorted(folders.values()) == [["protocol.json", "row0-seed0.json"],
                                        ["protocol.json", "row2-seed0.json"]], \
        "row 0 generates nothing: kept under the protocol without generation settings"

    # A second sitting measures only what is missing and tabulates everything.
    capsys.readouterr()
    assert main(["--rows", "0,1", "--seeds", "0", *small]) == 0
    said = capsys.readouterr().out
    assert "row 0, seed 0: already measured" in said and "row 1 (seed only), seed 0 ..." in said
    text = out.read_text()
    assert all(f"| {k} |" in text for k in (0, 1, 2))
    assert "- (2) closes" in text, "rows 0, 1 and 2 are in: the first target is checked"
    assert "--work" not in text and "--out" not in text, "the command says what, not where"
    # another generation setting: a new protocol for rows 2-8, rows 0 and 1 carried over
    assert main(["--rows", "1", "--seeds", "0", "--no-warm-start", *small]) == 0
    assert "row 1, seed 0: already measured" in capsys.readouterr().out
    other = out.read_text()
    assert "| 0 |" in other and "| 1 |" in other and "| 2 |" not in other
    assert len(list((tmp_path / "results").iterdir())) == 2, "nothing new was measured"
    out.write_text(text)
    out.unlink()
    assert main(["--rows", "3", "--table-only", *small]) == 0  # measures nothing
    assert "row 3" not in capsys.readouterr().out
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line for line in out.read_text().splitlines() if line.startswith("| ")] == table
    results = json.loads(out.with_suffix(".json").read_text())
    assert set(results) == {"0", "1", "2"}
    guided = results["2"][0]
    assert 0.0 <= guided["macro_f1"] <= 1.0 and guided["tokens"] > 0 and guided["cost"] > 0
    assert 0 <= guided["added"] <= 16  # up to the best cycle
    assert results["0"][0]["added"] > 16, "the upper bound trains on the whole split"
    # The validation score the controller decided on, per cycle, and the kept cycle's.
    assert len(guided["val_by_cycle"]) == guided["cycles_run"] == 2
    assert guided["val_macro_f1"] == guided["val_by_cycle"][guided["best_cycle"]]
    assert 0.0 <= results["0"][0]["val_macro_f1"] <= 1.0
    row2 = next(line for line in table if line.startswith("| 2 |")).split(" | ")
    assert row2[6] == f"{guided['val_macro_f1']:.3f}", "the table shows it beside the test"
