"""Driving runs: the controller loop, its Redis lock, and the Celery sender.

A tick happens at once when a worker reports a job done (an event on the run's Redis list) and
otherwise every ``poll_s`` seconds, so no cycle waits out a polling interval. One controller
drives a run at a time: it holds ``dq:{run}:lock`` (a token with expiry, refreshed every tick).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from distillq import paths
from distillq.errors import DistillqError, InvalidInputError, SpecError
from distillq.keys import EVENTS_KEY, LOCK, RUNS_KEY
from distillq.queues import ROUTES
from distillq.runstate import TERMINAL
from orchestrator.controller import Controller
from orchestrator.heartbeat import Heartbeat
from orchestrator.runs import check_run_id, check_storage
from storage.store import ShardStore
from workers.context import as_text
from workers.flower import publish_options

log = logging.getLogger("distillq.driver")

LOCK_TTL_MS = 30_000


def celery_sender(app: Celery) -> Callable[[str, list[Any], str], None]:
    def send(task: str, args: list[Any], task_id: str) -> None:
        app.send_task(task, args=args, task_id=task_id, queue=ROUTES[task]["queue"],
                      **publish_options(task, args))  # ids only in events and Flower

    return send


def _pid_namespace() -> str:
    """Where a pid means this process's own kind of pid: host name, kernel boot and PID
    namespace. Two containers may share a host name (and a boot); their PID namespaces differ,
    so neither judges the other's pids. Where /proc is missing, the host name alone."""
    place = socket.gethostname()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        ns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return place
    return f"{place}~{boot}~{ns}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``SET key token NX PX ttl``; refreshed only by its holder (compare-and-set in Lua).

    The token names its holder (``place:pid:random``, the place being host name, kernel boot
    and PID namespace). A holder that died in *this* place (its pid is gone) is taken over at
    once, so a controller restarted after a crash resumes without waiting out the TTL; a holder
    anywhere else (another host, or another container with the same host name) is trusted until
    its lock expires.
    """

    _REFRESH = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end")
    _STEAL = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
              "return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) else return 0 end")
    _RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                "return redis.call('del', KEYS[1]) else return 0 end")

    def __init__(self, client: redis.Redis, run_id: str, ttl_ms: int = LOCK_TTL_MS,
                 store: ShardStore | None = None):
        self.client, self.key, self.ttl = client, LOCK.format(run_id=run_id), ttl_ms
        self.token = f"{_pid_namespace()}:{os.getpid()}:{secrets.token_hex(8)}"
        # with the run's storage: also kept from controllers on other Redis servers
        self.mark = Heartbeat(store, client, run_id, self.token, ttl_ms) \
            if store is not None else None

    def acquire(self) -> bool:
        """True if this holder may tick: the Redis lock is its, and (with a storage) no
        controller on another Redis drives the run (``orchestrator.heartbeat``)."""
        if not self._acquire_in_redis():
            return False
        return self.mark is None or self.mark.clear()

    def _acquire_in_redis(self) -> bool:
        if self.client.set(self.key, self.token, nx=True, px=self.ttl):
            return True
        if self.client.eval(self._REFRESH, 1, self.key, self.token, self.ttl):
            return True
        return self._take_over_dead_holder()

    def _take_over_dead_holder(self) -> bool:
        raw = self.client.get(self.key)
        if raw is None:
            return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl))
        holder = as_text(raw)
        place, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if place != _pid_namespace() or not pid.isdigit() or _pid_alive(int(pid)):
            return False
        log.warning("lock %s: holder %s is dead; taking over", self.key, holder)
        return bool(self.client.eval(self._STEAL, 1, self.key, holder, self.token, self.ttl))

    def refresh(self) -> bool:
        """Extend the lock if this holder still has it (never takes a free or foreign one),
        and then renew its mark in storage."""
        held = bool(self.client.eval(self._REFRESH, 1, self.key, self.token, self.ttl))
        if held and self.mark is not None:
            try:
                self.mark.beat()
            except Exception as exc:  # the keeper thread must go on refreshing
                log.warning("lock %s: controller mark not renewed: %s", self.key, exc)
        return held

    def release(self) -> None:
        try:
            self.client.eval(self._RELEASE, 1, self.key, self.token)
        finally:
            if self.mark is not None:
                self.mark.stop()


class LockKeeper:
    """Refreshes the locks a process holds every third of their TTL from a background thread,
    so a long tick (planning 100k jobs takes over a minute) never outlives its lock and lets a
    second controller in. Used as a context manager around a controller loop. The price: a
    tick that hangs for good keeps its run's lock until its process is stopped (a dead process
    on the same host is taken over at once, one elsewhere after the TTL)."""

    def __init__(self, locks: dict[str, RunLock], ttl_ms: int = LOCK_TTL_MS):
        self.locks, self.every = locks, ttl_ms / 3000.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lock-keeper", daemon=True)

    def __enter__(self) -> LockKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.refresh_all()

    def refresh_all(self) -> None:
        """One round: refresh every lock held now (a Redis error is logged, not raised)."""
        try:
            held = tuple(self.locks.values())
        except RuntimeError:  # the dict changed under us: next round
            return
        for lock in held:
            try:
                lock.refresh()
            except redis.RedisError as exc:
                log.warning("lock %s not refreshed: %s", lock.key, exc)


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
        manifest = store.read_json(run_id, paths.MANIFEST)
        if isinstance(manifest, dict):
            manifest.update(status="failed", stop_reason=reason, finished_at=time.time())
            store.write_json(run_id, paths.MANIFEST, manifest)
            return True
    except (DistillqError, OSError) as exc:
        log.error("run=%s could not be marked failed: %s", run_id, exc)
    return False


def _running_in(storages: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for uri in storages:
        store = ShardStore(uri)
        for run_id in store.list_runs():
            manifest = store.read_json(run_id, paths.MANIFEST) or {}
            if manifest.get("status") not in TERMINAL:
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
    except SpecError as exc:  # the manifest's spec no longer validates: retrying will not
        # mend it (a missing manifest or a storage error may be a mount that comes back)
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
        manifest = store.read_json(run_id, paths.MANIFEST)
    except (DistillqError, OSError) as exc:  # storage gone: `resume` cannot have written it
        log.warning("run=%s: manifest unreadable after it ended (%s)", run_id, exc)
        return
    status = manifest.get("status") if isinstance(manifest, dict) else None
    if status is not None and status not in TERMINAL:
        log.info("run=%s was resumed as it ended (%s): registered again", run_id, status)
        client.hset(RUNS_KEY, run_id, store.uri)
        known[run_id] = store.uri
