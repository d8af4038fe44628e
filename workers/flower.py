"""How tasks appear in Flower and in Celery events: run / cycle / job ids only — never payloads
or secrets.

Two layers:

- At the source: every distillq task message carries ``argsrepr`` = ``run=… cycle=… job=…`` and
  ``kwargsrepr`` = ``{}`` (``publish_options``; the controller's sender and ``DistillqTask``'s
  retries set them). Celery puts those strings, not the arguments, into its ``task-sent`` and
  ``task-received`` events, so no monitor ever receives the storage URI (which may carry
  credentials, ``s3://…?secret_key=…``).
- In Flower (``deploy/flowerconfig.py``): ``format_task`` rewrites rows of the web UI, and
  ``install_api_filter`` does the same for the HTTP API (``/api/tasks``, ``/api/task/info``),
  which Flower itself never passes through ``format_task``. Results, exceptions and tracebacks
  are redacted (passwords in URLs, secret-looking query parameters) and cut short.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from distillq.queues import ATTRIBUTE, GENERATE, PREPARE_TEACHER, SCORE, SELECT, TEST, TRAIN

_SECRET = re.compile(r"(?i)(://[^/@\s]*:)[^@\s]*@|((?:secret|key|token|password)[^=&]*=)[^&\s]*")
_ID_ARGS = {
    GENERATE: ("run", "cycle", "job"),
    ATTRIBUTE: ("run", "cycle", "job"),
    TRAIN: ("run", "cycle"),
    TEST: ("run", "cycle"),
    PREPARE_TEACHER: ("run",),
    SCORE: ("run", "cycle", "job"),
    SELECT: ("run", "cycle"),
}
_DESCRIBED = re.compile(r"^(?:run|cycle|job)=\S*(?: (?:run|cycle|job)=\S*)*$")
HIDDEN = "…"


def redact(text: str) -> str:
    """Hide passwords in URLs and secret-looking query parameters."""
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "***" + ("@" if m.group(1) else ""),
                       text)


def describe(name: str, args: list[Any]) -> str:
    """``run=r1 cycle=2 job=c02-0007`` for distillq tasks; nothing else is shown."""
    keys = _ID_ARGS.get(name)
    if keys is None:
        return ""
    return " ".join(f"{k}={v}" for k, v in zip(keys, args, strict=False))


def publish_options(name: str, args: list[Any] | tuple[Any, ...] | None) -> dict[str, str]:
    """``send_task`` / ``apply_async`` options that keep arguments out of events and monitors."""
    return {"argsrepr": describe(name, list(args or [])) or HIDDEN, "kwargsrepr": "{}"}


def _parse_args(raw: Any) -> list[Any]:
    if isinstance(raw, list | tuple):
        return list(raw)
    try:
        value = ast.literal_eval(str(raw))
    except (ValueError, SyntaxError):
        return []
    return list(value) if isinstance(value, list | tuple) else []


def public_args(name: str, raw: Any) -> str:
    """The ids of a task's arguments; an ``argsrepr`` already in that form is kept as is."""
    if isinstance(raw, str) and _DESCRIBED.match(raw.strip()):
        return raw.strip()
    return describe(name, _parse_args(raw)) or HIDDEN


def format_task(task: Any) -> Any:
    """Flower's ``format_task`` hook: replace arguments by ids, drop kwargs and results."""
    task.args = public_args(str(task.name), task.args)
    task.kwargs = ""
    if getattr(task, "result", None):
        task.result = redact(str(task.result))[:200]
    if getattr(task, "exception", None):
        task.exception = redact(str(task.exception))[:500]
    if getattr(task, "traceback", None):
        task.traceback = redact(str(task.traceback))[-2000:]
    return task


def public_task(task: dict[str, Any]) -> dict[str, Any]:
    """One task of Flower's HTTP API (a dict) with the same rules as ``format_task``."""
    out = dict(task)
    out["args"] = public_args(str(out.get("name")), out.get("args"))
    out["kwargs"] = ""
    for key, limit in (("result", 200), ("exception", 500)):
        if out.get(key):
            out[key] = redact(str(out[key]))[:limit]
    if out.get("traceback"):
        out["traceback"] = redact(str(out["traceback"]))[-2000:]
    return out


def install_api_filter() -> None:
    """Make Flower's task API (list and info) go through ``public_task``. Idempotent."""
    # deferred: Flower (and tornado) are loaded only in the Flower process, never by a worker
    from flower.api import tasks as api
    from flower.utils import tasks as utils
    from tornado import web

    if getattr(utils.as_dict, "_distillq", False):
        return
    original = utils.as_dict

    def as_dict(task: Any) -> dict[str, Any]:
        return public_task(original(task))

    as_dict._distillq = True  # type: ignore[attr-defined]
    utils.as_dict = as_dict

    @web.authenticated
    def info(self: Any, taskid: str) -> None:
        task = utils.get_task_by_id(self.application.events, taskid)
        if not task:
            raise web.HTTPError(404, f"Unknown task '{taskid}'")
        response = public_task(task.as_dict())
        if task.worker is not None:
            response["worker"] = task.worker.hostname
        self.write(response)

    api.TaskInfo.get = info
