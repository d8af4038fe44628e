"""bench/nearcopy on the tests' corpus: the table it prints, and what it shows at the
thresholds in use (light edits caught, real texts of a class kept)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.nearcopy.run import main


def test_the_near_copy_bench_separates_edits_from_real_texts(
        corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(corpus / "train.csv"), "--n", "60"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| max edit"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    chosen = next(line for line in out.splitlines() if line.startswith("| 0.1 | 0.8 |"))
    shares = dict(zip(columns[2:], (float(c.strip(" %")) for c in chosen.strip("|")
                                    .split("|")[2:]), strict=True))
    assert min(v for k, v in shares.items() if k.startswith("copy")) >= 90.0, shares
    assert shares["real: random of its class"] <= 2.0, shares
    assert main(["--data", str(corpus / "missing.csv")]) == 2
