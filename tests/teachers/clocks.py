"""Simulated clocks for the teacher tests: what a client or a limiter waits, and when a slot
falls, are then exact whatever else the machine is doing."""

from __future__ import annotations

import asyncio
import threading


class SteppedClock:
    """A clock that moves only when the client sleeps: the client's waits and its time cap
    are then measured exactly, however busy the machine is."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


class VirtualTime:
    """Simulated seconds: ``now`` moves only by ``advance_to``; a ``sleep`` (on the runtime's
    loop) ends when the time reaches its end."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.start = self.now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._sleepers.append((self.now + seconds, future))
        await future

    def sleeping(self) -> int:
        """How many waits are pending (cancelled ones not counted)."""
        with self._lock:
            return sum(not f.done() for _, f in self._sleepers)

    def advance_to(self, to: float) -> None:
        """Move to ``start + to`` seconds and end the waits due by then."""
        self.now = self.start + to
        with self._lock:
            due = [f for wake, f in self._sleepers if wake <= self.now]
            self._sleepers = [(w, f) for w, f in self._sleepers if w > self.now]
        for future in due:
            future.get_loop().call_soon_threadsafe(
                lambda f=future: f.done() or f.set_result(None))
