"""The run report (orchestrator/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller_kit import (
    failed_in_cycle_one,
)


def test_the_report_of_a_failed_run_counts_the_cycle_it_stopped_in(setup: Any) -> None:
    from orchestrator.report import write_report

    ctl, sent, clock, job = failed_in_cycle_one(setup)
    text = Path(write_report(ctl.store, "r1")).read_text()
    spend = text.split("## Teacher spend per cycle")[1]
    assert "| 1 | 0 | 0 | 0 | 0 | 0.0000 | 1 generate, 0 attribute |" in spend
    assert "fails the run beyond it" in spend


def test_the_report_plots_the_kept_cycle_not_the_last_one() -> None:
    from orchestrator.report import best_eval

    evals = [{"cycle": c} for c in range(3)]
    decided = [{"cycle": 0, "best_cycle": 0}, {"cycle": 1, "best_cycle": 1},
               {"cycle": 2, "best_cycle": 1}]
    assert best_eval({"decisions": decided}, evals)["cycle"] == 1, "stopped early: best so far"
    assert best_eval({"decisions": decided, "final": {"best_cycle": 0}}, evals)["cycle"] == 0
    assert best_eval({"decisions": []}, evals)["cycle"] == 2
