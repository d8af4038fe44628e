"""The controller's mark in storage (orchestrator/runlock.py): controllers on other Redis
servers are kept out."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from controller_kit import (
    Clock,
)
from runkit import wait_for

from distillq import paths
from storage.store import ShardStore


def test_controller_mark_keeps_out_controllers_of_other_redis_servers_only(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    from orchestrator.runlock import StorageMark

    store, clock = ShardStore(str(tmp_path / "store")), Clock()
    server = redis_client.info("server")["run_id"]
    mine = StorageMark(store, redis_client, "r1", "me", ttl_ms=30_000, clock=clock,
                     monotonic=clock)

    def mark(token: str, redis_id: str, age: float) -> None:
        store.write_json("r1", paths.CONTROLLER_MARK, {"token": token, "redis": redis_id,
                                                "at": clock.now - age})
        clock.now += 11  # past this holder's next look

    assert mine.clear(), "no mark yet"
    assert store.read_json("r1", paths.CONTROLLER_MARK) == {"token": "me", "redis": server,
                                                     "at": clock.now}
    mark("serve", "another-redis", age=5)
    assert not mine.clear() and mine.rival is not None, "a live controller elsewhere"
    assert store.read_json("r1", paths.CONTROLLER_MARK)["token"] == "serve", "its mark is kept"
    clock.now += 29
    assert not mine.clear(), "unchanged for less than a TTL since this holder first read it"
    clock.now += 1
    assert mine.clear(), "unchanged for a TTL: that controller stopped"
    mark("dead-holder", server, age=1)
    assert mine.clear(), "the same Redis: the lock decides (a dead holder taken over)"
    mark("me", "before-redis-restarted", age=1)
    assert mine.clear(), "its own mark, written through a Redis that restarted since"
    mine.stop()
    assert store.read_json("r1", paths.CONTROLLER_MARK) is None, "a clean stop removes its mark"
    mark("serve", "another-redis", age=1)
    mine.stop()
    assert store.read_json("r1", paths.CONTROLLER_MARK) is not None, "never another's mark"


def test_a_mark_is_judged_by_the_writers_clock_only_at_first_sight(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """A dead writer whose clock ran an hour ahead must not keep the run for an hour, and a
    live one whose clock is behind is live while its mark keeps changing."""
    from orchestrator.runlock import StorageMark

    store, clock = ShardStore(str(tmp_path / "store")), Clock()

    def fresh() -> StorageMark:  # a controller that has not looked yet
        return StorageMark(store, redis_client, "r1", "me", ttl_ms=30_000, clock=clock,
                         monotonic=clock)

    def mark(at: float) -> None:
        store.write_json("r1", paths.CONTROLLER_MARK, {"token": "serve", "redis": "other", "at": at})

    mark(clock.now + 3600)
    assert fresh().clear(), "dated an hour ahead: not taken for live"
    mark(clock.now - 31)
    assert fresh().clear(), "more than a TTL old by its writer's clock"
    mark(clock.now - 25)  # the writer's clock 25 s behind: it looks nearly stale
    behind = fresh()
    assert not behind.clear()
    for _ in range(4):  # the writer renews it every 10 s (by its clock, still 25 s behind)
        clock.now += 10
        mark(clock.now - 25)
        assert not behind.clear(), "changed since the last look: live"
    clock.now += 30
    assert behind.clear(), "then unchanged for a TTL: gone"


def test_a_controller_overwritten_by_a_live_rival_stops_and_a_corrupt_mark_is_replaced(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    from orchestrator.runlock import StorageMark

    store, clock = ShardStore(str(tmp_path / "store")), Clock()
    mine = StorageMark(store, redis_client, "r1", "me", ttl_ms=30_000, clock=clock,
                     monotonic=clock)
    assert mine.clear()
    # a controller on another Redis read no mark at the same moment and wrote its own after
    store.write_json("r1", paths.CONTROLLER_MARK, {"token": "twin", "redis": "other", "at": clock.now})
    clock.now += 10
    mine.beat()  # the lock keeper's next renewal looks first
    assert mine.rival is not None and mine.rival["token"] == "twin"
    assert not mine.clear(), "the last writer drives"
    assert store.read_json("r1", paths.CONTROLLER_MARK)["token"] == "twin"

    (tmp_path / "store" / "r1" / paths.CONTROLLER_MARK).write_text("{not json")
    clock.now += 1
    assert mine.clear(), "a corrupt mark keeps nobody out"
    assert store.read_json("r1", paths.CONTROLLER_MARK)["token"] == "me", "and is replaced"


def test_a_redis_without_an_id_counts_as_another_redis(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.runlock import StorageMark

    store, clock = ShardStore(str(tmp_path / "store")), Clock()
    mine = StorageMark(store, redis_client, "r1", "me", ttl_ms=30_000, clock=clock,
                     monotonic=clock)
    monkeypatch.setattr(mine, "_redis_id", lambda: "")
    store.write_json("r1", paths.CONTROLLER_MARK, {"token": "proxy-user", "redis": "", "at": clock.now})
    assert not mine.clear()


def test_the_lock_keeper_renews_the_mark_during_a_long_tick(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """The mark is written from the thread that refreshes the lock, not only between ticks: a
    tick longer than the TTL (planning a huge cycle) must not let a rival in."""
    from orchestrator.runlock import LockKeeper, RunLock

    store = ShardStore(str(tmp_path / "store"))
    lock = RunLock(redis_client, "r1", ttl_ms=300, store=store)
    assert lock.acquire()
    first = store.read_json("r1", paths.CONTROLLER_MARK)["at"]
    with LockKeeper({"r1": lock}, ttl_ms=300):  # no tick meanwhile: only the keeper writes
        wait_for(lambda: store.read_json("r1", paths.CONTROLLER_MARK)["at"] != first, 60,
                 "the mark to be renewed")
    lock.release()
    assert store.read_json("r1", paths.CONTROLLER_MARK) is None
