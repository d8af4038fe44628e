"""The driving controller's mark in storage: keeps apart controllers on different Redis servers.

The run lock (``driver.RunLock``) lives in Redis, so it keeps apart only the controllers that
share one Redis. An embedded ``orchestrator resume RUN`` (its own Redis) while ``serve`` drives
the run through a shared one would otherwise give the run two controllers, each sending jobs to
its own workers. So the lock holder also writes ``controller.json`` in the run's storage:
its lock token, the id of its Redis server (``INFO server`` → ``run_id``, new at every start of
a Redis) and the time. It writes it every third of the lock's TTL, from the thread that keeps
the lock (``driver.LockKeeper``), so a tick of any length keeps it fresh. A controller that
finds there a live mark of another holder *through another Redis* waits, as for a lock held.

A mark is live while it keeps changing. One seen for the first time is judged by its writer's
time (live if less than one TTL old, either way, so a clock ahead does not make a dead mark live
for long); after that by this controller's own monotonic clock: a mark that changed since the
last look (within one TTL) is live, one unchanged for a TTL is not. So a mark outlives a
killed controller by about one TTL whatever the clocks say. A controller that finds its own
mark overwritten by a live rival's (two that started together) stops ticking at its next look,
a third of the TTL later at most; the last writer drives. A clean stop removes its own mark.

Controllers on the same Redis never wait for a mark (the lock decides between them: a dead
holder's lock taken over leaves a fresh mark behind), and a controller never waits for its own
mark written through a Redis that has restarted since. A Redis that reports no id (a proxy,
say) counts as another Redis. A mark that is not valid JSON is overwritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from distillq.errors import DistillqError
from storage.store import ShardStore

log = logging.getLogger("distillq.driver")

HEARTBEAT_FILE = "controller.json"


class Heartbeat:
    """``clear()`` before each tick: False while another Redis's controller drives the run;
    ``beat()`` from the lock keeper keeps this controller's mark fresh between ticks."""

    def __init__(self, store: ShardStore, client: redis.Redis, run_id: str, token: str,
                 ttl_ms: int, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.store, self.client, self.run_id, self.token = store, client, run_id, token
        self.ttl_s, self.clock, self.monotonic = ttl_ms / 1000.0, clock, monotonic
        self.rival: dict[str, Any] | None = None  # the mark that made the last clear() False
        self._guard = threading.Lock()  # clear() on the tick's thread, beat() on the keeper's
        self._next = 0.0  # monotonic: when clear() looks again
        self._last_look: float | None = None  # monotonic time of the last read
        self._seen: tuple[Any, float] | None = None  # the rival mark read last: (token, at)
        self._seen_at = 0.0  # monotonic time it was first read
        self._active = False  # from the first clear() to stop(): beat() writes only then

    def clear(self) -> bool:
        """Read the mark (at most every third of the TTL) and write this controller's own,
        unless another Redis's controller keeps it live."""
        with self._guard:
            self._active = True
            if self.monotonic() < self._next:
                return self.rival is None
            return self._look()

    def beat(self) -> None:
        """Look and write again now (the lock keeper, while this holder keeps its Redis lock):
        a mark written only between ticks would go stale during a long one."""
        with self._guard:
            if self._active:
                self._look()

    def stop(self) -> None:
        """Remove this controller's own mark (best effort), so a successor need not wait."""
        with self._guard:
            self._active = False
            try:
                mark = self.store.read_json(self.run_id, HEARTBEAT_FILE, invalid_as_missing=True)
                if isinstance(mark, dict) and mark.get("token") == self.token:
                    self.store.delete_json(self.run_id, HEARTBEAT_FILE)
            except (DistillqError, OSError) as exc:  # on the way out; the mark expires anyway
                log.debug("run=%s: own controller mark not removed: %s", self.run_id, exc)

    def _look(self) -> bool:
        now, mono = self.clock(), self.monotonic()
        server = self._redis_id()
        try:
            mark = self.store.read_json(self.run_id, HEARTBEAT_FILE, invalid_as_missing=True)
        except (DistillqError, OSError) as exc:  # the tick meets (and reports) it too
            log.warning("run=%s: controller mark unreadable: %s", self.run_id, exc)
            return True
        rival = mark if isinstance(mark, dict) and self._is_live_rival(mark, server, now, mono) \
            else None
        self._last_look = mono
        if rival is not None:
            if self.rival is None or self.rival.get("token") != rival.get("token"):
                log.warning("run=%s is driven by another controller through another Redis "
                            "(%s); waiting until it stops", self.run_id, rival.get("token"))
            self.rival, self._next = rival, mono + 1.0
            return False
        self.rival, self._seen, self._next = None, None, mono + self.ttl_s / 3
        try:
            self.store.write_json(self.run_id, HEARTBEAT_FILE,
                                  {"token": self.token, "redis": server, "at": now})
        except (DistillqError, OSError) as exc:
            log.warning("run=%s: controller mark not written: %s", self.run_id, exc)
        return True

    def _is_live_rival(self, mark: dict[str, Any], server: str, now: float,
                       mono: float) -> bool:
        try:
            at = float(mark["at"])
        except (KeyError, TypeError, ValueError):  # not a mark this code wrote: ignore it
            return False
        if mark.get("token") == self.token or (server and mark.get("redis") == server):
            return False
        key = (mark.get("token"), at)
        if self._seen == key:  # unchanged since it was first read
            return mono - self._seen_at < self.ttl_s
        self._seen, self._seen_at = key, mono
        if self._last_look is not None and mono - self._last_look < self.ttl_s:
            return True  # not what the last look (within a TTL) found: written since
        return abs(now - at) < self.ttl_s  # first sight: the writer's time is all there is

    def _redis_id(self) -> str:
        return str(self.client.info("server").get("run_id", ""))
