"""The process-wide teacher runtime: one asyncio loop in a background thread, one HTTP session.

Celery runs ``generate`` tasks in a ``--pool threads`` worker: many synchronous task threads
share one process. They all hand their coroutines to this one loop (``run``), so one
``aiohttp.ClientSession`` (one connection pool) serves every task of the process, and the
per-endpoint concurrency bound (``TeacherSpec.concurrency``) holds across tasks.

The runtime is created on first use and again after a fork (a child never reuses its
parent's loop or sockets).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


class Runtime:
    """An event loop running in a daemon thread, plus objects that live on that loop."""

    def __init__(self, connections: int = 512) -> None:
        self._connections = connections
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._shared: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="distillq-teacher-loop", daemon=True)
        self._thread.start()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from a non-loop thread)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Runtime.run() called from the runtime's own loop thread")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def session(self) -> aiohttp.ClientSession:
        """The process's HTTP session; call it from a coroutine running on this loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def shared(self, key: Any, factory: Callable[[], T]) -> T:
        """Get or create one object per key for this process (clients, semaphores)."""
        with self._lock:
            if key not in self._shared:
                self._shared[key] = factory()
            return self._shared[key]  # type: ignore[no-any-return]

    def close(self, timeout: float = 5.0) -> None:
        """Close the session and stop the loop (tests, benches; workers just exit)."""
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        if self._session is not None:
            try:
                self.run(self._session.close(), timeout)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop.close()


_lock = threading.Lock()
_runtime: Runtime | None = None
_pid = 0


def get_runtime() -> Runtime:
    """The runtime of this process (a new one in a forked child)."""
    global _runtime, _pid
    with _lock:
        if _runtime is None or _pid != os.getpid():
            _runtime, _pid = Runtime(), os.getpid()
            atexit.register(_runtime.close)
        return _runtime
