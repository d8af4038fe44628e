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
