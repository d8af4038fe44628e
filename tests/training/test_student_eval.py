"""Evaluation, mining, latency and export of a trained student."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)
from training_kit import Subset, Trained
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from storage.store import ShardStore
from workers.training.cycle import export_student
from workers.training.evaluate import Classifier, Predictions, report
from workers.training.latency import measure_latency
from workers.training.mining import MiningCounts, mine, outcomes


@pytest.fixture(scope="module")
def held_out(subset: Subset, trained: Trained) -> tuple[Classifier, np.ndarray, Predictions]:
    clf = Classifier.load(trained.ckpt.output_dir, "cpu")
    rows = subset.test + subset.val
    return clf, clf.label_ids([y for _, y in rows]), clf.predict([t for t, _ in rows])


def _assert_matches_sklearn(labels: list[str], y: np.ndarray, pred: Predictions) -> None:
    got = report(labels, y, pred, top_confusions=1000)
    ids = list(range(len(labels)))
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred.preds), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred.preds, average="macro"), abs=1e-12)
    assert got["weighted_f1"] == pytest.approx(
        f1_score(y, pred.preds, average="weighted"), abs=1e-12)
    assert got["loss"] == pytest.approx(log_loss(y, pred.probs, labels=ids), rel=1e-6)
    p, r, f, s = precision_recall_fscore_support(y, pred.preds, labels=ids, zero_division=0)
    for i, name in enumerate(labels):
        assert got["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}, abs=1e-12)
    cm = confusion_matrix(y, pred.preds, labels=ids)
    expected = sorted((-cm[t, q], t, q) for t in ids for q in ids if t != q and cm[t, q])
    assert got["confusions"] == [[labels[t], labels[q], -n] for n, t, q in expected]


def test_report_equals_scikit_learn_on_the_students_predictions(
    held_out: tuple[Classifier, np.ndarray, Predictions]
) -> None:
    clf, y, pred = held_out
    assert 0 < (pred.preds != y).sum() < len(y)  # some errors, some hits: a real test
    _assert_matches_sklearn(clf.labels, y, pred)
    assert np.allclose(pred.probs.sum(axis=1), 1.0)
    assert np.array_equal(pred.confidences, pred.probs.max(axis=1))


def test_report_equals_scikit_learn_with_absent_and_never_predicted_classes() -> None:
    rng = np.random.default_rng(0)
    labels = [f"c{i}" for i in range(6)]
    y = rng.choice([0, 1, 2, 3], size=50)  # c4, c5 never occur
    probs = rng.dirichlet(np.ones(6), size=50)
    probs[:, 3] = 0.0  # c3 is never predicted
    probs /= probs.sum(axis=1, keepdims=True)
    preds = probs.argmax(axis=1)
    pred = Predictions(preds, probs[np.arange(50), preds], probs)
    _assert_matches_sklearn(labels, y, pred)
    got = report(labels, y, pred, top_confusions=3)
    assert len(got["confusions"]) == 3 and got["per_class"]["c5"]["support"] == 0


def test_hard_negatives_are_exactly_the_most_confident_errors(
    subset: Subset, held_out: tuple[Classifier, np.ndarray, Predictions]
) -> None:
    clf, y, pred = held_out
    rows = subset.test + subset.val
    items = outcomes([f"x{i}" for i in range(len(rows))], [t for t, _ in rows],
                     [lab for _, lab in rows], [clf.labels[i] for i in pred.preds],
                     pred.confidences.tolist())
    wrong = np.flatnonzero(pred.preds != y)
    n = min(5, len(wrong))
    expected = [f"x{i}" for i in wrong[np.argsort(-pred.confidences[wrong], kind="stable")][:n]]
    mined = mine(items, MiningCounts(correct=4, misclassified=6, hard_negatives=n), seed=3)
    assert [x["id"] for x in mined["hard_negatives"]] == expected
    assert set(mined["hard_negatives"][0]) == {"id", "text", "label", "pred", "confidence"}
    assert all(x["pred"] == x["label"] for x in mined["correct"]) and len(mined["correct"]) == 4
    assert all(x["pred"] != x["label"] for x in mined["misclassified"])
    assert len(mined["misclassified"]) == min(6, len(wrong))
    assert mine(items, MiningCounts(4, 6, n), seed=3) == mined  # seeded


def test_per_class_mining_gives_each_class_its_own_examples() -> None:
    items = [{"id": f"{c}{i}", "text": "t", "label": c, "pred": "a" if i % 2 else c,
              "confidence": i / 10} for c in "abc" for i in range(10)]
    mined = mine(items, MiningCounts(correct=2, misclassified=2, hard_negatives=2,
                                     per_class=True))
    hard = mined["hard_negatives"]
    assert sorted(x["id"] for x in hard) == ["b7", "b9", "c7", "c9"]  # class a has no errors
    assert [x["confidence"] for x in hard] == sorted((x["confidence"] for x in hard),
                                                     reverse=True)
    assert sorted(x["label"] for x in mined["correct"]) == ["a", "a", "b", "b", "c", "c"]


def test_latency_per_batch_of_64(held_out: tuple[Classifier, np.ndarray, Predictions]) -> None:
    clf = held_out[0]
    lat = measure_latency(clf.model, clf.tokenizer, ["short text", "a longer text here"],
                          max_length=32, warmup=1, runs=3)
    assert lat["seconds_per_64"] > 0 and lat["batch_size"] == 64
    assert lat["examples_per_s"] == pytest.approx(64 / lat["seconds_per_64"])
    assert lat["device"].startswith("cpu")


def test_exported_student_reloads_with_from_pretrained_and_predicts_the_same(
    subset: Subset, trained: Trained, tmp_path: Path
) -> None:
    store = ShardStore(str(tmp_path / "store"))
    store.put_dir(trained.ckpt.output_dir, "run1", "cycle=0/student")
    out = export_student(store, "run1", 0, tmp_path / "exported")
    texts = [t for t, _ in subset.test]
    original = Classifier.load(trained.ckpt.output_dir, "cpu").predict(texts)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        enc = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        probs = torch.softmax(model(**enc).logits, dim=-1).numpy()
    assert np.array_equal(probs.argmax(axis=1), original.preds)
    assert np.allclose(probs, original.probs, atol=1e-5)
    classify = pipeline("text-classification", model=str(out), device="cpu")
    names = [r["label"] for r in classify(texts[:20], truncation=True, max_length=32)]
    assert names == [model.config.id2label[int(i)] for i in original.preds[:20]]
