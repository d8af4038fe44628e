"""The ``setup`` fixture of the orchestrator tests: a controller over a fresh run, its sends
recorded, its clock in the test's hand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from controller_kit import Clock, Sent, make_spec

from orchestrator.controller import Controller
from orchestrator.runs import create_run
from storage.store import ShardStore

Setup = Callable[..., tuple[Controller, list[Sent], Clock]]


@pytest.fixture
def setup(tmp_path: Path, redis_client: redis.Redis) -> Setup:
    """``setup(**spec_sections)`` -> (controller, sends made, clock)."""

    def make(**over: Any) -> tuple[Controller, list[Sent], Clock]:
        spec = make_spec(tmp_path, **over)
        store = ShardStore(spec.storage)
        create_run(spec, store)
        sent: list[Sent] = []
        clock = Clock()
        ctl = Controller(store, redis_client, "r1", lambda *a: sent.append(Sent(*a)), clock=clock)
        return ctl, sent, clock

    return make
