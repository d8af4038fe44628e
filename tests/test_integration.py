"""End to end: real Redis, real worker processes, the simulated teacher, a real tiny student.

These run the same code paths as a deployment: `orchestrator run` (embedded), and `submit` +
`serve` against a shared Redis with the controller killed by SIGKILL and restarted.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from runkit import env as run_env
from runkit import orchestrator, start_sim, wait_for, write_spec

from orchestrator.embedded import LocalCluster
from orchestrator.runlock import LOCK_TTL_MS
from storage.store import ShardStore

pytestmark = pytest.mark.slow


# ---- distributed: submit + serve, controller killed mid-cycle ----------------------------

@pytest.fixture
def cluster(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, LocalCluster]]:
    from workers.app import configure

    configure(redis_url)
    local = LocalCluster(tmp_path / "cluster", redis_url)
    local.start(extra_env={"DISTILLQ_WORKDIR": str(tmp_path / "work")})
    try:
        local.wait_ready()
        yield redis_url, local
    finally:
        local.stop()


def _drive_distributed(tmp_path: Path, corpus: Path, redis_url: str, name: str,
                       kill_mid_cycle: bool) -> ShardStore:
    import redis as redis_lib

    from distillq.keys import TEACHER_URL_KEY

    env = run_env(REDIS_URL=redis_url)
    spec = write_spec(tmp_path, corpus, name,
                       generation={"examples_per_cycle": 48, "examples_per_request": 4},
                       teacher={"sim": {"latency_ms": 300}})
    sub = orchestrator("submit", str(spec), env=env)
    assert sub.returncode == 0, sub.stderr
    store = ShardStore(str(tmp_path / "store"))
    sim, url = start_sim(store, name, tmp_path)
    redis_lib.Redis.from_url(redis_url).set(TEACHER_URL_KEY.format(run_id=name), url)
    serve = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--poll", "0.5"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if kill_mid_cycle:
            def some_committed() -> bool:
                plan = store.read_json(name, "cycle=1/plan.json")
                done = store.list_jobs(name, 1, "generated")
                return plan is not None and 0 < len(done) < len(plan["jobs"])

            wait_for(some_committed, 300, "cycle 1 to be part-way through generation")
            serve.send_signal(signal.SIGKILL)
            serve.wait(10)
            serve = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "serve", "--poll", "0.5"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: store.read_json(name, "manifest.json")["status"] == "done", 600,
              f"run {name} to finish")
    finally:
        serve.kill()
        sim.kill()
    return store


def _examples(store: ShardStore, run_id: str) -> list[tuple[str, str, str]]:
    table = store.training_set(run_id, 1)
    return sorted(zip(table.column("id").to_pylist(), table.column("label").to_pylist(),
                      table.column("text").to_pylist(), strict=True))


def test_controller_killed_mid_cycle_gives_the_same_examples(
        tmp_path: Path, corpus: Path, cluster: tuple[str, LocalCluster]) -> None:
    url, local = cluster
    calm = _drive_distributed(tmp_path, corpus, url, "calm", kill_mid_cycle=False)
    killed = _drive_distributed(tmp_path, corpus, url, "killed", kill_mid_cycle=True)
    a, b = _examples(calm, "calm"), _examples(killed, "killed")
    assert len(a) > 120
    assert a == b
    assert len({x[0] for x in b}) == len(b), "no example twice"
    _assert_train_started_promptly(calm, "calm", local)
    # the restarted controller takes over the dead one's lock at once, not after its TTL
    _assert_train_started_promptly(killed, "killed", local)


_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                       r"Task distillq\.train\[([^\]]+)\] received")


def _assert_train_started_promptly(store: ShardStore, run_id: str, local: LocalCluster) -> None:
    """The cycle's train job reaches its worker soon after the cycle's last shard: well
    within a third of the lock's TTL (10 s). Not a speed check (serve polls every 0.5 s): a
    controller that waited out a dead one's lock would send it a whole TTL (30 s) later, and
    no load short of a stalled machine moves a send by 10 s."""
    folder = Path(store.uri) / run_id / "cycle=1" / "generated"
    last_commit = max(p.stat().st_mtime for p in folder.glob("*.parquet"))
    log = (local.state_dir / "logs" / "worker-train-0.log").read_text()
    received = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                for line in log.splitlines() if (m := _LOG_TIME.match(line))
                and m.group(2).startswith(f"{run_id}:c01/train")]
    assert received, "the train job of cycle 1 was never received"
    gap = min(received) - last_commit
    assert -0.5 < gap < LOCK_TTL_MS / 3000, \
        f"train started {gap:.2f}s after the last shard committed"


def test_embedded_run_with_teacher_rationales(tmp_path: Path, corpus: Path) -> None:
    """Attribution end to end: a fine-tuned classifier teacher, one attribution shard per
    generation shard, the student trained on the rationales, their quality in the report."""
    spec = write_spec(tmp_path, corpus, "rat",
                      attribution={"enabled": True, "finetune_epochs": 2, "method": "saliency",
                                   "max_length": 32, "top_k": 3},
                      student={"rationales": True})
    done = orchestrator("run", str(spec), "--quiet", env=run_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = ShardStore(str(tmp_path / "store"))
    for cycle in (0, 1):
        assert store.list_jobs("rat", cycle, "attributed") == store.list_jobs(
            "rat", cycle, "generated")
    rationales = store.attributions("rat", 1).column("rationale").to_pylist()
    assert rationales and all(0 < len(r) <= 3 for r in rationales)
    assert store.read_json("rat", "cycle=1/eval.json")["rationale_examples"] > 0
    quality = store.read_json("rat", "attribution_quality.json")
    assert quality["method"] == "saliency" and quality["deletion"]["n"] > 0
    report = (tmp_path / "store" / "rat" / "report" / "report.md").read_text()
    assert "## Teacher rationales" in report and "random words" in report
