"""Flower settings for distillq: readable task rows, no payloads, no secrets, no anonymous access.

Run: ``celery -A workers.app flower --conf=deploy/flowerconfig.py`` with
``FLOWER_BASIC_AUTH=user:password`` in the environment (Flower reads ``FLOWER_*`` variables
before this file; nothing here overrides them). Without credentials Flower answers 401.

Flower applies this file *after* its ``FLOWER_*`` environment variables, so settings that a
deployment may want to change are read from the environment here: ``FLOWER_DB`` (the state
file, default ``/data/flower.db`` on the compose volume) and ``FLOWER_PERSISTENT``.
"""

from __future__ import annotations

import os
from typing import Any

from workers.flower import format_task as _format
from workers.flower import install_api_filter

if not os.environ.get("FLOWER_BASIC_AUTH") and not os.environ.get("FLOWER_AUTH"):
    raise SystemExit("deploy/flowerconfig.py: set FLOWER_BASIC_AUTH=user:password "
                     "(Flower must not serve task data without authentication)")

# Flower's HTTP API (/api/tasks, /api/task/info/<id>) bypasses format_task: filter it too.
install_api_filter()


def format_task(task: Any) -> Any:
    return _format(task)


persistent = os.environ.get("FLOWER_PERSISTENT", "true").lower() in ("1", "true", "yes")
db = os.environ.get("FLOWER_DB", "/data/flower.db")
