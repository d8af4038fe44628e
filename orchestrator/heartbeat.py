"""The driving controller's mark in storage: keeps apart controllers on different Redis servers.

The run lock (``driver.RunLock``) lives in Redis, so it keeps apart only the controllers that
share one Redis. An embedded ``orchestrator resume RUN`` (its own Redis) while ``serve`` drives
the run through a shared one would otherwise give the run two controllers, each sending jobs to
its own workers. So the lock holder also writes ``controller.json`` in the run's storage:
its lock token, the id of its Redis server (``INFO server`` → ``run_id``, new at every start of
a Redis) and the time, every third of the lock's TTL. A controller that finds there a mark less
than one TTL old from another holder *through another Redis* waits, as for a lock held.

Controllers on the same Redis never wait for a mark (the lock decides between them: a dead
holder's lock taken over leaves a fresh mark behind), and a controller never waits for its own
mark written through a Redis that has restarted since. A mark outlives a killed controller by
one TTL at most; one that stops cleanly removes its own. The times are the writers' clocks:
clocks more than a few seconds apart shorten or lengthen that wait by as much.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from storage.errors import DistillqError
from storage.store import ShardStore

log = logging.getLogger("distillq.driver")

HEARTBEAT_FILE = "controller.json"


class Heartbeat:
    """``clear()`` before each tick: False while another Redis's controller drives the run."""

    def __init__(self, store: ShardStore, client: redis.Redis, run_id: str, token: str,
                 ttl_ms: int, clock: Callable[[], float] = time.time):
        self.store, self.client, self.run_id, self.token = store, client, run_id, token
        self.ttl_s, self.clock = ttl_ms / 1000.0, clock
        self.rival: dict[str, Any] | None = None  # the mark that made the last clear() False
        self._next = 0.0

    def clear(self) -> bool:
        """Read the mark (at most every third of the TTL) and write this controller's own,
        unless another Redis's controller wrote it within the TTL."""
        now = self.clock()
        if now < self._next:
            return self.rival is None
        server = self._redis_id()
        try:
            mark = self.store.read_json(self.run_id, HEARTBEAT_FILE)
        except (DistillqError, OSError) as exc:  # the tick meets (and reports) it too
            log.warning("run=%s: controller mark unreadable: %s", self.run_id, exc)
            return True
        if isinstance(mark, dict) and self._is_rival(mark, server, now):
            if self.rival is None or self.rival.get("token") != mark.get("token"):
                log.warning("run=%s is driven by another controller through another Redis "
                            "(%s, %.0fs ago); waiting until it stops", self.run_id,
                            mark.get("token"), now - float(mark.get("at", now)))
            self.rival, self._next = mark, now + 1.0
            return False
        self.rival, self._next = None, now + self.ttl_s / 3
        try:
            self.store.write_json(self.run_id, HEARTBEAT_FILE,
                                  {"token": self.token, "redis": server, "at": now})
        except (DistillqError, OSError) as exc:
            log.warning("run=%s: controller mark not written: %s", self.run_id, exc)
        return True

    def _is_rival(self, mark: dict[str, Any], server: str, now: float) -> bool:
        try:
            age = now - float(mark["at"])
        except (KeyError, TypeError, ValueError):  # not a mark this code wrote: ignore it
            return False
        return (mark.get("token") != self.token and mark.get("redis") != server
                and age < self.ttl_s)

    def _redis_id(self) -> str:
        return str(self.client.info("server").get("run_id", ""))

    def stop(self) -> None:
        """Remove this controller's own mark (best effort), so a successor need not wait."""
        try:
            mark = self.store.read_json(self.run_id, HEARTBEAT_FILE)
            if isinstance(mark, dict) and mark.get("token") == self.token:
                self.store.delete_json(self.run_id, HEARTBEAT_FILE)
        except (DistillqError, OSError) as exc:  # on the way out; the mark expires anyway
            log.debug("run=%s: own controller mark not removed: %s", self.run_id, exc)
