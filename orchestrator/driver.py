"""Driving runs: the controller loop of one run (``drive``) or of every submitted run
(``serve``), and the Celery sender.

A tick happens at once when a worker reports a job done (an event on the run's Redis list) and
otherwise every ``poll_s`` seconds, so no cycle waits out a polling interval. One controller
drives a run at a time: it holds the run lock (``orchestrator.runlock``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from distillq.errors import DistillqError, InvalidInputError, ManifestError, SpecError
from distillq.keys import EVENTS_KEY, RUNS_KEY, as_text
from distillq.manifest import TERMINAL, read_manifest, save_manifest
from distillq.queues import ROUTES
from orchestrator.controller import Controller
from orchestrator.runlock import LockKeeper, RunLock
from orchestrator.runs import check_run_id, check_storage
from storage.store import ShardStore
from workers.flower import publish_options

log = logging.getLogger("distillq.driver")


def celery_sender(app: Celery) -> Callable[[str, list[Any], str], None]:
    def send(task: str, args: list[Any], task_id: str) -> None:
        app.send_task(task, args=args, task_id=task_id, queue=ROUTES[task]["queue"],
                      **publish_options(task, args))  # ids only in events and Flower

    return send


def wait_for_events(client: redis.Redis, run_ids: list[str], timeout: float) -> int:
    """Block until an event arrives for any of the runs (or timeout); drain them all."""
    keys = [EVENTS_KEY.format(run_id=r) for r in run_ids]
    got = client.blpop(keys, timeout=max(timeout, 0.01))
    if got is None:
        return 0
    n = 1
    for key in keys:
        while client.lpop(key) is not None:
            n += 1
    return n


def drive(store: ShardStore, client: redis.Redis, run_id: str, app: Celery,
          poll_s: float = 2.0, on_tick: Callable[[Controller], None] | None = None,
          should_stop: Callable[[], bool] = lambda: False) -> str:
    """Drive one run to its end (or until ``should_stop``); returns its status."""
    controller = Controller(store, client, run_id, celery_sender(app))
    lock = RunLock(client, run_id, store=store)
    status = "running"
    try:
        with LockKeeper({run_id: lock}):
            while not should_stop():
                if not _locked(lock, run_id):
                    time.sleep(1.0)
                    continue
                try:
                    status = controller.tick()
                    if on_tick:
                        on_tick(controller)
                    if status in TERMINAL:
                        return status
                    wait_for_events(client, [run_id], poll_s)
                except redis.RedisError as exc:  # storage holds the state: wait for Redis
                    log.warning("run=%s Redis unavailable (%s); retrying", run_id, exc)
                    time.sleep(max(poll_s, 1.0))
    finally:
        _release(lock)
    return status


def _locked(lock: RunLock, run_id: str) -> bool:
    try:
        if lock.acquire():
            return True
    except redis.RedisError as exc:
        log.warning("run=%s cannot reach Redis for the lock: %s", run_id, exc)
        return False
    log.info("run=%s is driven by another controller; waiting", run_id)
    return False


def _release(lock: RunLock) -> None:
    try:
        lock.release()
    except redis.RedisError:
        pass


def serve(client: redis.Redis, app: Celery, poll_s: float = 2.0,
          should_stop: Callable[[], bool] = lambda: False,
          storages: tuple[str, ...] = ()) -> None:
    """Drive every submitted run, several at once, until ``should_stop``.

    Redis is not the source of truth: runs this process has seen, and running runs found in
    ``storages``, are registered again if Redis loses its registry (a restart without
    persistence, a flush), and a Redis outage only pauses the loop.
    """
    locks: dict[str, RunLock] = {}
    controllers: dict[str, Controller] = {}
    known: dict[str, str] = _running_in(storages)
    try:
        with LockKeeper(locks):
            while not should_stop():
                try:
                    runs = _registered(client, known)
                    for run_id, uri in runs.items():
                        _serve_one(client, run_id, uri, app, locks, controllers, known)
                    wait_for_events(client, list(runs) or ["_idle"], poll_s)
                except redis.RedisError as exc:
                    log.warning("Redis unavailable (%s); retrying in %.0fs", exc,
                                max(poll_s, 1.0))
                    time.sleep(max(poll_s, 1.0))
    finally:  # another serve may take these runs over at once, not after the TTL
        for lock in locks.values():
            _release(lock)


def _mark_failed(store: ShardStore, run_id: str, reason: str) -> bool:
    """Record a failure the controller itself could not record (best effort: the manifest
    may be the broken part); the run is unregistered either way, and `resume` can retry it.
    True if the manifest now says so."""
    try:
        manifest = read_manifest(store, run_id)
        if manifest is not None:
            manifest.finish("failed", reason, time.time())
            save_manifest(store, manifest)
            return True
    except (DistillqError, OSError) as exc:
        log.error("run=%s could not be marked failed: %s", run_id, exc)
    return False


def _running_in(storages: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for uri in storages:
        store = ShardStore(uri)
        for run_id in store.list_runs():
            try:
                manifest = read_manifest(store, run_id)
            except ManifestError as exc:  # not ours to mend: the run is left out, and said so
                log.error("run=%s not driven: %s", run_id, exc)
                continue
            if manifest is not None and not manifest.ended:
                found[run_id] = store.uri
    return found


def _registered(client: redis.Redis, known: dict[str, str]) -> dict[str, str]:
    runs = {as_text(k): as_text(v) for k, v in client.hgetall(RUNS_KEY).items()}
    lost = {r: u for r, u in known.items() if r not in runs}
    if lost:
        log.warning("re-registering runs Redis no longer lists: %s", sorted(lost))
        mapping: dict[Any, Any] = lost
        client.hset(RUNS_KEY, mapping=mapping)
        runs.update(lost)
    known.update(runs)
    return runs


def _serve_one(client: redis.Redis, run_id: str, uri: str, app: Celery,
               locks: dict[str, RunLock], controllers: dict[str, Controller],
               known: dict[str, str]) -> None:
    try:
        check_run_id(run_id)
        check_storage(uri)
    except InvalidInputError as exc:  # registered by hand, or by an older deployment
        log.error("run=%r refused and unregistered: %s", run_id, exc)
        client.hdel(RUNS_KEY, run_id)
        known.pop(run_id, None)
        return
    if run_id not in controllers:
        store = ShardStore(uri)
        controllers[run_id] = Controller(store, client, run_id, celery_sender(app))
        locks[run_id] = RunLock(client, run_id, store=store)
    lock, ctl = locks[run_id], controllers[run_id]
    if not lock.acquire():
        return
    recorded = True  # the manifest holds the status the tick ended with
    try:
        status = ctl.tick()
    except redis.RedisError:
        raise
    except (SpecError, ManifestError) as exc:  # the manifest (or its spec) no longer
        # validates: retrying will not mend it (a missing manifest or a storage error may be
        # a mount that comes back)
        log.error("run=%s failed permanently: %s", run_id, exc)
        recorded = _mark_failed(ctl.store, run_id, f"controller: {exc}")
        status = "failed"
    except Exception:  # one broken run must not stop the others; a transient error heals
        log.exception("run=%s tick failed", run_id)
        return
    if status in TERMINAL:
        controllers.pop(run_id, None)
        locks.pop(run_id, None)
        lock.release()
        _unregister(client, run_id, ctl.store, known, recheck=recorded)
        log.info("run=%s finished: %s", run_id, status)


def _unregister(client: redis.Redis, run_id: str, store: ShardStore,
                known: dict[str, str], recheck: bool = True) -> None:
    """Drop a run that ended from the registry, unless `resume` reopened it meanwhile.

    `resume` writes the manifest first and registers the run after, so reading the manifest
    *after* the removal sees any resume whose registration the removal may have undone. Not
    with ``recheck=False``: the manifest could not be given the run's end, so it still says
    running, resumed or not."""
    client.hdel(RUNS_KEY, run_id)
    known.pop(run_id, None)
    if not recheck:
        return
    try:
        manifest = read_manifest(store, run_id)
    except (DistillqError, OSError) as exc:  # storage gone: `resume` cannot have written it
        log.warning("run=%s: manifest unreadable after it ended (%s)", run_id, exc)
        return
    if manifest is not None and not manifest.ended:
        log.info("run=%s was resumed as it ended (%s): registered again", run_id,
                 manifest.status)
        client.hset(RUNS_KEY, run_id, store.uri)
        known[run_id] = store.uri
