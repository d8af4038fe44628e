"""Scale-out, as compose.yaml deploys it, on one machine: every service a separate process started
with compose's own command — Redis with a password, Flower with basic auth and the project's
flowerconfig, ``orchestrator serve --metrics-port``, the simulated teacher, a train worker, then
one and then four generate workers (each with its own node name, as containers get their own
hostnames).

Two small runs go through cycle 0 (a tiny student) and cycle 1's generation: the first with one
generate worker, the second after scaling to four. Flower's HTTP API (with credentials) shows
which worker ran each task: all on the one worker first, spread over the four after. Task
listings carry names and run / cycle / job ids only: no storage path, no password, no payload.
A request without credentials gets 401. ``/metrics`` reports the runs' jobs, spend and the
teacher endpoint's budget.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from composekit import (
    Processes,
    command,
    free_port,
    local_executable,
    replace_option,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from runkit import env as run_env
from runkit import write_spec

from storage.store import ShardStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

TINY_STUDENT = {"num_layers": 1, "max_length": 16, "epochs": 1, "batch_size": 32}
GENERATION = {"examples_per_cycle": 48, "examples_per_request": 2}  # 24 one-request jobs


class Flower:
    def __init__(self, port: int, user: str, password: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}

    def get(self, path: str, auth: bool = True) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, headers=self.auth if auth else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, ""

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def generate_workers(self) -> dict[str, dict[str, Any]]:
        status, body = self.get("/api/workers?refresh=1")
        if status != 200:
            return {}
        return {name: info for name, info in json.loads(body).items()
                if name.startswith("generate-") and info.get("stats")}

    def tasks(self, run_id: str) -> dict[str, dict[str, Any]]:
        listing = self.json("/api/tasks?taskname=distillq.generate&limit=100000")
        return {tid: t for tid, t in listing.items()
                if str(t.get("args", "")).startswith(f"run={run_id} ")}


def _generation_done(store: ShardStore, run_id: str) -> bool:
    plan = store.read_json(run_id, "cycle=1/plan.json")
    return plan is not None and set(plan["jobs"]) <= set(store.list_jobs(run_id, 1, "generated"))


def _settled(flower: Flower, run_id: str, n: int) -> dict[str, dict[str, Any]] | None:
    tasks = flower.tasks(run_id)
    done = {tid: t for tid, t in tasks.items() if t.get("state") == "SUCCESS"}
    return done if len(done) >= n else None


def test_scale_out_one_then_four_generate_workers(tmp_path: Path, corpus: Path) -> None:
    password, flower_password = secrets.token_hex(12), secrets.token_hex(12)
    redis_port, flower_port, metrics_port, sim_port = (free_port() for _ in range(4))
    store_root = tmp_path / "store"
    env = run_env(
        REDIS_PASSWORD=password,
        REDIS_URL=f"redis://:{password}@127.0.0.1:{redis_port}/0",
        FLOWER_BASIC_AUTH=f"admin:{flower_password}",
        FLOWER_DB=str(tmp_path / "flower.db"),
        DISTILLQ_STORAGE=str(store_root),
        DISTILLQ_WORKDIR=str(tmp_path / "work"),
        TEACHER_API_KEY="",
        SIM_LATENCY_MS="200",
    )
    procs = Processes(tmp_path / "logs")
    flower = Flower(flower_port, "admin", flower_password)
    teacher = {"base_url": f"http://127.0.0.1:{sim_port}/v1", "rpm": 6000}
    specs = {name: write_spec(tmp_path, corpus, name, teacher=teacher,
                              generation=GENERATION, student=TINY_STUDENT)
             for name in ("one", "four")}
    try:
        # ---- Redis, with compose's password and persistence options ----------------------
        (tmp_path / "redis").mkdir()
        procs.start("redis", local_executable(command("redis", env)) + [
            "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(tmp_path / "redis")],
            env)
        client = redis.Redis.from_url(env["REDIS_URL"])
        wait_for(lambda: _pings(client), 20, "Redis", procs.check_alive)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port).ping()

        # ---- Flower, the controller, the train worker, ONE generate worker ---------------
        flower_cmd = replace_option(command("flower", env), "--port", str(flower_port))
        procs.start("flower", local_executable(flower_cmd) + ["--address=127.0.0.1"], env)
        serve_cmd = replace_option(command("orchestrator", env), "--metrics-port",
                                   str(metrics_port))
        procs.start("serve", local_executable(serve_cmd), env)
        procs.start("worker-train", local_executable(command("worker-train", env)), env)
        _start_generate_worker(procs, env, 1)
        wait_for(lambda: flower.get("/api/workers", auth=False)[0] == 401, 60, "Flower",
                 procs.check_alive)

        # ---- run "one": submitted, teacher started on its pool, cycle 1 generated --------
        _submit(specs["one"], env)
        _start_sim(procs, env, store_root / "one" / "data" / "pool.parquet", sim_port)
        store = ShardStore(str(store_root))
        wait_for(lambda: _generation_done(store, "one"), 240, "run one's cycle 1 generation",
                 procs.check_alive, every=0.5)
        jobs = len(store.read_json("one", "cycle=1/plan.json")["jobs"])
        one = wait_for(lambda: _settled(flower, "one", jobs), 30, "Flower to see run one")
        assert Counter(t["worker"] for t in one.values()) == {"generate-0@host1": jobs}

        # ---- scale to four generate workers, run "four" ------------------------------------
        for k in (2, 3, 4):
            _start_generate_worker(procs, env, k)
        wanted = {f"generate-0@host{k}" for k in (1, 2, 3, 4)}
        workers = wait_for(lambda: (w := flower.generate_workers()) and set(w) >= wanted and w,
                           90, "four generate workers", procs.check_alive, every=1.0)
        pids = {name: info["stats"]["pid"] for name, info in workers.items()}
        assert len(set(pids.values())) == 4, pids  # four separate processes
        for info in workers.values():
            assert [q["name"] for q in info["active_queues"]] == ["generate"]
        _submit(specs["four"], env)
        wait_for(lambda: _generation_done(store, "four"), 240, "run four's cycle 1 generation",
                 procs.check_alive, every=0.5)
        _check_metrics(metrics_port, "four", jobs)
        four = wait_for(lambda: _settled(flower, "four", jobs), 30, "Flower to see run four")
        spread = Counter(t["worker"] for t in four.values())
        print(f"tasks per worker: one={dict(Counter(t['worker'] for t in one.values()))} "
              f"four={dict(spread)}; pids={pids}")
        assert set(spread) == wanted, spread
        assert sum(spread.values()) == jobs

        _check_flower_listing(flower, [*one.values(), *four.values()], password,
                              flower_password, str(store_root))
    finally:
        procs.stop_all()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _start_generate_worker(procs: Processes, env: dict[str, str], k: int) -> None:
    # compose runs one worker per container: its %h is the container's hostname
    cmd = [part.replace("%h", f"host{k}") for part in command("worker-generate", env)]
    procs.start(f"worker-generate-{k}", local_executable(cmd), env)


def _submit(spec: Path, env: dict[str, str]) -> str:
    done = subprocess.run(local_executable(["orchestrator", "submit", str(spec)]), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def _start_sim(procs: Processes, env: dict[str, str], pool: Path, port: int) -> None:
    cmd = command("sim-teacher", {**env, "SIM_POOL": str(pool)})
    cmd = replace_option(replace_option(cmd, "--host", "127.0.0.1"), "--port", str(port))
    proc = procs.start("sim-teacher", local_executable(cmd), env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().decode().startswith("http"), procs.log("sim-teacher")


def _check_flower_listing(flower: Flower, tasks: list[dict[str, Any]], *secrets_: str) -> None:
    assert flower.get("/api/tasks", auth=False)[0] == 401
    assert flower.get("/api/workers", auth=False)[0] == 401
    assert flower.get("/", auth=False)[0] == 401
    for task in tasks:
        assert task["name"] == "distillq.generate"
        run, cycle, job = task["args"].split()
        assert run.startswith("run=") and cycle == "cycle=1" and job.startswith("job=c01-")
        assert task["kwargs"] in ("", "{}")
    status, listing = flower.get("/api/tasks?limit=100000")
    assert status == 200
    some_id = next(iter(json.loads(listing)))
    status, info = flower.get(f"/api/task/info/{some_id}")
    assert status == 200 and json.loads(info)["args"].startswith("run=")
    status, page = flower.get("/tasks")
    assert status == 200
    for text in (listing, info, page):
        for secret in secrets_:
            assert secret not in text
        assert "pool.parquet" not in text and "hard_negatives" not in text


def _check_metrics(port: int, run: str, jobs: int) -> None:
    """Scraped as soon as the run's cycle 1 generation is committed (training may follow)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("distillq_cycle", run=run) == 1
    assert value("distillq_jobs", run=run, state="planned") == jobs
    assert value("distillq_jobs", run=run, state="committed") == jobs
    assert value("distillq_jobs", run=run, state="waiting") == 0
    assert value("distillq_teacher_tokens", run=run, direction="out") > 0
    assert value("distillq_teacher_requests", run=run) >= jobs
    assert value("distillq_validation_metric", run=run, metric="macro_f1") >= 0
    assert sum(value("distillq_run_status", run=run, status=s)
               for s in ("running", "done", "failed", "cancelled")) == 1
    assert {k[1] for k in samples if k[0] == "distillq_queue_depth"} == {
        (("queue", q),) for q in ("generate", "attribute", "train")}
    limits = [v for (name, labels), v in samples.items() if name == "distillq_ratelimit_limit"
              and ("budget", "requests_per_minute") in labels]
    assert limits == [6000.0]
    requests = [v for (name, _), v in samples.items()
                if name == "distillq_teacher_endpoint_requests_total"]
    assert requests and requests[0] >= 2 * jobs
