"""Mining (PGKD section 3): the examples the teacher's next prompt shows it.

- correct: a seeded random sample of correctly classified examples;
- misclassified: a seeded random sample of the errors;
- hard negatives: the errors on which the student was most confident, most confident first
  (ties by id), so a hard negative may also appear among the misclassified.

The paper takes 16 of each over the whole data. With ``per_class=True`` (distillq's class-sharded
generation) each true label gets up to that many of each, so every class's generation job finds
its own examples. Items are ``{id, text, label, pred, confidence}``, labels as names.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Item = dict[str, Any]


@dataclass(frozen=True)
class MiningCounts:
    correct: int = 16
    misclassified: int = 16
    hard_negatives: int = 16
    per_class: bool = False


def outcomes(ids: Sequence[str], texts: Sequence[str], labels: Sequence[str],
             preds: Sequence[str], confidences: Sequence[float]) -> list[Item]:
    """One item per example: what the student said about it."""
    return [{"id": i, "text": t, "label": y, "pred": p, "confidence": float(c)}
            for i, t, y, p, c in zip(ids, texts, labels, preds, confidences, strict=True)]


def mine(items: Sequence[Item], counts: MiningCounts, seed: int = 0) -> dict[str, list[Item]]:
    """Correct, misclassified and hard-negative examples, as ``counts`` says."""
    if not counts.per_class:
        return _mine_group(items, counts, random.Random(seed))
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[item["label"]].append(item)
    out: dict[str, list[Item]] = {"correct": [], "misclassified": [], "hard_negatives": []}
    for label in sorted(groups):
        mined = _mine_group(groups[label], counts, random.Random(f"{seed}-{label}"))
        for key, chosen in mined.items():
            out[key].extend(chosen)
    out["hard_negatives"] = _most_confident(out["hard_negatives"], len(out["hard_negatives"]))
    return out


def _mine_group(items: Sequence[Item], counts: MiningCounts,
                rng: random.Random) -> dict[str, list[Item]]:
    right = [x for x in items if x["pred"] == x["label"]]
    wrong = [x for x in items if x["pred"] != x["label"]]
    return {
        "correct": rng.sample(right, min(counts.correct, len(right))),
        "misclassified": rng.sample(wrong, min(counts.misclassified, len(wrong))),
        "hard_negatives": _most_confident(wrong, counts.hard_negatives),
    }


def _most_confident(items: Sequence[Item], n: int) -> list[Item]:
    return sorted(items, key=lambda x: (-x["confidence"], x["id"]))[:n]
