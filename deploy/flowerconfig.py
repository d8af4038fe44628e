"""Flower settings for distillq: readable task rows, no payloads, no secrets.

Run: ``celery -A workers.app flower --conf=deploy/flowerconfig.py`` (credentials from
``FLOWER_BASIC_AUTH=user:password`` in the environment; Flower refuses requests without them).
"""

from __future__ import annotations

from typing import Any

from workers.flower import format_task as _format


def format_task(task: Any) -> Any:
    return _format(task)


persistent = True
db = "/data/flower.db"
