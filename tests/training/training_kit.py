"""What the training tests share: a subset of the tests' corpus and the small test student's settings.

The student is real: all-MiniLM-L6-v2 cut to its first 2 layers, trained on CPU with at most two
threads, on 10 classes x 40 examples, short texts (32 tokens), a few epochs.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.training.config import Checkpoint, TrainConfig, TrainData

CLASSES = 10
N_TRAIN, N_VAL, N_TEST = 40, 10, 20  # per class


@dataclass(frozen=True)
class Subset:
    labels: list[str]
    train: list[tuple[str, str]]  # (text, label)
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]

    def data(self, **over: Any) -> TrainData:
        fields: dict[str, Any] = {
            "texts": [t for t, _ in self.train], "labels": [y for _, y in self.train],
            "val_texts": [t for t, _ in self.val], "val_labels": [y for _, y in self.val],
            "label_names": self.labels,
        }
        return TrainData(**{**fields, **over})


def _by_class(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["category"]].append(row["text"])
    return out


def write_subset_csv(corpus: Path, out: Path, classes: int, per_class: int) -> Path:
    """The first ``per_class`` training texts of the corpus's first ``classes`` labels (sorted),
    as a ``text,label`` CSV at ``out``: a small dataset for a run made by ``create_run``."""
    by_label = _by_class(corpus / "train.csv")
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for label in sorted(by_label)[:classes]:
            writer.writerows([t, label] for t in by_label[label][:per_class])
    return out


def load_subset(corpus: Path) -> Subset:
    """10 classes: 40 train + 10 validation texts each from train.csv, 20 test texts from test.csv."""
    train_rows, test_rows = _by_class(corpus / "train.csv"), _by_class(corpus / "test.csv")
    labels = sorted(train_rows)[:CLASSES]
    rng = random.Random(0)
    train_part, val_part, test_part = [], [], []
    for label in labels:
        texts = list(train_rows[label])
        rng.shuffle(texts)
        train_part += [(t, label) for t in texts[:N_TRAIN]]
        val_part += [(t, label) for t in texts[N_TRAIN:N_TRAIN + N_VAL]]
        test_part += [(t, label) for t in test_rows[label][:N_TEST]]
    return Subset(labels, train_part, val_part, test_part)


def small_config(out: Path, **over: Any) -> TrainConfig:
    """The test student: 2 MiniLM layers, 32 tokens, lr 2e-4, batch 16."""
    base: dict[str, Any] = {
        "output_dir": out, "model": "builtin:minilm", "num_layers": 2, "max_length": 32,
        "lr": 2e-4, "batch_size": 16, "epochs": 4, "patience": 2, "seed": 0, "device": "cpu",
    }
    return TrainConfig(**{**base, **over})


@dataclass(frozen=True)
class Trained:
    cfg: TrainConfig
    ckpt: Checkpoint
