"""The Celery contract between the orchestrator and the workers: task names, the queue each
task goes to, and the queues a worker may serve. The names are the wire format (a message
carries one), so they never change with the code's layout."""

from __future__ import annotations

GENERATE = "distillq.generate"  # args: run_id, cycle, job_id, storage URI
ATTRIBUTE = "distillq.attribute"  # args: run_id, cycle, job_id, storage URI
PREPARE_TEACHER = "distillq.prepare_teacher"  # args: run_id, storage URI
TRAIN = "distillq.train"  # args: run_id, cycle, storage URI
TEST = "distillq.test"  # args: run_id, cycle, storage URI
SCORE = "distillq.score"  # args: run_id, cycle, shard name, storage URI
SELECT = "distillq.select"  # args: run_id, cycle, storage URI
PING = "distillq.ping"  # args: payload, reply list (the controller benchmark's no-op)

QUEUES = ("generate", "attribute", "train")

ROUTES = {
    GENERATE: {"queue": "generate"},
    PING: {"queue": "generate"},
    PREPARE_TEACHER: {"queue": "attribute"},
    ATTRIBUTE: {"queue": "attribute"},
    TRAIN: {"queue": "train"},
    TEST: {"queue": "train"},
    SCORE: {"queue": "train"},
    SELECT: {"queue": "train"},
}
