"""The student model: loading (truncated or warm-started), devices, precision, rationale tags.

The student is any Hugging Face encoder loaded as ``AutoModelForSequenceClassification`` with
the run's label map. Truncation to the first N layers is a config override: ``from_pretrained``
then loads only those layers' weights. Rationale-aware training (Ballout et al. 2024) adds a
one-unit token-tagging head on the encoder's last hidden states; it lives beside the model, is
used only by the training loss, and is never saved with the student.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distillq.errors import InvalidInputError
from distillq.words import WORD_RE
from workers.assets import resolve_model
from workers.training.config import LABELS_FILE


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else Apple MPS, else CPU; anything else is passed to torch."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); fp32 elsewhere."""

    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    @property
    def enabled(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)


def load_student(
    source: str | Path,
    label_names: Sequence[str],
    num_layers: int | None = None,
    device: torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier over ``label_names`` from a model reference or a student folder."""
    path = source if isinstance(source, Path) else Path(resolve_model(source).path)
    overrides: dict[str, Any] = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        "problem_type": "single_label_classification",
    }
    base = AutoConfig.from_pretrained(path)
    _check_labels(base, label_names, path)
    if num_layers is not None:
        have = getattr(base, "num_hidden_layers", None)
        if have is None or num_layers > have:
            raise InvalidInputError(f"student.num_layers={num_layers}, but {path} has {have}")
        overrides["num_hidden_layers"] = num_layers
    config = AutoConfig.from_pretrained(path, **overrides)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, ignore_mismatched_sizes=not (path / LABELS_FILE).exists()
    )
    to_device(model, device or torch.device("cpu"))
    return model, AutoTokenizer.from_pretrained(path)


def to_device(model: PreTrainedModel, device: torch.device) -> None:
    module: nn.Module = model  # (PreTrainedModel.to's decorator hides its signature from mypy)
    module.to(device)


def _check_labels(config: Any, label_names: Sequence[str], path: Path) -> None:
    """A warm start must keep the same label order, or its classifier head means nothing."""
    if not (path / LABELS_FILE).exists():
        return  # not a distillq student: its classifier head (if any) is replaced
    old = [config.id2label[i] for i in sorted(config.id2label)]
    if old != list(label_names):
        raise InvalidInputError(f"cannot warm-start from {path}: its labels differ from the run's")


class RationaleHead(nn.Module):
    """Scores every token: is it part of a rationale word? (training only, never saved)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden).squeeze(-1)


def rationale_loss(
    logits: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy over the tokens ``mask`` selects (real tokens of tagged examples)."""
    per_token = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), tags, reduction="none"
    )
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def rationale_tags(
    texts: Sequence[str], rationales: Sequence[list[str] | None], offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token targets (1 = a word piece of a rationale word) and the mask of tokens to score.

    Words are found in the text as the attribution teacher finds them (``WORD_RE`` of
    ``distillq.words``: "top-up" is one word) and compared case-insensitively; every
    token whose character span overlaps a rationale word is tagged, so any tokenizer that gives
    offsets works. Examples without rationales (None) and special or padding tokens (offset
    (0, 0)) are masked out.
    """
    tags = torch.zeros(offsets.shape[:2])
    mask = torch.zeros(offsets.shape[:2])
    for i, (text, words) in enumerate(zip(texts, rationales, strict=True)):
        if words is None:
            continue
        real = offsets[i, :, 1] > offsets[i, :, 0]
        mask[i] = real.float()
        for start, end in _word_spans(text, words):
            inside = (offsets[i, :, 0] < end) & (offsets[i, :, 1] > start) & real
            tags[i, inside] = 1.0
    return tags, mask


def _word_spans(text: str, words: list[str]) -> Iterator[tuple[int, int]]:
    wanted = {w.lower() for word in words for w in WORD_RE.findall(word)}
    for match in WORD_RE.finditer(text):
        if match.group().lower() in wanted:
            yield match.span()
