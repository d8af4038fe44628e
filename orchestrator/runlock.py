"""The run lock: one controller drives a run at a time.

Two parts under one name. The Redis lock (``RunLock``, ``distillq.keys.LOCK``): ``SET key
token NX PX ttl``, refreshed only by its holder. And the holder's mark in the run's storage
(``StorageMark``, ``distillq.paths.CONTROLLER_MARK``), which keeps apart controllers that do
not share a Redis. ``LockKeeper`` refreshes both from a background thread, so a tick of any
length keeps them.

The Redis lock keeps apart only the controllers that share one Redis. An embedded
``orchestrator resume RUN`` (its own Redis) while ``serve`` drives the run through a shared
one would otherwise give the run two controllers, each sending jobs to its own workers. So
the lock holder also writes its mark in the run's storage: its lock token, the id of its Redis
server (``INFO server`` → ``run_id``, new at every start of a Redis) and the time. It writes
it every third of the lock's TTL, from the thread that keeps the lock (``LockKeeper``), so a
tick of any length keeps it fresh. A controller that finds there a live mark of another
holder *through another Redis* waits, as for a lock held.

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
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from distillq import paths
from distillq.errors import DistillqError
from distillq.keys import LOCK, as_text
from storage.store import ShardStore

log = logging.getLogger("distillq.driver")

LOCK_TTL_MS = 30_000


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
        self.mark = StorageMark(store, client, run_id, self.token, ttl_ms) \
            if store is not None else None

    def acquire(self) -> bool:
        """True if this holder may tick: the Redis lock is its, and (with a storage) no
        controller on another Redis drives the run (``StorageMark``)."""
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


class StorageMark:
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
                mark = self.store.read_json(self.run_id, paths.CONTROLLER_MARK,
                                            invalid_as_missing=True)
                if isinstance(mark, dict) and mark.get("token") == self.token:
                    self.store.delete_json(self.run_id, paths.CONTROLLER_MARK)
            except (DistillqError, OSError) as exc:  # on the way out; the mark expires anyway
                log.debug("run=%s: own controller mark not removed: %s", self.run_id, exc)

    def _look(self) -> bool:
        now, mono = self.clock(), self.monotonic()
        server = self._redis_id()
        try:
            mark = self.store.read_json(self.run_id, paths.CONTROLLER_MARK,
                                        invalid_as_missing=True)
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
            self.store.write_json(self.run_id, paths.CONTROLLER_MARK,
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
