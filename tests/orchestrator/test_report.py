"""The run report (orchestrator/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller_kit import (
    failed_in_cycle_one,
)
from manifestkit import decision

from distillq.manifest import Manifest


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
    decided = [decision(0, 0), decision(1, 1), decision(2, 1)]
    run = Manifest(run_id="r", spec={}, taxonomy=["a"], created_at=0.0, decisions=decided)
    assert best_eval(run, evals)["cycle"] == 1, "stopped early: best so far"
    run.stop_at(0, "max_cycles=2 reached")
    assert best_eval(run, evals)["cycle"] == 0
    assert best_eval(run.model_copy(update={"decisions": [], "final": None}),
                     evals)["cycle"] == 2
