"""The progress view (orchestrator/progress.py)."""

from __future__ import annotations

from typing import Any

import pytest
from controller_kit import (
    commit_jobs,
    write_eval,
)


def test_watch_shows_a_cycle_with_a_plan(setup: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.progress import Progress

    ctl, sent, clock = setup()
    ctl.tick()
    write_eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()  # cycle 1 planned
    jobs = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]
    commit_jobs(ctl, 1, jobs[:1])
    with Progress(ctl.store, "r1") as progress:
        progress.refresh()
    out = capsys.readouterr().err  # progress goes to stderr
    assert f"cycle 1: generate (1/{len(jobs)} jobs generated)" in out


def test_a_resumed_run_sets_only_its_latest_decision_against_the_live_counter(
        setup: Any, redis_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Decisions already made are printed again when a run is resumed; the live counter in
    Redis holds the whole run, so only the latest one may show what storage lacks."""
    from orchestrator.progress import Progress
    from orchestrator.runs import load_manifest
    from workers.teachers.accounting import record_spend

    ctl, _, _ = setup()
    ctl.tick()
    write_eval(ctl, 0, 0.5)
    ctl.tick()
    ctl.tick()  # cycle 1 planned
    jobs = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]
    commit_jobs(ctl, 1, jobs)
    for job in jobs:
        ctl.store.write_json("r1", f"cycle=1/jobstats/{job}.json",
                             {"tokens_in": 100, "tokens_out": 10, "cost": 0.0, "requests": 1})
    write_eval(ctl, 1, 0.6)
    ctl.tick()
    ctl.tick()
    recorded = 110 * len(jobs)
    record_spend(redis_client, "r1", recorded + 40, 0, 0.0)  # 40 tokens not yet recorded
    with Progress(ctl.store, "r1") as progress:
        progress._print_decisions(load_manifest(ctl.store, "r1"), redis_client)
    lines = [x for x in capsys.readouterr().err.splitlines() if "val macro_f1" in x]
    assert len(lines) == 2
    assert "in flight" not in lines[0], "cycle 0's spend is not the whole run's"
    assert "in flight 40)" in lines[1]
