"""What a task needs to know about its run: the store, the spec and the taxonomy.

Messages carry ids and paths only; everything else is read from the run's manifest in storage,
at every task (``orchestrator resume --teacher`` may change the teacher's settings), its spec
parsed once per resume and process.
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
from distillq.jobs import sent_job
from distillq.keys import EVENTS_KEY, STARTED_KEY, TEACHER_URL_KEY, as_text
from distillq.manifest import Manifest, require_manifest
from distillq.spec import RunSpec
from storage.store import ShardStore


@dataclass(frozen=True)
class RunContext:
    store: ShardStore
    run_id: str
    spec: RunSpec
    taxonomy: tuple[str, ...]
    manifest: Manifest  # as read for this task (its status, a pending cancel's baseline)


@lru_cache(maxsize=64)
def open_store(uri: str) -> ShardStore:
    return ShardStore(uri)


_spec_lock = threading.Lock()
_spec_cache: dict[tuple[str, str, float | None], RunSpec] = {}


def run_context(storage: str, run_id: str) -> RunContext:
    """The run's manifest, read at every task (a resume may have changed the teacher's
    settings; the task reads the run's status from it too), and its spec, parsed once per
    resume and process."""
    store = open_store(storage)
    manifest = require_manifest(store, run_id)  # ManifestError / SpecError: permanent
    key = (storage, run_id, manifest.resumed_at)
    with _spec_lock:
        spec = _spec_cache.get(key)
    if spec is None:
        spec = manifest.run_spec()
        with _spec_lock:
            if len(_spec_cache) >= 64:
                _spec_cache.pop(next(iter(_spec_cache)))
            _spec_cache[key] = spec
    return RunContext(store=store, run_id=run_id, spec=spec,
                      taxonomy=tuple(manifest.taxonomy), manifest=manifest)


_seed_lock = threading.Lock()
_seed_cache: dict[tuple[str, str], tuple[str, ...]] = {}


def seed_texts(ctx: RunContext) -> tuple[str, ...]:
    """The run's seed texts (read once per process): a teacher's copy of one adds nothing."""
    key = (ctx.store.uri, ctx.run_id)
    with _seed_lock:
        if key in _seed_cache:
            return _seed_cache[key]
    if ctx.store.has(ctx.run_id, 0, "generated", "seed"):
        seed = ctx.store.read_shard(ctx.run_id, 0, "generated", "seed")
        texts = tuple(str(t) for t in seed.column("text").to_pylist())
    else:  # a run made by hand without one (tests): nothing to compare with
        texts = ()
    with _seed_lock:
        if len(_seed_cache) >= 64:
            _seed_cache.pop(next(iter(_seed_cache)))
        _seed_cache[key] = texts
    return texts


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


def teacher_base_url(client: redis.Redis, store: Any, run_id: str) -> str | None:
    """Where a run's (simulated) teacher answers when it was started beside the run: the Redis
    key, else the copy in storage (Redis may have been flushed); None: the spec's base_url."""
    try:
        raw = client.get(TEACHER_URL_KEY.format(run_id=run_id))
    except redis.RedisError:
        raw = None
    if raw:
        return as_text(raw)
    saved = store.read_json(run_id, paths.TEACHER_URL)
    return str(saved["base_url"]) if saved and saved.get("base_url") else None


# KEYS: the started table; ARGV: field, time ('' = the Redis server's clock)
_BEAT_LUA = """
local at = ARGV[2]
if at == '' then
  local t = redis.call('TIME')
  at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
redis.call('HSET', KEYS[1], ARGV[1], at)
return at
"""


def mark_started(client: redis.Redis, run_id: str, task_id: str | None,
                 at: float | None = None) -> None:
    """Tell the controller a job is being worked on, now (``at``: a time of the caller's
    clock instead of the Redis server's): at its start, and then as a heartbeat while it runs
    or waits for a request slot. The controller re-sends a started job only once its last
    mark is older than the job's deadline, and a job still queued not at its deadline (see
    ``orchestrator.dispatch.Dispatcher.ensure``). Best effort: a Redis error is ignored."""
    if not task_id:
        return
    try:
        client.eval(_BEAT_LUA, 1, STARTED_KEY.format(run_id=run_id), sent_job(task_id),
                    "" if at is None else repr(float(at)))
    except redis.RedisError:
        pass


def notify(client: redis.Redis, run_id: str, event: dict[str, Any]) -> None:
    """Wake the run's controller at once (it also polls, so a lost event only costs a tick)."""
    event = {**event, "at": time.time()}
    try:
        client.rpush(EVENTS_KEY.format(run_id=run_id), json.dumps(event))
    except redis.RedisError:
        pass  # the controller's next poll sees the committed shard anyway
