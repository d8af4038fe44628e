"""Evaluate a student: batched predictions, and the report the planner reads (architecture.md).

Metrics are computed with numpy from one confusion matrix and match scikit-learn's
(``precision_recall_fscore_support(..., zero_division=0)``; macro-F1 over the labels that occur
in the truth or the predictions, as ``f1_score(average="macro")`` does). Every taxonomy label gets
a ``per_class`` entry, with zeros where it has no support and no predictions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distillq.errors import InvalidInputError
from workers.training.config import STATE_FILE
from workers.training.model import Precision, pick_device, to_device


@dataclass(frozen=True)
class Predictions:
    """``preds[i]`` is a label index, ``confidences[i] = probs[i, preds[i]]``."""

    preds: np.ndarray  # (n,) int64
    confidences: np.ndarray  # (n,) float64
    probs: np.ndarray  # (n, n_labels) float64
    embeddings: np.ndarray | None = None  # (n, hidden) float32, when asked for


@torch.no_grad()
def predict(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
            *, max_length: int = 64, batch_size: int = 128, embed: bool = False) -> Predictions:
    """Class probabilities for ``texts``, in batches of similar length, without gradients;
    with ``embed``, also each text's embedding: the mean of the last layer's token states
    (padding left out), what active labelling clusters."""
    model.eval()
    device = next(model.parameters()).device
    precision = Precision(device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    probs = np.zeros((len(texts), model.config.num_labels or 0))
    embeddings = np.zeros((len(texts), model.config.hidden_size), np.float32) if embed else None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        with precision.autocast():
            out = model(**enc, output_hidden_states=embed)
        probs[idx] = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()
        if embeddings is not None:
            mask = enc["attention_mask"].unsqueeze(-1).float()
            states = out.hidden_states[-1].float()
            embeddings[idx] = ((states * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
    preds = probs.argmax(axis=1)
    return Predictions(preds, probs[np.arange(len(texts)), preds], probs, embeddings)


@dataclass
class Classifier:
    """A saved student, ready to predict: ``Classifier.load(folder).predict(texts)``."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    max_length: int = 64

    @classmethod
    def load(cls, folder: Path, device: str = "auto") -> Classifier:
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        to_device(model, pick_device(device))
        state_file = Path(folder) / STATE_FILE
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return cls(model, AutoTokenizer.from_pretrained(folder), labels,
                   int(state.get("max_length", 64)))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(self, texts: Sequence[str], batch_size: int = 128,
                embed: bool = False) -> Predictions:
        return predict(self.model, self.tokenizer, texts, max_length=self.max_length,
                       batch_size=batch_size, embed=embed)

    def label_ids(self, names: Sequence[str]) -> np.ndarray:
        """Label names to indices; InvalidInputError for a label outside the taxonomy."""
        index = {name: i for i, name in enumerate(self.labels)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise InvalidInputError(f"labels not known to the student: {unknown[:5]}")
        return np.array([index[n] for n in names], dtype=np.int64)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> np.ndarray:
    """``cm[t, p]`` = how many examples of label t were predicted as p."""
    cm = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


_EPS = float(np.finfo(np.float64).eps)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def report(labels: Sequence[str], y_true: np.ndarray, pred: Predictions,
           top_confusions: int = 50) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, loss, per-class P/R/F1/support, most frequent confusions."""
    if len(y_true) == 0:
        raise InvalidInputError("cannot evaluate on an empty set")
    cm = confusion_matrix(y_true, pred.preds, len(labels))
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    present = (support + predicted) > 0
    p_true = pred.probs[np.arange(len(y_true)), y_true]
    return {
        "accuracy": float(tp.sum() / len(y_true)),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "loss": float(-np.log(np.clip(p_true, _EPS, None)).mean()),  # as scikit-learn's log_loss
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(labels)},
        "confusions": top_confused(cm, labels, top_confusions),
    }


def top_confused(cm: np.ndarray, labels: Sequence[str], n: int) -> list[list[Any]]:
    """Off-diagonal cells, most frequent first (ties: by true, then predicted label index)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off)
    order = np.lexsort((p, t, -off[t, p]))[:n]
    return [[labels[t[i]], labels[p[i]], int(off[t[i], p[i]])] for i in order]
