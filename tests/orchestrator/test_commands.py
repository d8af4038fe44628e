"""Commands (orchestrator/commands.py, orchestrator/cli.py): resume and submit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from controller_kit import (
    Sent,
    commit_jobs,
    failed_in_cycle_one,
    make_spec,
)
from manifestkit import decision

from distillq.manifest import save_manifest
from orchestrator.controller import Controller
from orchestrator.runs import load_manifest
from storage.store import ShardStore


def test_resume_sends_the_failed_jobs_of_a_failed_run_again(
    setup: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from distillq.errors import InvalidInputError
    from orchestrator.commands import cmd_resume

    ctl, sent, clock, job = failed_in_cycle_one(setup)
    ctl.redis.set("dq:r1:resends", 2)

    monkeypatch.setenv("REDIS_URL", redis_url)
    args = argparse.Namespace(storage=ctl.store.uri, run_id="r1")
    assert cmd_resume(args) == 0
    # sends counted before the failure start again from zero
    assert not ctl.redis.exists("dq:r1:inflight", "dq:r1:started", "dq:r1:resends")
    assert ctl.store.list_names("r1", "cycle=1/failed") == []
    (kept,) = ctl.store.list_names("r1", "cycle=1/failed-before-resume")
    assert kept.startswith(f"generate-{job}.")
    sent.clear()
    again = Controller(ctl.store, ctl.redis, "r1", lambda *a: sent.append(Sent(*a)), clock=clock)
    assert again.tick() == "running"
    assert [s.job for s in sent if s.task == "distillq.generate"].count(job) == 1

    save_manifest(ctl.store, load_manifest(ctl.store, "r1").model_copy(update={"status": "done"}))
    with pytest.raises(InvalidInputError, match="is done: there is nothing to resume"):
        cmd_resume(args)


def test_resume_takes_corrected_teacher_settings_and_records_them(
    setup: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in the teacher's model (or URL, key source, rates) is mended on resume without
    a new run: the change is checked, recorded in the manifest, and nothing done is redone."""
    import argparse

    from distillq.errors import InvalidInputError, SpecError
    from orchestrator.commands import cmd_resume
    from workers.context import run_context

    ctl, _, _, _ = failed_in_cycle_one(setup)
    monkeypatch.setenv("REDIS_URL", redis_url)

    def resume(*teacher: str) -> int:
        return cmd_resume(argparse.Namespace(storage=ctl.store.uri, run_id="r1",
                                             teacher=list(teacher)))

    before = ctl.store.read_json("r1", "manifest.json")
    assert run_context(ctl.store.uri, "r1").spec.teacher.model == before["spec"]["teacher"][
        "model"], "a worker process that ran a job of the run before the resume"
    for bad, error in ((("kind=openai",), "teacher.kind cannot be changed on resume"),
                       (("rpm=-5",), "teacher.rpm"),
                       (("model",), "expected FIELD=VALUE")):
        with pytest.raises((InvalidInputError, SpecError), match=error):
            resume(*bad)
        assert ctl.store.read_json("r1", "manifest.json") == before, "nothing written"
    assert resume("model=teacher-v2", "teacher.rpm=30", "json_mode=true") == 0
    manifest = load_manifest(ctl.store, "r1")
    assert manifest.status == "running"
    teacher = manifest.run_spec().teacher
    assert (teacher.model, teacher.rpm, teacher.json_mode) == ("teacher-v2", 30, True)
    (change,) = manifest.teacher_changes
    assert change.changes == {"model": [before["spec"]["teacher"]["model"], "teacher-v2"],
                              "rpm": [before["spec"]["teacher"]["rpm"], 30],
                              "json_mode": [before["spec"]["teacher"].get("json_mode"), True]}
    assert [d.model_dump() for d in manifest.decisions] == before["decisions"], "cycle 0 kept"
    assert run_context(ctl.store.uri, "r1").spec.teacher.model == "teacher-v2", \
        "a worker sees the change at its next task"
    with pytest.raises(InvalidInputError, match="is running: cancel it"):
        resume("model=teacher-v3")


def test_submit_to_an_unreachable_redis_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from orchestrator.cli import main

    spec = make_spec(tmp_path)
    path = tmp_path / "spec.yaml"
    data = spec.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("REDIS_URL", "redis://:secret@127.0.0.1:1/0")
    assert main(["submit", str(path)]) == 3
    err = capsys.readouterr().err
    assert "cannot reach Redis at 127.0.0.1:1/0" in err and "secret" not in err
    assert not (tmp_path / "store").exists() or ShardStore(spec.storage).list_runs() == []
    monkeypatch.setenv("REDIS_URL", "http://127.0.0.1:1")
    assert main(["submit", str(path)]) == 2
    assert "REDIS_URL is not a Redis URL" in capsys.readouterr().err


def test_status_of_a_served_run_shows_the_spend_still_in_flight(
    setup: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """Storage records a job's answers when the job ends; the run's counter in Redis has them
    as they come back. `status` (with REDIS_URL) shows the difference."""
    import argparse
    import json

    from orchestrator.commands import cmd_status
    from workers.teachers.accounting import record_spend

    ctl, _, _ = setup()
    commit_jobs(ctl, 1, ["c01-0000"])  # one job of cycle 1 done, its stats recorded
    ctl.store.write_json("r1", "cycle=1/jobstats/c01-0000.json",
                         {"tokens_in": 100, "tokens_out": 50, "cost": 0.5, "requests": 1})
    manifest = load_manifest(ctl.store, "r1")
    manifest.decide(decision(0, 0))  # cycle 1 under way
    save_manifest(ctl.store, manifest)
    record_spend(ctl.redis, "r1", 400, 200, 2.0, 3, 12)  # three answers so far, one job done
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert cmd_status(argparse.Namespace(storage=ctl.store.uri, run_id="r1", json=True)) == 0
    spend = json.loads(capsys.readouterr().out)["spend"]
    assert spend["paid_tokens_in"] == 100 and spend["paid_cost"] == 0.5
    assert spend["in_flight_or_unrecorded_tokens"] == 600 - 150
    assert spend["in_flight_or_unrecorded_cost"] == 1.5
    monkeypatch.delenv("REDIS_URL")
    assert cmd_status(argparse.Namespace(storage=ctl.store.uri, run_id="r1", json=True)) == 0
    assert "in_flight_or_unrecorded_tokens" not in json.loads(capsys.readouterr().out)["spend"]


def test_status_list_and_report_print_tables_for_people_and_json_on_request(
        setup: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from controller_kit import plan_cycle_one

    from orchestrator.cli import main

    monkeypatch.delenv("REDIS_URL", raising=False)
    ctl, _, _ = setup()
    plan_cycle_one(ctl)  # cycle 0 decided at 0.5
    uri = ctl.store.uri

    assert main(["status", "r1", "--storage", uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run r1: running\nteacher: SIMULATED")
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines()
             if line.startswith("│")]
    assert cells == [["0", "0.5000", "continue", "0", "0.0000", "0.0000"]]
    assert main(["status", "r1", "--storage", uri, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cycles"][0]["value"] == 0.5 and summary["status"] == "running"

    assert main(["status", "--storage", uri]) == 0, "no run: the runs, as `list` shows them"
    listed = capsys.readouterr().out
    assert main(["list", "--storage", uri]) == 0
    assert capsys.readouterr().out == listed
    assert [c.strip() for c in listed.splitlines()[3].strip("│").split("│")][:4] == \
        ["r1", "running", "1", "macro_f1 0.5000"]

    assert main(["report", "r1", "--storage", uri, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert Path(got["report"]).is_file() and got["cycles"] == summary["cycles"]
    assert main(["report", "r1", "--storage", uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"report: {got['report']}\nrun r1: running") and "┃ cycle ┃" in out


def test_the_tables_print_text_as_it_is_not_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.tables import print_runs, print_status

    cause = "1 generate job of cycle 1 failed: [type=literal_error] [/oops]"
    spend = {f"{part}_{k}": 0.0 for part in ("paid", "wasted")
             for k in ("tokens_in", "tokens_out", "tokens_cached", "cost", "requests")}
    print_status({"run_id": "r", "status": "failed", "stop_reason": "x [/y]", "causes": [cause],
                  "metric": "macro_f1", "cycles": [], "spend": spend}, teacher="t [b]")
    print_runs([{"run_id": "r", "status": "invalid", "error": "bad [type=missing]"}])
    out = capsys.readouterr().out
    assert cause in out and "x [/y]" in out and "t [b]" in out and "bad [type=missing]" in out
