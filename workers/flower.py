"""How tasks appear in Flower: run / cycle / job ids only — never payloads or secrets."""

from __future__ import annotations

import ast
import re
from typing import Any

_SECRET = re.compile(r"(?i)(://[^/@\s]*:)[^@\s]*@|((?:secret|key|token|password)[^=&]*=)[^&\s]*")
_ID_ARGS = {
    "distillq.generate": ("run", "cycle", "job"),
    "distillq.attribute": ("run", "cycle", "job"),
    "distillq.train": ("run", "cycle"),
    "distillq.test": ("run", "cycle"),
    "distillq.prepare_teacher": ("run",),
}


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


def _parse_args(raw: Any) -> list[Any]:
    if isinstance(raw, list | tuple):
        return list(raw)
    try:
        value = ast.literal_eval(str(raw))
    except (ValueError, SyntaxError):
        return []
    return list(value) if isinstance(value, list | tuple) else []


def format_task(task: Any) -> Any:
    """Flower's ``format_task`` hook: replace arguments by ids, drop kwargs and results."""
    task.args = describe(str(task.name), _parse_args(task.args)) or "…"
    task.kwargs = ""
    if getattr(task, "result", None):
        task.result = redact(str(task.result))[:200]
    if getattr(task, "exception", None):
        task.exception = redact(str(task.exception))[:500]
    return task
