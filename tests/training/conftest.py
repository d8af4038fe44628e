"""Fixtures of the training tests: two CPU threads, the corpus subset, one trained student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_kit import Subset, Trained, load_subset, small_config

from workers.training.train import train


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def subset(corpus: Path) -> Subset:
    return load_subset(corpus)


@pytest.fixture(scope="session")
def trained(subset: Subset, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The one plain student every evaluation test shares (with epoch checkpoints on)."""
    root = tmp_path_factory.mktemp("trained")
    cfg = small_config(root / "student", checkpoint_dir=root / "epochs")
    return Trained(cfg, train(cfg, subset.data()))
