"""What a task needs to know about its run: the store, the spec and the taxonomy.

Messages carry ids and paths only; everything else is read from the run's manifest in storage
and cached per process (a manifest's spec never changes once the run starts).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import redis

from distillq import paths
from distillq.errors import PermanentError
from distillq.keys import EVENTS_KEY, STARTED_KEY, TEACHER_URL_KEY
from distillq.spec import RunSpec, parse_spec
from storage.store import ShardStore


@dataclass(frozen=True)
class RunContext:
    store: ShardStore
    run_id: str
    spec: RunSpec
    taxonomy: tuple[str, ...]


@lru_cache(maxsize=64)
def open_store(uri: str) -> ShardStore:
    return ShardStore(uri)


_ctx_lock = threading.Lock()
_ctx_cache: dict[tuple[str, str], RunContext] = {}


def run_context(storage: str, run_id: str) -> RunContext:
    """Load (once per process) the run's manifest and spec."""
    key = (storage, run_id)
    with _ctx_lock:
        if key in _ctx_cache:
            return _ctx_cache[key]
    store = open_store(storage)
    manifest = store.read_json(run_id, paths.MANIFEST)
    if manifest is None:
        raise PermanentError(f"run {run_id!r} has no manifest in {storage}")
    spec = parse_spec(manifest["spec"], f"manifest of {run_id}")
    ctx = RunContext(
        store=store,
        run_id=run_id,
        spec=spec,
        taxonomy=tuple(manifest["taxonomy"]),
    )
    with _ctx_lock:
        _ctx_cache[key] = ctx
    return ctx


_redis_lock = threading.Lock()
_redis_clients: dict[str, redis.Redis] = {}


def redis_client(url: str) -> redis.Redis:
    """One connection pool per Redis URL per process."""
    with _redis_lock:
        if url not in _redis_clients:
            _redis_clients[url] = redis.Redis.from_url(url, health_check_interval=30)
        return _redis_clients[url]


def workdir(run_id: str, storage: str) -> Path:
    """Scratch space for a worker (model caches, epoch checkpoints); never the source of truth.

    One folder per run *and storage*: run ids are unique within a storage only, and two runs
    of the same id in different storages must never share (or delete) each other's scratch.
    """
    root = Path(os.environ.get("DISTILLQ_WORKDIR") or Path(tempfile.gettempdir()) / "distillq-work")
    path = root / f"{run_id}-{hashlib.sha256(storage.encode()).hexdigest()[:10]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# The job id under which a run's one-per-cycle (or per-run) jobs record a failure.
SINGLE_JOBS = {"train": "train", "test": "test", "prepare_teacher": "teacher"}


TEACHER_URL_FILE = "teacher_url.json"
ATTRIBUTION_QUALITY_FILE = "attribution_quality.json"  # rationale quality, once per run


def as_text(value: Any) -> str:
    """A Redis reply (bytes unless the client decodes) as text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def teacher_base_url(client: redis.Redis, store: Any, run_id: str) -> str | None:
    """Where a run's (simulated) teacher answers when it was started beside the run: the Redis
    key, else the copy in storage (Redis may have been flushed); None: the spec's base_url."""
    try:
        raw = client.get(TEACHER_URL_KEY.format(run_id=run_id))
    except redis.RedisError:
        raw = None
    if raw:
        return as_text(raw)
    saved = store.read_json(run_id, TEACHER_URL_FILE)
    return str(saved["base_url"]) if saved and saved.get("base_url") else None


def send_key(task_id: str) -> str:
    """The controller's task ids are ``<run>:<job key>:<send number>``: the part that names
    the job, whichever send of it a worker got."""
    head, _, last = task_id.rpartition(":")
    return head if head and last.isdigit() else task_id


def mark_started(client: redis.Redis, run_id: str, task_id: str | None) -> None:
    """Tell the controller a job left the queue (a job still queued is not re-sent at its
    deadline: see ``Controller._ensure``). Best effort: a Redis error is ignored."""
    if not task_id:
        return
    try:
        client.hset(STARTED_KEY.format(run_id=run_id), send_key(task_id), 1)
    except redis.RedisError:
        pass


def notify(client: redis.Redis, run_id: str, event: dict[str, Any]) -> None:
    """Wake the run's controller at once (it also polls, so a lost event only costs a tick)."""
    event = {**event, "at": time.time()}
    try:
        client.rpush(EVENTS_KEY.format(run_id=run_id), json.dumps(event))
    except redis.RedisError:
        pass  # the controller's next poll sees the committed shard anyway
