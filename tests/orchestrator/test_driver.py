"""The driver (orchestrator/driver.py): the run lock, the lock keeper and the serve loop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from controller_kit import (
    Sent,
    make_spec,
)
from runkit import wait_for

from distillq import paths
from distillq.manifest import save_manifest
from orchestrator.runs import create_run, load_manifest
from storage.store import ShardStore


def test_run_lock_is_exclusive_and_a_dead_local_holder_is_taken_over(redis_client: Any) -> None:
    import socket
    import subprocess
    import sys

    from orchestrator.runlock import RunLock

    first, second = RunLock(redis_client, "lk"), RunLock(redis_client, "lk")
    assert first.acquire() and first.acquire(), "the holder refreshes its own lock"
    assert not second.acquire(), "a live holder (this process) keeps the lock"
    first.release()
    assert second.acquire()
    second.release()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    place = second.token.split(":")[0]  # host name, boot and PID namespace
    assert place.startswith(socket.gethostname())
    redis_client.set("dq:lk:lock", f"{place}:{dead}:abc", px=30_000)
    assert second.acquire(), "a holder whose process is gone is taken over at once"
    assert redis_client.get("dq:lk:lock").decode() == second.token
    redis_client.set("dq:lk:lock", f"elsewhere.example:{dead}:abc", px=30_000)
    assert not second.acquire(), "a holder on another host is trusted until its lock expires"
    other_ns = f"{socket.gethostname()}~{place.split('~')[1]}~1:{dead}:abc"
    redis_client.set("dq:lk:lock", other_ns, px=30_000)
    assert not second.acquire(), \
        "a holder with this host name in another PID namespace (a container) is trusted too"


def _run_with_broken_spec(tmp_path: Path) -> ShardStore:
    """Run r1, whose manifest's spec no longer validates (a negative learning rate)."""
    spec = make_spec(tmp_path)
    store = ShardStore(spec.storage)
    create_run(spec, store)
    manifest = load_manifest(store, "r1")
    manifest.spec["student"]["lr"] = -1
    save_manifest(store, manifest)
    return store


def test_serve_fails_and_unregisters_a_run_that_cannot_be_driven(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """A permanent error in a tick (here: a manifest whose spec no longer validates) fails
    the run and frees its slot, instead of a traceback every poll for ever."""
    from distillq.keys import RUNS_KEY
    from orchestrator.driver import _serve_one
    from workers.app import app

    store = _run_with_broken_spec(tmp_path)
    redis_client.hset(RUNS_KEY, "r1", store.uri)
    known = {"r1": store.uri}
    _serve_one(redis_client, "r1", store.uri, app, {}, {}, known)
    assert redis_client.hget(RUNS_KEY, "r1") is None and known == {}
    after = load_manifest(store, "r1").to_json()
    assert after["status"] == "failed" and "lr" in after["stop_reason"]


def test_serve_unregisters_a_broken_run_even_when_its_manifest_cannot_say_so(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest write that would mark the run failed fails too (a read-only mount): the
    manifest still says running, which must not pass for a resume and register it again."""
    from distillq.errors import StorageError
    from distillq.keys import RUNS_KEY
    from orchestrator.driver import _serve_one
    from workers.app import app

    store = _run_with_broken_spec(tmp_path)

    def read_only(self: ShardStore, run_id: str, relpath: str, obj: Any) -> None:
        raise StorageError(f"{relpath}: read-only file system")

    monkeypatch.setattr(ShardStore, "write_json", read_only)
    redis_client.hset(RUNS_KEY, "r1", store.uri)
    known = {"r1": store.uri}
    _serve_one(redis_client, "r1", store.uri, app, {}, {}, known)
    assert redis_client.hget(RUNS_KEY, "r1") is None and known == {}
    assert load_manifest(store, "r1").to_json()["status"] == "running", "as the mount left it"


def test_serve_keeps_a_run_that_resume_reopened_while_its_last_tick_ended_it(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """A tick reads the run as failed; before serve unregisters it, `resume` writes the
    manifest back to running and registers the run. serve must leave it registered, or
    nobody drives the resumed run."""
    from distillq.keys import RUNS_KEY
    from orchestrator.driver import _serve_one
    from orchestrator.runlock import RunLock
    from workers.app import app

    spec = make_spec(tmp_path)
    store = ShardStore(spec.storage)
    create_run(spec, store)

    class EndedAsResumed:  # the tick's verdict predates the resume below
        store = ShardStore(spec.storage)

        def tick(self) -> str:
            manifest = load_manifest(store, "r1")
            manifest.reopen(time.time())  # what `resume` writes, then it registers
            save_manifest(store, manifest)
            redis_client.hset(RUNS_KEY, "r1", store.uri)
            return "failed"

    known = {"r1": store.uri}
    controllers: dict[str, Any] = {"r1": EndedAsResumed()}
    locks = {"r1": RunLock(redis_client, "r1", store=store)}
    _serve_one(redis_client, "r1", store.uri, app, locks, controllers, known)
    assert redis_client.hget(RUNS_KEY, "r1") == store.uri.encode()
    assert known == {"r1": store.uri} and controllers == {}


def test_drive_waits_while_a_controller_on_another_redis_drives_the_run(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedded `resume` (its own Redis) of a run that `serve` drives sends nothing until
    serve's mark in storage is older than the lock's TTL."""
    from orchestrator import driver
    from workers.app import app

    spec = make_spec(tmp_path)
    store = ShardStore(spec.storage)
    create_run(spec, store)
    sent: list[Any] = []
    monkeypatch.setattr(driver, "celery_sender", lambda app: lambda *a: sent.append(Sent(*a)))
    calls = iter(range(3))

    def stop_after_two() -> bool:
        return next(calls, 2) >= 2

    serve_mark = {"token": "serve", "redis": "another-redis", "at": time.time()}
    store.write_json("r1", paths.CONTROLLER_MARK, serve_mark)
    assert driver.drive(store, redis_client, "r1", app, poll_s=0.01,
                        should_stop=stop_after_two) == "running"
    assert sent == [] and store.read_json("r1", paths.CONTROLLER_MARK) == serve_mark
    assert redis_client.get("dq:r1:lock") is None, "the lock is released on the way out"

    store.write_json("r1", paths.CONTROLLER_MARK, serve_mark | {"at": time.time() - 31})
    calls = iter(range(3))
    driver.drive(store, redis_client, "r1", app, poll_s=0.01, should_stop=stop_after_two)
    assert sent, "the other controller's mark went stale: this one drives the run"
    assert store.read_json("r1", paths.CONTROLLER_MARK) is None, "and removes its own mark after"


def test_a_lock_keeper_holds_locks_through_a_long_tick(redis_client: redis.Redis) -> None:
    """No race against the TTL: each step is checked on Redis's own expiry, a lock's
    remaining time set by hand, and the keeper's thread counted in rounds."""
    from orchestrator.runlock import LockKeeper, RunLock

    mine = RunLock(redis_client, "long", ttl_ms=60_000)
    assert mine.acquire()
    redis_client.pexpire(mine.key, 2_000)  # as if most of the TTL had gone in a long tick
    keeper = LockKeeper({"long": mine}, ttl_ms=60_000)
    assert keeper.every == 20.0, "every third of the TTL"
    keeper.refresh_all()
    assert redis_client.pttl(mine.key) > 50_000, "a round puts the whole TTL back"
    assert not RunLock(redis_client, "long", ttl_ms=60_000).acquire(), "still held"

    rounds = threading.Semaphore(0)
    counting = LockKeeper({"long": mine}, ttl_ms=3)  # a round every millisecond
    counting.refresh_all = lambda: rounds.release()  # type: ignore[method-assign]
    with counting:
        assert all(rounds.acquire(timeout=60) for _ in range(3)), "the thread keeps going"
    assert not counting._thread.is_alive(), "and stops with the block"

    redis_client.pexpire(mine.key, 1)  # no keeper: the lock runs out
    wait_for(lambda: not redis_client.exists(mine.key), 60, "the lock to expire")
    assert RunLock(redis_client, "long", ttl_ms=60_000).acquire()
    assert not mine.refresh(), "refresh never takes back a lock another holder has"
