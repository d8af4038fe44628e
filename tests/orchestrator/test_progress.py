"""The progress view (orchestrator/progress.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from controller_kit import (
    commit_jobs,
    plan_cycle_one,
    with_unlabelled,
    write_eval,
)

from storage.schemas import SCORES


def test_watch_shows_a_cycle_with_a_plan(setup: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.progress import Progress

    ctl, sent, clock = setup()
    plan_cycle_one(ctl)  # cycle 0 decided at 0.5, cycle 1 planned
    jobs = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]
    commit_jobs(ctl, 1, jobs[:1])
    with Progress(ctl.store, "r1") as progress:
        progress.refresh()
    out = capsys.readouterr().err  # progress goes to stderr
    assert f"cycle 1: generate (1/{len(jobs)} jobs generated, 0 failed)" in out


def test_a_resumed_run_sets_only_its_latest_decision_against_the_live_counter(
        setup: Any, redis_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Decisions already made are printed again when a run is resumed; the live counter in
    Redis holds the whole run, so only the latest one may show what storage lacks."""
    from orchestrator.progress import Progress
    from orchestrator.runs import load_manifest
    from workers.teachers.accounting import record_spend

    ctl, _, _ = setup()
    plan_cycle_one(ctl)  # cycle 0 decided at 0.5, cycle 1 planned
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


def test_watch_and_the_summary_show_what_a_cycle_labelled(
        setup: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A labelling cycle: ``watch`` shows the unlabelled shards being scored, then, once the
    cycle is decided, how many of the selected texts were labelled and rejected; the summary
    that ``run``, ``watch`` and ``report`` end with has the strategy, the reasons and the cost."""
    from orchestrator.commands import cmd_status
    from orchestrator.progress import Progress
    from orchestrator.report import summary_lines

    ctl, _, _ = setup(**with_unlabelled(tmp_path))
    plan_cycle_one(ctl)  # cycle 1 sends its score jobs
    empty = pa.table({"id": [], "pred": [], "margin": [], "entropy": [], "embedding": []},
                     schema=SCORES)
    ctl.store.commit("r1", 1, "scores", "u00001", empty)
    with Progress(ctl.store, "r1") as progress:
        progress.refresh()
    assert "cycle 1: score (1/3 unlabelled shards scored)" in capsys.readouterr().err
    texts = [{"id": f"pool-{i}", "text": f"an unlabelled text number {i}", "pred": "c0",
              "margin": 0.1} for i in range(6)]
    ctl.store.write_json("r1", "cycle=1/selection.json",
                         {"strategy": "margin", "scored": 250, "texts": texts})
    ctl.tick()  # planned: 2 labelling jobs beside generation
    plan = ctl.store.read_json("r1", "cycle=1/plan.json")
    commit_jobs(ctl, 1, plan["jobs"])
    assert len(plan["labelling"]) == 2
    for job in plan["labelling"]:
        ctl.store.write_json("r1", f"cycle=1/jobstats/{job}.json",
                             {"kind": "label", "examples": 2, "requests": 1, "tokens_in": 300,
                              "tokens_out": 20, "cost": 0.001,
                              "rejects_by_reason": {"label_not_in_taxonomy": 1},
                              # as an older run's single-answer job recorded it: shown as none
                              "self_consistency": 1, "agreement": 1.0})
    ctl.tick()  # every job committed: the cycle trains
    write_eval(ctl, 1, 0.6)
    ctl.tick()
    with Progress(ctl.store, "r1") as progress:
        progress.refresh()
    decided = [x for x in capsys.readouterr().err.splitlines() if "cycle 1: val" in x]
    assert len(decided) == 1 and "labelled=4/6 rejected=2" in decided[0]
    assert ("  labelling cycle 1: labelled 4 of 6 texts selected by `margin` from 250 scored; "
            "rejected 2 (label_not_in_taxonomy 2); 2 requests, 640 tokens, cost 0.0020"
            ) in summary_lines(ctl.store, "r1")
    # `status RUN` for a person: the labelling table under the cycles table
    assert cmd_status(argparse.Namespace(storage=ctl.store.uri, run_id="r1")) == 0
    out = capsys.readouterr().out
    assert "labelling: 250 unlabelled texts" in out
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines()
            if line.startswith("│")]
    assert ["1", "0.6000", "continue", "4", "0.0020", "0.0000"] in rows  # 2 label jobs' rows
    assert ["1", "margin", "250", "6", "4", "label_not_in_taxonomy 2", "1", "-", "2", "640",
            "0.0020"] in rows
    from orchestrator.report import write_report

    report = Path(write_report(ctl.store, "r1")).read_text()
    assert "| 1 | margin | 250 | 6 | 4 | label_not_in_taxonomy 2 | 1 | - | 2 | 640 |" in report
