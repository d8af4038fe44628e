"""``train(cfg, data) -> Checkpoint``: fine-tune a student classifier (PGKD section 3).

Reads top to bottom. Load the student (truncated to its first N layers, or warm-started from an
earlier checkpoint); go on from the last epoch checkpoint if a killed run left one; then, each
epoch: shuffle, train on the classification loss (plus, where teacher rationales are given, the
rationale token-tagging loss of Ballout et al.), measure the validation loss, keep the best
epoch's weights, and stop after ``patience`` epochs without a lower validation loss. The best
weights are saved as a plain Hugging Face classifier: the rationale head is never saved.

On CPU a run is reproducible bit for bit (same seed, same thread count), resumed or not: the
shuffle of epoch e depends only on (seed, e), and the epoch checkpoint carries the RNG state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.training import cache
from workers.training.checkpoints import EpochCheckpoints, History, Parts, weights_copy
from workers.training.config import LABELS_FILE, STATE_FILE, Checkpoint, TrainConfig, TrainData
from workers.training.model import (
    Precision,
    RationaleHead,
    load_student,
    pick_device,
    rationale_loss,
    rationale_tags,
)

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, data: TrainData) -> Checkpoint:
    """Train a student on ``data`` as ``cfg`` says; save the best epoch to ``cfg.output_dir``."""
    data.check()
    started = time.perf_counter()
    device = pick_device(cfg.device)
    key = cache.cache_key(cfg, data, device)
    hit = cache.lookup(cfg, key)
    if hit is not None:
        return hit
    precision = Precision(device)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_student(cfg.init_from or cfg.model, data.label_names, cfg.num_layers,
                                    device)
    head = _rationale_head(cfg, data, model, device)
    params = [*model.parameters(), *(head.parameters() if head is not None else [])]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    parts = Parts(model, head, optimizer, precision.scaler())
    saver = EpochCheckpoints(cfg.checkpoint_dir, _fingerprint(cfg, data)) \
        if cfg.checkpoint_dir is not None else None
    history, best = saver.restore(parts) if saver is not None else (History(), None)
    resumed_from = history.epoch
    if resumed_from:
        log.info("resuming after epoch %d (best so far: epoch %d, val loss %.4f)",
                 resumed_from, history.best_epoch, history.best_loss)
    batcher = Batcher(tokenizer, cfg.max_length, device)
    for epoch in range(history.epoch + 1, cfg.epochs + 1):
        if history.bad_epochs >= cfg.patience:
            break
        t0 = time.perf_counter()
        train_loss, rat_loss = train_epoch(parts, batcher, data, cfg, epoch, precision)
        val_loss = validation_loss(model, batcher, data, cfg.eval_batch_size, precision)
        if history.record(epoch, train_loss, rat_loss, val_loss):
            best = weights_copy(model)
        log.info("epoch %d/%d train_loss %.4f%s val_loss %.4f%s %.1fs", epoch, cfg.epochs,
                 train_loss, f" rationale_loss {rat_loss:.4f}" if head is not None else "",
                 val_loss, " (best)" if history.best_epoch == epoch else "",
                 time.perf_counter() - t0)
        if saver is not None:
            saver.save(history, parts, best if history.best_epoch == epoch else None)
    assert best is not None, "at least one epoch ran or was restored"
    model.load_state_dict(best)
    ckpt = Checkpoint(
        output_dir=cfg.output_dir, best_epoch=history.best_epoch, val_losses=history.val_losses,
        train_losses=history.train_losses, rationale_losses=history.rationale_losses,
        epochs_run=history.epoch,
        resumed_from_epoch=resumed_from, warm_start=cfg.init_from is not None,
        train_seconds=time.perf_counter() - started,
        device=str(device), rationale_examples=_n_rationales(data) if head is not None else 0,
    )
    save_student(model, tokenizer, cfg, data.label_names, ckpt)
    cache.store(cfg, key, ckpt)
    return ckpt


# ---- the pieces, in the order train() uses them ------------------------------------------------

def _rationale_head(
    cfg: TrainConfig, data: TrainData, model: PreTrainedModel, device: torch.device
) -> RationaleHead | None:
    if not cfg.rationales or cfg.rationale_weight <= 0 or not _n_rationales(data):
        return None
    return RationaleHead(int(model.config.hidden_size)).to(device)


def _n_rationales(data: TrainData) -> int:
    return sum(1 for r in data.rationales or [] if r is not None)


def _fingerprint(cfg: TrainConfig, data: TrainData) -> str:
    """Identifies the training an epoch checkpoint belongs to (settings and data)."""
    blob = json.dumps([cfg.fingerprint_fields(), data.label_names, data.texts, data.labels,
                       data.val_texts, data.val_labels, data.rationales])
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    tags: torch.Tensor | None = None  # rationale targets per token
    mask: torch.Tensor | None = None  # which tokens the rationale loss scores


class Batcher:
    """Tokenizes a batch of texts (padded to its longest, cut at max_length) onto the device."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int,
                 device: torch.device) -> None:
        self.tokenizer, self.max_length, self.device = tokenizer, max_length, device

    def encode(self, texts: Sequence[str], offsets: bool = False) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt",
                             return_offsets_mapping=offsets)
        return dict(enc)

    def batch(self, data: TrainData, idx: list[int], labels: torch.Tensor,
              with_rationales: bool) -> Batch:
        enc = self.encode([data.texts[i] for i in idx], offsets=with_rationales)
        tags = mask = None
        if with_rationales:
            assert data.rationales is not None
            tags, mask = rationale_tags([data.texts[i] for i in idx],
                                        [data.rationales[i] for i in idx],
                                        enc.pop("offset_mapping"))
            tags, mask = tags.to(self.device), mask.to(self.device)
        inputs = {k: v.to(self.device) for k, v in enc.items()}
        return Batch(inputs, labels[idx].to(self.device), tags, mask)


def train_epoch(parts: Parts, batcher: Batcher, data: TrainData, cfg: TrainConfig, epoch: int,
                precision: Precision) -> tuple[float, float]:
    """One pass over the shuffled training data; mean classification and rationale losses."""
    parts.model.train()
    labels = torch.tensor(data.label_ids(data.labels))
    shuffle = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(len(data.texts), generator=shuffle)
    cls_total = rat_total = 0.0
    for chunk in order.split(cfg.batch_size):
        batch = batcher.batch(data, chunk.tolist(), labels, parts.head is not None)
        cls_loss, rat_loss = train_step(parts, batch, cfg, precision)
        cls_total += cls_loss * len(chunk)
        rat_total += rat_loss * len(chunk)
    return cls_total / len(data.texts), rat_total / len(data.texts)


def train_step(parts: Parts, batch: Batch, cfg: TrainConfig,
               precision: Precision) -> tuple[float, float]:
    """Forward, backward (scaled under fp16), clip, step. Returns the two losses."""
    with precision.autocast():
        out = parts.model(**batch.inputs, output_hidden_states=parts.head is not None)
        loss = nn.functional.cross_entropy(out.logits.float(), batch.labels)
        rat = torch.zeros((), device=loss.device)
        if parts.head is not None and batch.tags is not None and batch.mask is not None:
            rat = rationale_loss(parts.head(out.hidden_states[-1]), batch.tags, batch.mask)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss + cfg.rationale_weight * rat).backward()
    parts.scaler.unscale_(parts.optimizer)
    params = [p for group in parts.optimizer.param_groups for p in group["params"]]
    nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    return float(loss.item()), float(rat.item())


@torch.no_grad()
def validation_loss(model: PreTrainedModel, batcher: Batcher, data: TrainData, batch_size: int,
                    precision: Precision) -> float:
    """Mean cross-entropy on the validation set: what early stopping watches."""
    model.eval()
    labels = torch.tensor(data.label_ids(data.val_labels))
    total = 0.0
    for start in range(0, len(data.val_texts), batch_size):
        with precision.autocast():
            logits = model(**{k: v.to(batcher.device) for k, v in batcher.encode(
                data.val_texts[start:start + batch_size]).items()}).logits
        target = labels[start:start + batch_size].to(batcher.device)
        total += float(nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
    return total / len(data.val_texts)


def save_student(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: TrainConfig,
                 label_names: list[str], ckpt: Checkpoint) -> None:
    """Write the folder next to its final name, then rename it: never a half-written student."""
    out = cfg.output_dir
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / LABELS_FILE).write_text(json.dumps({"labels": label_names}, indent=1))
    state = ckpt.state() | {"max_length": cfg.max_length, "config": cfg.to_json()}
    (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
