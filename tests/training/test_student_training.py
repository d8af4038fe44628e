"""train(): learning, early stopping, best-epoch weights, resuming, rationale-aware training."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from training_kit import Subset, Trained, small_config
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillq.errors import InvalidInputError
from distillq.spec import StudentSpec
from workers.training.checkpoints import History
from workers.training.config import STATE_FILE, Checkpoint, TrainConfig
from workers.training.evaluate import Classifier, report
from workers.training.model import load_student, rationale_tags
from workers.training.train import train


def _saved_keys(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return set(fh.keys())


def test_student_beats_the_majority_baseline_on_held_out_data(
    subset: Subset, trained: Trained
) -> None:
    clf = Classifier.load(trained.ckpt.output_dir, "cpu")
    texts, gold = [t for t, _ in subset.test], [y for _, y in subset.test]
    accuracy = float((clf.predict(texts).preds == clf.label_ids(gold)).mean())
    majority = Counter(gold).most_common(1)[0][1] / len(gold)
    assert accuracy > majority + 0.3, (accuracy, majority, trained.ckpt.val_losses)


def test_the_saved_student_is_the_best_epoch(subset: Subset, trained: Trained) -> None:
    ckpt = trained.ckpt
    assert ckpt.best_epoch == int(np.argmin(ckpt.val_losses)) + 1
    assert ckpt.epochs_run == len(ckpt.val_losses) <= trained.cfg.epochs
    clf = Classifier.load(ckpt.output_dir, "cpu")
    assert clf.max_length == 32
    assert clf.model.config.num_hidden_layers == 2  # truncated to the first 2 layers
    assert clf.labels == subset.labels
    val = clf.predict([t for t, _ in subset.val])
    loss = report(clf.labels, clf.label_ids([y for _, y in subset.val]), val)["loss"]
    assert loss == pytest.approx(ckpt.val_losses[ckpt.best_epoch - 1], abs=1e-4)
    assert Checkpoint.load(ckpt.output_dir) == ckpt


def test_early_stopping_keeps_the_best_epoch_not_the_last(
    subset: Subset, tmp_path: Path
) -> None:
    """Validation labels shifted by one class: learning the task makes validation loss worse."""
    labels = subset.labels[:5]
    train_part = [(t, y) for t, y in subset.train if y in labels][::2]
    shifted = [(t, labels[(labels.index(y) + 1) % 5]) for t, y in subset.val if y in labels]
    data = Subset(labels, train_part, shifted, []).data()
    cfg = small_config(tmp_path / "s", epochs=6, patience=1, lr=5e-4)
    ckpt = train(cfg, data)
    assert ckpt.val_losses[1] > ckpt.val_losses[0]
    assert (ckpt.best_epoch, ckpt.epochs_run) == (1, 2)  # stopped after 1 epoch without gain
    clf = Classifier.load(ckpt.output_dir, "cpu")
    loss = report(labels, clf.label_ids(data.val_labels), clf.predict(data.val_texts))["loss"]
    assert loss == pytest.approx(ckpt.val_losses[0], abs=1e-4)


def test_history_counts_epochs_without_gain() -> None:
    h = History()
    assert [h.record(e, 1.0, 0.0, v) for e, v in enumerate([2.0, 1.5, 1.6, 1.5, 1.4], 1)] == [
        True, True, False, False, True]
    assert (h.best_epoch, h.bad_epochs, h.epoch) == (5, 0, 5)


@pytest.mark.slow
def test_resuming_from_an_epoch_checkpoint_gives_the_same_training(
    subset: Subset, trained: Trained, tmp_path: Path
) -> None:
    """Stop after epoch 1, go on to epoch 2: bit-identical to the uninterrupted run (CPU)."""
    epochs = tmp_path / "epochs"
    first = train(small_config(tmp_path / "a", epochs=1, checkpoint_dir=epochs), subset.data())
    assert first.resumed_from_epoch == 0 and (epochs / "last.pt").exists()
    second = train(small_config(tmp_path / "b", epochs=2, checkpoint_dir=epochs), subset.data())
    assert second.resumed_from_epoch == 1
    assert second.val_losses == trained.ckpt.val_losses[:2]
    assert second.train_losses == trained.ckpt.train_losses[:2]


@pytest.mark.slow
def test_an_epoch_checkpoint_of_other_data_is_not_resumed(
    subset: Subset, trained: Trained, tmp_path: Path
) -> None:
    other = subset.data(texts=[t.upper() for t, _ in subset.train])
    assert trained.cfg.checkpoint_dir is not None
    cfg = small_config(tmp_path / "s", epochs=1, checkpoint_dir=tmp_path / "ep")
    (tmp_path / "ep").mkdir()
    for f in trained.cfg.checkpoint_dir.iterdir():
        (tmp_path / "ep" / f.name).write_bytes(f.read_bytes())
    assert train(cfg, other).resumed_from_epoch == 0


def test_rationale_tags_mark_the_word_pieces_of_rationale_words(trained: Trained) -> None:
    tok = AutoTokenizer.from_pretrained(trained.ckpt.output_dir)
    texts = ["Can I top-up my Card online?", "where is my card"]
    enc = tok(texts, padding=True, return_offsets_mapping=True, return_tensors="pt")
    tags, mask = rationale_tags(texts, [["top-up", "card"], None], enc["offset_mapping"])
    tokens = tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    assert [t for t, y in zip(tokens, tags[0].tolist(), strict=True) if y] == [
        "top", "-", "up", "card"]
    assert mask[0].sum() == len(tok.tokenize(texts[0]))  # every real token, no [CLS]/[SEP]/pad
    assert mask[1].sum() == 0 and tags[1].sum() == 0  # no rationale: not scored


@pytest.mark.slow
def test_rationale_aware_training_learns_and_saves_a_plain_classifier(
    subset: Subset, trained: Trained, tmp_path: Path
) -> None:
    # rationale words: each text's two longest words
    rationales = [sorted(t.split(), key=len)[-2:] for t, _ in subset.train]
    cfg = small_config(tmp_path / "s", epochs=2, rationales=True, rationale_weight=1.0)
    ckpt = train(cfg, subset.data(rationales=rationales))
    assert ckpt.rationale_examples == len(subset.train)
    assert ckpt.rationale_losses[1] < ckpt.rationale_losses[0]
    # the auxiliary loss changed the encoder (same seed and data order as the plain run)...
    assert ckpt.val_losses[0] != trained.ckpt.val_losses[0]
    # ...and the saved model is exactly the plain classifier: no extra weights
    assert _saved_keys(ckpt.output_dir) == _saved_keys(trained.ckpt.output_dir)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        ckpt.output_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == "BertForSequenceClassification"
    state = json.loads((ckpt.output_dir / STATE_FILE).read_text())
    assert state["config"]["rationales"] is True


@pytest.mark.slow
def test_rationales_switched_off_ignores_them(subset: Subset, tmp_path: Path) -> None:
    rationales = [t.split()[:1] for t, _ in subset.train]
    cfg = small_config(tmp_path / "s", epochs=1, rationales=False)
    ckpt = train(cfg, subset.data(rationales=rationales))
    assert ckpt.rationale_examples == 0 and ckpt.rationale_losses == [0.0]


def test_warm_start_needs_the_same_labels(subset: Subset, trained: Trained) -> None:
    model, _ = load_student(trained.ckpt.output_dir, subset.labels)
    assert model.config.id2label[0] == subset.labels[0]
    with pytest.raises(InvalidInputError, match="labels differ"):
        load_student(trained.ckpt.output_dir, list(reversed(subset.labels)))
    with pytest.raises(InvalidInputError, match="num_layers=9"):
        load_student("builtin:minilm", subset.labels, num_layers=9)


def test_bad_training_data_is_refused(subset: Subset, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not in the taxonomy"):
        train(small_config(tmp_path), subset.data(labels=["nope"] * len(subset.train)))
    with pytest.raises(InvalidInputError, match="validation"):
        train(small_config(tmp_path), subset.data(val_texts=[], val_labels=[]))


def test_config_from_the_run_spec(tmp_path: Path) -> None:
    spec = StudentSpec(num_layers=3, lr=1e-4, patience=2, rationales=True, weight_decay=0.0)
    cfg = TrainConfig.from_spec(spec, output_dir=tmp_path, checkpoint_dir=tmp_path / "e")
    assert (cfg.num_layers, cfg.lr, cfg.patience, cfg.rationales, cfg.weight_decay) == (
        3, 1e-4, 2, True, 0.0)
    assert (cfg.batch_size, cfg.epochs, cfg.init_from) == (64, 30, None)  # PGKD's defaults
