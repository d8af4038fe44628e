"""The typed inputs and output of ``train``: TrainConfig, TrainData, Checkpoint.

TrainConfig is built once at the edge (``TrainConfig.from_spec(spec.student, ...)``) and is all
``train`` reads; a Checkpoint is what it leaves behind: a Hugging Face folder plus the few numbers
the cycle report needs, which ``Checkpoint.load`` reads back from ``training_state.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distillq.errors import InvalidInputError
from distillq.spec import StudentSpec

LABELS_FILE = "labels.json"
STATE_FILE = "training_state.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train`` needs to know. Paths are local folders."""

    output_dir: Path
    model: str = "builtin:minilm"  # a local Hugging Face folder or a builtin: asset
    num_layers: int | None = None  # keep only the first N encoder layers
    max_length: int = 64
    lr: float = 2e-5
    batch_size: int = 64
    epochs: int = 30
    patience: int = 5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    rationales: bool = False  # learn from rationale words where TrainData has them
    rationale_weight: float = 0.5
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 128
    init_from: Path | None = None  # warm start: an earlier student checkpoint folder
    checkpoint_dir: Path | None = None  # epoch checkpoints, so a killed job resumes
    cache_dir: Path | None = None  # trained cold-start students shared between runs

    @classmethod
    def from_spec(
        cls,
        spec: StudentSpec,
        *,
        output_dir: Path,
        checkpoint_dir: Path | None = None,
        init_from: Path | None = None,
    ) -> TrainConfig:
        """The run spec's student section, plus where this particular training writes."""
        return cls(
            output_dir=Path(output_dir),
            model=spec.model,
            num_layers=spec.num_layers,
            max_length=spec.max_length,
            lr=spec.lr,
            batch_size=spec.batch_size,
            epochs=spec.epochs,
            patience=spec.patience,
            weight_decay=spec.weight_decay,
            rationales=spec.rationales,
            rationale_weight=spec.rationale_weight,
            seed=spec.seed,
            device=spec.device,
            init_from=init_from,
            checkpoint_dir=checkpoint_dir,
            cache_dir=Path(spec.cache_dir.removeprefix("file://")).expanduser()
            if spec.cache_dir else None,
        )

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings an epoch checkpoint must share to be resumed (not paths or epochs)."""
        keep = ("model", "num_layers", "max_length", "lr", "batch_size", "weight_decay",
                "max_grad_norm", "rationales", "rationale_weight", "seed")
        return {k: getattr(self, k) for k in keep} | {"warm": self.init_from is not None}

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class TrainData:
    """Training and validation examples; labels are names from ``label_names``.

    ``rationales[i]`` holds the teacher's rationale words for training example i, or None where
    it has none; ``rationales`` itself is None when no example has any.
    """

    texts: list[str]
    labels: list[str]
    val_texts: list[str]
    val_labels: list[str]
    label_names: list[str]
    rationales: list[list[str] | None] | None = None

    def check(self) -> None:
        """Raise InvalidInputError naming the first problem."""
        if not self.texts or not self.val_texts:
            raise InvalidInputError("training needs at least one training and one validation "
                                    "example (validation loss drives early stopping)")
        if len(self.texts) != len(self.labels) or len(self.val_texts) != len(self.val_labels):
            raise InvalidInputError("texts and labels differ in length")
        if self.rationales is not None and len(self.rationales) != len(self.texts):
            raise InvalidInputError("rationales must have one entry (or None) per training text")
        if len(set(self.label_names)) != len(self.label_names) or len(self.label_names) < 2:
            raise InvalidInputError("label_names must hold at least two distinct labels")
        unknown = sorted(set(self.labels + self.val_labels) - set(self.label_names))
        if unknown:
            raise InvalidInputError(f"labels not in the taxonomy: {unknown[:5]}")

    def label_ids(self, names: list[str]) -> list[int]:
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index[name] for name in names]


@dataclass
class Checkpoint:
    """A trained student: a Hugging Face folder, and how its training went."""

    output_dir: Path
    best_epoch: int
    val_losses: list[float]
    train_losses: list[float] = field(default_factory=list)
    rationale_losses: list[float] = field(default_factory=list)
    epochs_run: int = 0
    resumed_from_epoch: int = 0  # 0 = trained from the start
    warm_start: bool = False  # began from an earlier student's weights
    train_seconds: float = 0.0
    device: str = "cpu"
    rationale_examples: int = 0  # training examples that carried rationale words
    cached: bool = False  # copied from student.cache_dir, not trained by this job

    def state(self) -> dict[str, Any]:
        out = asdict(self)
        out["output_dir"] = str(self.output_dir)
        return out

    @classmethod
    def load(cls, folder: Path) -> Checkpoint:
        """Read a saved student's ``training_state.json``."""
        path = Path(folder) / STATE_FILE
        if not path.exists():
            raise InvalidInputError(f"{folder} is not a distillq student (no {STATE_FILE})")
        state = json.loads(path.read_text())
        names = {f for f in cls.__dataclass_fields__ if f != "output_dir"}
        return cls(output_dir=Path(folder), **{k: v for k, v in state.items() if k in names})
