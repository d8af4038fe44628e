"""Train, evaluate and time the student (PGKD), optionally learning from teacher rationales.

- ``train(TrainConfig, TrainData) -> Checkpoint`` (``train.py``; settings from
  ``TrainConfig.from_spec(spec.student, ...)``), epoch checkpoints in ``checkpoints.py``, the
  model, devices and the rationale head in ``model.py``;
- ``Classifier.load(folder).predict(texts)`` and ``report(...)`` (``evaluate.py``), ``mine``
  (``mining.py``), ``measure_latency`` (``latency.py``);
- the cycle jobs the Celery tasks call: ``train_cycle``, ``evaluate_on_test``,
  ``export_student`` (``cycle.py``).

See docs/training.md.
"""

from workers.training.config import Checkpoint, TrainConfig, TrainData
from workers.training.evaluate import Classifier, Predictions, predict, report
from workers.training.latency import measure_latency
from workers.training.mining import MiningCounts, mine
from workers.training.train import train

__all__ = [
    "Checkpoint",
    "Classifier",
    "MiningCounts",
    "Predictions",
    "TrainConfig",
    "TrainData",
    "measure_latency",
    "mine",
    "predict",
    "report",
    "train",
]
