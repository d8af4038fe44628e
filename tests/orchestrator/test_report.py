"""The run report (orchestrator/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller_kit import failed_in_cycle_one, plan_cycle_one
from manifestkit import decision

from distillq.manifest import Manifest
from orchestrator.runs import load_manifest


def test_the_report_of_a_failed_run_counts_the_cycle_it_stopped_in(setup: Any) -> None:
    from orchestrator.report import write_report

    ctl, sent, clock, job = failed_in_cycle_one(setup)
    text = Path(write_report(ctl.store, "r1")).read_text()
    spend = text.split("## Teacher spend per cycle")[1]
    assert "| 1 | 0 | 0 | 0 | 0 | 0 | 0 (0) | 0 | 0.0000 | 0, 0.0000 | 1 generate, 0 attribute |" \
        in spend
    assert "Teacher: SIMULATED" in spend
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


def test_a_failed_run_says_why_in_the_terminal_and_in_its_report(setup: Any) -> None:
    """The failure records' errors, grouped, counted and with the server's own words: the
    cause is not left in cycle=1/failed/*.json and the worker log."""
    from orchestrator.report import summary_lines, write_report

    ctl, sent, clock = setup(generation={"tolerated_failure_fraction": 0.0})
    plan_cycle_one(ctl)
    jobs = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"]
    refused = "TeacherPermanentError: http_404: Server is pinned to smollm2; requested 'x'"
    for job in jobs[:2]:
        ctl.store.write_json("r1", f"cycle=1/failed/generate-{job}.json",
                             {"kind": "generate", "job_id": job, "error": refused})
    ctl.store.write_json("r1", f"cycle=1/failed/generate-{jobs[2]}.json",
                         {"kind": "generate", "job_id": jobs[2], "error": "Timeout: 60s"})
    assert ctl.tick() == "failed"
    reason = load_manifest(ctl.store, "r1").stop_reason or ""
    assert reason.startswith(f"cycle 1: 3 of {len(jobs)} generation jobs failed permanently, "
                             "over generation.tolerated_failure_fraction=0 (0 committed, "
                             f"{len(jobs) - 3} not finished when the run stopped)")
    lines = summary_lines(ctl.store, "r1")
    assert lines[1:3] == [f"  cause: 2 generate jobs of cycle 1 failed: {refused}",
                          "  cause: 1 generate job of cycle 1 failed: Timeout: 60s"]
    text = Path(write_report(ctl.store, "r1")).read_text()
    assert f"- 2 generate jobs of cycle 1 failed: {refused}" in text


def test_a_run_that_failed_before_any_cycle_trained_gets_a_report(setup: Any) -> None:
    from orchestrator.report import write_report

    ctl, _, _ = setup()
    ctl.tick()  # cycle 0's training is sent
    ctl.store.write_json("r1", "cycle=0/failed/train-train.json",
                         {"kind": "train", "job_id": "train", "error": "OutOfMemoryError: x"})
    assert ctl.tick() == "failed"
    text = Path(write_report(ctl.store, "r1")).read_text()
    assert "Status: **failed** — train of cycle 0 failed: OutOfMemoryError: x" in text
    assert "- 1 train job of cycle 0 failed: OutOfMemoryError: x" in text


def test_the_simulation_reached_as_a_real_server_is_reported_as_simulated(
        setup: Any, capsys: Any) -> None:
    """`teacher.kind: openai` pointed at distillq's simulated teacher: its answers say so
    (``requests_simulated`` of the job statistics), and the report, the summary, `status`
    and the model card's teacher line name the simulation, not a real server."""
    import json

    from distillq import paths
    from orchestrator.cli import main
    from orchestrator.report import summary_lines, teacher_line, write_report

    teacher = {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "distillq-sim"}
    ctl, _, _ = setup(teacher=teacher)
    plan_cycle_one(ctl)
    job = ctl.store.read_json("r1", "cycle=1/plan.json")["jobs"][0]
    spec = load_manifest(ctl.store, "r1").spec
    text = Path(write_report(ctl.store, "r1")).read_text()
    assert "Simulated teacher" not in text and "(a real OpenAI-compatible server)" in text
    ctl.store.write_json("r1", paths.failed_attempt(1, job, "t0"),
                         {"requests": 3, "requests_simulated": 2, "tokens_in": 90,
                          "tokens_out": 30, "cost": 0.01})  # one request got no answer
    text = Path(write_report(ctl.store, "r1")).read_text()
    named = ("SIMULATED: `distillq-sim` at 127.0.0.1:8000 is distillq's simulated teacher "
             "(its answers to 2 requests say so), reached as a real server (teacher.kind "
             "openai)")
    assert text.split("\n")[2].startswith("> **Simulated teacher.**") and named in text
    assert teacher_line(spec, {"requests_simulated": 2, "requests_real": 0}) == named
    assert f"teacher: {named}" in summary_lines(ctl.store, "r1")
    assert main(["status", "r1", "--storage", ctl.store.uri]) == 0
    assert f"teacher: {named}" in " ".join(capsys.readouterr().out.split())  # as wrapped
    assert main(["status", "r1", "--storage", ctl.store.uri, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["teacher_simulated"] is True and got["spend"]["paid_requests_simulated"] == 2
    # resumed with a real teacher: 3 more requests, none of them the simulation's
    ctl.store.write_json("r1", paths.failed_attempt(1, job, "t1"),
                         {"requests": 3, "requests_simulated": 0, "requests_real": 3,
                          "cost": 0.01})
    text = Path(write_report(ctl.store, "r1")).read_text()
    assert text.split("\n")[2].startswith("> **Partly simulated teacher.** distillq's")
    assert ("`distillq-sim` at 127.0.0.1:8000 (a real OpenAI-compatible server); distillq's "
            "simulated teacher answered 2 of the run's requests, a real server 3") in text
