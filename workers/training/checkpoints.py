"""Epoch checkpoints: all a killed training job needs to go on after its last finished epoch.

``checkpoint_dir`` holds ``last.pt`` (model, optimizer, rationale head, loss scaler, random
number generator states, the loss history, and the name of the best weights' file) and
``best-e<epoch>.pt`` (the best epoch's model weights). Each file is written under a temporary
name and renamed, and ``last.pt`` only after the best file it names, so a kill at any moment
leaves either the previous consistent pair or the new one. A checkpoint whose fingerprint (data
and settings) differs from the current training is ignored and removed.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

LAST = "last.pt"


@dataclass
class History:
    """Per-epoch losses and the early-stopping state."""

    epoch: int = 0  # last finished epoch
    train_losses: list[float] = field(default_factory=list)
    rationale_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    bad_epochs: int = 0

    def record(self, epoch: int, train: float, rationale: float, val: float) -> bool:
        """Add one epoch; True if its validation loss is the best so far."""
        self.epoch = epoch
        self.train_losses.append(train)
        self.rationale_losses.append(rationale)
        self.val_losses.append(val)
        if val < self.best_loss:
            self.best_epoch, self.best_loss, self.bad_epochs = epoch, val, 0
            return True
        self.bad_epochs += 1
        return False


@dataclass
class Parts:
    """The objects whose state an epoch checkpoint carries."""

    model: nn.Module
    head: nn.Module | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def weights_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's weights (the best epoch's, kept while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class EpochCheckpoints:
    """Save after every epoch; load the last one if it belongs to this training."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, history: History, parts: Parts, best: dict[str, torch.Tensor] | None) -> None:
        """Write the epoch's state; ``best`` is given when this epoch is the new best."""
        best_file = f"best-e{history.best_epoch:03d}.pt"
        if best is not None:
            _atomic_save(best, self.folder / best_file)
        _atomic_save({
            "fingerprint": self.fingerprint,
            "history": asdict(history),
            "best_file": best_file,
            "model": parts.model.state_dict(),
            "head": parts.head.state_dict() if parts.head is not None else None,
            "optimizer": parts.optimizer.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "rng": _rng_state(),
        }, self.folder / LAST)
        for old in self.folder.glob("best-e*.pt"):
            if old.name != best_file:
                old.unlink(missing_ok=True)

    def restore(self, parts: Parts) -> tuple[History, dict[str, torch.Tensor] | None]:
        """Load the last epoch into ``parts``; a fresh History if there is nothing to resume."""
        saved = self._load()
        if saved is None:
            return History(), None
        parts.model.load_state_dict(saved["model"])
        if parts.head is not None and saved["head"] is not None:
            parts.head.load_state_dict(saved["head"])
        parts.optimizer.load_state_dict(saved["optimizer"])
        parts.scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        best = torch.load(self.folder / saved["best_file"], weights_only=True)
        return History(**saved["history"]), best

    def _load(self) -> dict[str, Any] | None:
        path = self.folder / LAST
        if not path.exists():
            return None
        saved: dict[str, Any] = torch.load(path, weights_only=True, map_location="cpu")
        if saved.get("fingerprint") != self.fingerprint:
            self.clear()
            return None
        return saved

    def clear(self) -> None:
        for path in self.folder.glob("*.pt*"):
            path.unlink(missing_ok=True)
