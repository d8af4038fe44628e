"""``dataset.steer_fraction``: a real cycle-0 train job on a small run whose validation split
has a steering part and a selecting part (a 1-layer MiniLM, 5 classes of the tests' corpus, 1 epoch)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_kit import write_subset_csv

from distillq.errors import InvalidInputError
from distillq.spec import RunSpec, parse_spec
from distillq.split import steer_mask
from orchestrator.report import _steer_note
from orchestrator.runs import create_run, load_manifest
from storage.store import ShardStore
from workers.training.cycle import train_cycle, validation_parts

CLASSES, PER_CLASS = 5, 24


def _spec(corpus: Path, tmp_path: Path, steer_fraction: float) -> RunSpec:
    data = write_subset_csv(corpus, tmp_path / "data.csv", CLASSES, PER_CLASS)
    return parse_spec({
        "run_id": "steer", "storage": str(tmp_path / "store"),
        "dataset": {"train": str(data), "seed_size": 100, "val_fraction": 0.4,
                    "steer_fraction": steer_fraction, "sample_seed": 5},
        "student": {"model": "builtin:minilm", "num_layers": 1, "max_length": 32,
                    "lr": 1e-3, "batch_size": 16, "epochs": 1, "device": "cpu"},
    })


def test_only_the_steering_part_is_mined_and_only_the_rest_selects(
        corpus: Path, tmp_path: Path) -> None:
    spec = _spec(corpus, tmp_path, 0.25)
    store = ShardStore(spec.storage)
    create_run(spec, store)
    val = store.read_table("steer", "val")
    select, steer = validation_parts(spec, val)
    assert steer is not None and (select.num_rows, steer.num_rows) == (30, 10)
    ids, labels = val.column("id").to_pylist(), val.column("label").to_pylist()
    mask = steer_mask(ids, labels, 0.25, seed=5)  # the run's sample_seed
    assert set(steer.column("id").to_pylist()) == {i for i, m in zip(ids, mask, strict=True) if m}

    result = train_cycle(spec, store, "steer", 0, tmp_path / "work")
    select_ids, steer_ids = set(select.column("id").to_pylist()), set(steer.column("id").to_pylist())
    assert result["n"] == 30 and result["steer"]["n"] == 10
    select_labels, steer_labels = select.column("label").to_pylist(), steer.column("label").to_pylist()
    for label, got in result["per_class"].items():
        assert got["support"] == select_labels.count(label), label
        assert result["steer"]["per_class"][label]["support"] == steer_labels.count(label), label
    # early stopping saw the selecting part: its loss is the report's, not the steering part's
    assert min(result["val_losses"]) == pytest.approx(result["loss"], abs=1e-3)
    assert abs(result["loss"] - result["steer"]["loss"]) > 1e-3
    mined = [x["id"] for group in result["mined"].values() for x in group]
    assert mined and not set(mined) & select_ids, "the selecting part is never shown"
    assert set(mined) & steer_ids, "the steering part's examples are mined"
    preds = {split: store.read_shard("steer", 0, "predictions", split) for split in ("val", "steer")}
    assert set(preds["val"].column("example_id").to_pylist()) == select_ids
    assert set(preds["steer"].column("example_id").to_pylist()) == steer_ids
    assert set(preds["steer"].column("split").to_pylist()) == {"steer"}

    note = _steer_note(load_manifest(store, "steer").spec, [result])
    assert "30 validation examples that select" in note[1] and "other 10 alone" in note[1]


def test_without_a_steer_fraction_the_whole_split_does_both(tmp_path: Path,
                                                            corpus: Path) -> None:
    spec = _spec(corpus, tmp_path, 0.0)
    store = ShardStore(spec.storage)
    create_run(spec, store)
    val = store.read_table("steer", "val")
    select, steer = validation_parts(spec, val)
    assert steer is None and select is val
    assert _steer_note(load_manifest(store, "steer").spec, [{"n": 40}]) == []


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_a_steer_fraction_leaving_a_part_empty_fails_at_submit(tmp_path: Path, corpus: Path,
                                                               fraction: float) -> None:
    spec = _spec(corpus, tmp_path, fraction)
    with pytest.raises(InvalidInputError, match=f"steer_fraction={fraction} of the 40"):
        create_run(spec, ShardStore(spec.storage))
