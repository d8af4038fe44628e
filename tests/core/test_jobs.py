"""Job ids (distillq/jobs.py): one type, each rendering read back where it is read."""

from __future__ import annotations

import pytest

from distillq.jobs import (
    JobId,
    failed_names,
    key_cycle,
    plan_index,
    plan_name,
    request_id,
    sent_job,
)


def test_one_generate_job_rendered_for_each_use() -> None:
    job = JobId.generate(1, plan_name(1, 3))
    assert job.name == "c01-0003" and plan_index(1, job.name) == 3
    assert job.key == "c01/gen/c01-0003"
    assert job.task_id("r1", 2) == "r1:c01/gen/c01-0003:2"
    assert sent_job(job.task_id("r1", 2)) == "r1:c01/gen/c01-0003"
    assert job.failed_record == "cycle=1/failed/generate-c01-0003.json"
    assert (job.task, job.args("r1", "/s")) == ("distillq.generate", ["r1", 1, "c01-0003", "/s"])
    assert request_id(job.name, 7) == "c01-0003-r07"


def test_the_single_jobs_of_a_cycle_and_of_a_run() -> None:
    train, test = JobId.single("train", 12), JobId.single("test", 4)
    teacher = JobId.single("prepare_teacher")
    assert (train.key, test.key, teacher.key) == ("c12/train", "test", "teacher")
    assert train.failed_record == "cycle=12/failed/train-train.json"
    assert test.failed_record == "cycle=4/failed/test-test.json"
    assert teacher.failed_record == "cycle=0/failed/prepare_teacher-teacher.json"
    assert train.args("r", "/s") == ["r", 12, "/s"] and teacher.args("r", "/s") == ["r", "/s"]
    assert JobId.attribute(0, "seed").key == "c00/attr/seed"


def test_renderings_read_back() -> None:
    assert key_cycle("c01/gen/c01-0003") == 1 and key_cycle("c12/train") == 12
    assert key_cycle("c100/attr/c100-0000") == 100
    assert key_cycle("test") is None and key_cycle("teacher") is None
    assert key_cycle("cx/train") is None and key_cycle("c/train") is None
    assert plan_index(2, "c01-0003") is None and plan_index(1, "seed") is None
    assert sent_job("not-the-controllers") == "not-the-controllers"
    listing = ["generate-c01-0000.json", "attribute-c01-0001.json", "generate-x.tmp"]
    assert failed_names(listing, "generate") == {"c01-0000"}


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown job kind 'gen'"):
        JobId("gen", 1, "c01-0000")
