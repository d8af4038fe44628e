"""What Flower and Celery events may show of a task: ids, never payloads or secrets."""

from __future__ import annotations

from types import SimpleNamespace

from workers.app import app
from workers.flower import format_task, public_task, publish_options, redact

STORAGE = "s3://bucket/runs?access_key=AKIA123&secret_key=hunter2&endpoint_override=http://m:9000"


def test_publish_options_carry_ids_only() -> None:
    opts = publish_options("distillq.generate", ["r1", 2, "c02-0007", STORAGE])
    assert opts == {"argsrepr": "run=r1 cycle=2 job=c02-0007", "kwargsrepr": "{}"}
    assert publish_options("distillq.train", ["r1", 3, STORAGE])["argsrepr"] == "run=r1 cycle=3"
    assert publish_options("other.task", ["payload"])["argsrepr"] == "…"


def test_task_messages_carry_the_ids_as_argsrepr() -> None:
    from workers.app import configure

    configure("redis://localhost:1/0")  # nothing is sent: the message is only built
    msg = app.amqp.create_task_message(
        "tid", "distillq.generate", ["r1", 1, "c01-0000", STORAGE], {}, create_sent_event=True,
        **publish_options("distillq.generate", ["r1", 1, "c01-0000", STORAGE]))
    assert msg.headers["argsrepr"] == "run=r1 cycle=1 job=c01-0000"
    assert msg.sent_event["args"] == "run=r1 cycle=1 job=c01-0000"
    assert "hunter2" not in str(msg.sent_event) and "hunter2" not in str(msg.headers)


def test_flower_rows_and_api_dicts_show_ids_and_redact() -> None:
    raw = repr(("r1", 1, "c01-0003", STORAGE))
    row = format_task(SimpleNamespace(name="distillq.generate", args=raw, kwargs="{'x': 1}",
                                      result=None, exception="boom redis://:pw@h:6379/0",
                                      traceback=None))
    assert row.args == "run=r1 cycle=1 job=c01-0003" and row.kwargs == ""
    assert "pw" not in row.exception and "***" in row.exception
    kept = format_task(SimpleNamespace(name="distillq.generate", args="run=r1 cycle=1 job=c01-3",
                                       kwargs="{}", result=None, exception=None, traceback=None))
    assert kept.args == "run=r1 cycle=1 job=c01-3"
    api = public_task({"name": "distillq.train", "args": raw, "kwargs": "{}",
                       "result": "{'macro_f1': 0.5}", "traceback": f"at {STORAGE}"})
    assert api["args"] == "run=r1 cycle=1" and api["kwargs"] == ""
    assert "hunter2" not in api["traceback"] and "AKIA123" not in api["traceback"]
    assert public_task({"name": "celery.chord_unlock", "args": "[1]"})["args"] == "…"
    assert redact("redis://:secret@host/0") == "redis://:***@host/0"


def test_install_api_filter_wraps_flowers_api_once() -> None:
    from flower.api import tasks as api
    from flower.utils import tasks as utils

    from workers.flower import install_api_filter

    install_api_filter()
    first = utils.as_dict
    install_api_filter()
    assert utils.as_dict is first and getattr(first, "_distillq", False)
    assert api.TaskInfo.get.__name__ == "info"
