"""student.cache_dir: a cold-start student trained once is copied, not trained again, by any
later training with the same settings, data and seed — and it is the student training would
have produced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_kit import Subset, small_config

from distillq.errors import InvalidInputError
from orchestrator.runs import check_cache_dir
from workers.training.config import STATE_FILE, Checkpoint, TrainData
from workers.training.train import train


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _small(subset: Subset, drop_last: bool = False) -> TrainData:
    """A quarter of the subset (all classes): these tests train many one-epoch students."""
    train = subset.train[::4][:-1] if drop_last else subset.train[::4]
    return subset.data(texts=[t for t, _ in train], labels=[y for _, y in train],
                       val_texts=[t for t, _ in subset.val[::2]],
                       val_labels=[y for _, y in subset.val[::2]])


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.slow
def test_a_cached_student_is_copied_and_equals_a_fresh_training(
    subset: Subset, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = train(small_config(tmp_path / "a", epochs=1, cache_dir=cache), _small(subset))
    assert not first.cached and len(_entries(cache)) == 1

    again = train(small_config(tmp_path / "b", epochs=1, cache_dir=cache), _small(subset))
    assert again.cached and _entries(cache) == _entries(cache)[:1]
    assert again.val_losses == first.val_losses and again.best_epoch == first.best_epoch
    assert Checkpoint.load(tmp_path / "b").cached, "the copy says where it came from"

    fresh = train(small_config(tmp_path / "c", epochs=1), _small(subset))  # no cache at all
    for name, tensor in _weights(tmp_path / "c").items():
        assert torch.equal(tensor, _weights(tmp_path / "b")[name]), name
    assert fresh.val_losses == again.val_losses


@pytest.mark.slow
def test_other_data_settings_or_a_warm_start_miss_the_cache(
    subset: Subset, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    base = train(small_config(tmp_path / "a", epochs=1, cache_dir=cache), _small(subset))
    fewer = _small(subset, drop_last=True)
    assert not train(small_config(tmp_path / "b", epochs=1, cache_dir=cache), fewer).cached
    assert not train(small_config(tmp_path / "c", epochs=1, seed=1, cache_dir=cache),
                     _small(subset)).cached
    assert len(_entries(cache)) == 3
    warm = train(small_config(tmp_path / "d", epochs=1, cache_dir=cache,
                              init_from=base.output_dir), _small(subset))
    assert not warm.cached and len(_entries(cache)) == 3, "warm starts are neither read nor kept"


def test_a_half_written_entry_is_not_taken(subset: Subset, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    train(small_config(tmp_path / "a", epochs=1, cache_dir=cache), _small(subset))
    (entry,) = list(cache.iterdir())
    (entry / STATE_FILE).unlink()  # what a writer killed mid-copy could leave, at worst
    assert not train(small_config(tmp_path / "b", epochs=1, cache_dir=cache),
                     _small(subset)).cached
    assert (entry / STATE_FILE).is_file(), "the broken entry was replaced by a whole one"
    assert train(small_config(tmp_path / "c", epochs=1, cache_dir=cache), _small(subset)).cached


def test_a_cache_that_cannot_be_written_does_not_fail_the_training(
    subset: Subset, tmp_path: Path
) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    cfg = small_config(tmp_path / "a", epochs=1, cache_dir=tmp_path / "not-a-folder" / "c")
    ckpt = train(cfg, _small(subset))
    assert not ckpt.cached and (tmp_path / "a" / STATE_FILE).is_file()


def test_a_file_uri_names_a_local_cache_folder(tmp_path: Path) -> None:
    from distillq.spec import StudentSpec
    from workers.training.config import TrainConfig

    spec = StudentSpec(cache_dir=f"file://{tmp_path}/students")
    cfg = TrainConfig.from_spec(spec, output_dir=tmp_path / "out")
    assert cfg.cache_dir == tmp_path / "students"


def test_the_cache_folder_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError, match="must be a local folder"):
        check_cache_dir("s3://bucket/students")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="exists and is not a folder"):
        check_cache_dir(str(tmp_path / "file"))
    monkeypatch.setenv("DISTILLQ_STORAGE_ROOTS", str(tmp_path / "runs"))
    with pytest.raises(InvalidInputError, match="student.cache_dir .* outside the allowed roots"):
        check_cache_dir(str(tmp_path / "elsewhere"))
    assert check_cache_dir(str(tmp_path / "runs" / "students"))
