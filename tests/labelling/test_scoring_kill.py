"""A labelling run whose controller and train worker are SIGKILLed in the middle of scoring
the unlabelled texts resumes where it stopped.

Real processes throughout: the session's Redis, the project's worker processes
(``LocalCluster``), ``orchestrator submit`` + ``serve`` and the simulated teacher. The unlabelled
texts are the corpus's test file: 1,440 texts (none in the run's own data), stored as
100-text shards — cycle 1 scores each
shard as one job on the train queue. Once the first of them is committed, the controller and
the whole train worker (main process and pool child, busy with the next shard) are killed, as
a lost machine would be, and started again. The run must finish with every shard scored
exactly once: the shards committed before the kill are kept as they were (not scored again),
the one the dead worker held is sent again, and the texts labelled are the selection's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from runkit import env as run_env
from runkit import orchestrator, start_sim, wait_for, write_spec

from distillq.keys import TEACHER_URL_KEY
from orchestrator.embedded import LocalCluster
from storage.store import ShardStore

pytestmark = pytest.mark.slow

RUN = "kill-score"


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str) -> Iterator[tuple[LocalCluster, dict[str, str]]]:
    from workers.app import configure

    configure(redis_url)
    extra = {"DISTILLQ_WORKDIR": str(tmp_path / "work")}
    local = LocalCluster(tmp_path / "cluster", redis_url)
    local.start(extra_env=extra)
    try:
        local.wait_ready()
        yield local, {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
                      "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}
    finally:
        local.stop()


def _serve(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--poll", "0.5"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_kill_in_the_middle_of_scoring_resumes_where_it_stopped(
        tmp_path: Path, corpus: Path, redis_url: str,
        cluster: tuple[LocalCluster, dict[str, str]]) -> None:
    local, worker_env = cluster
    env = run_env(REDIS_URL=redis_url)
    spec = write_spec(tmp_path, corpus, RUN,
                      dataset={"unlabelled": str(corpus / "test.csv")},
                      labelling={"share": 1.0, "strategy": "margin", "shard_rows": 100},
                      loop={"max_cycles": 1, "patience": 3, "generate_deadline_s": 60,
                            "train_deadline_s": 20})
    assert orchestrator("submit", str(spec), env=env).returncode == 0
    store = ShardStore(str(tmp_path / "store"))
    shards = store.list_jobs(RUN, 0, "unlabelled")
    pool = sum(store.read_shard(RUN, 0, "unlabelled", s).num_rows for s in shards)
    assert (len(shards), pool) == (15, 1440)
    sim, url = start_sim(store, RUN, tmp_path)
    redis.Redis.from_url(redis_url).set(TEACHER_URL_KEY.format(run_id=RUN), url)
    serve = _serve(env)
    folder = Path(store.uri) / RUN / "cycle=1" / "scores"
    try:
        wait_for(lambda: store.list_jobs(RUN, 1, "scores"), 300, "the first shard scored")
        serve.send_signal(signal.SIGKILL)
        train = next(w for w in local.workers if w.queue == "train")
        assert train.proc is not None
        os.killpg(train.proc.pid, signal.SIGKILL)
        serve.wait(10)
        train.proc.wait(10)
        before = {p.name: (p.stat().st_mtime_ns, p.read_bytes())
                  for p in folder.glob("*.parquet")}
        assert 0 < len(before) < len(shards), "killed in the middle of scoring"
        assert store.read_json(RUN, "cycle=1/selection.json") is None

        train.start(worker_env, local.state_dir / "logs")
        serve = _serve(env)
        wait_for(lambda: store.read_json(RUN, "manifest.json")["status"] == "done", 600,
                 "the run to finish")
    finally:
        serve.kill()
        sim.kill()

    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.glob("*.parquet")}
    assert {k: after[k] for k in before} == before, "shards scored before the kill were kept"
    assert store.list_jobs(RUN, 1, "scores") == shards
    ids = [i for s in shards for i in store.read_shard(RUN, 1, "scores", s).column("id")
           .to_pylist()]
    assert len(ids) == len(set(ids)) == pool, "every unlabelled text scored exactly once"
    chosen = store.read_json(RUN, "cycle=1/selection.json")
    assert chosen["strategy"] == "margin" and len(chosen["texts"]) == 24
    labelled = [r for r in store.read_kind(RUN, 1, "generated").to_pylist()
                if r["source"] == "pool"]
    assert sorted(r["id"] for r in labelled) == sorted(x["id"] for x in chosen["texts"])
