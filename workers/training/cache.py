"""A folder of trained students shared between runs (``student.cache_dir``).

Training from the base model is a pure function of the training settings, the data and the
seed (bit for bit on CPU with the same thread count; see ``train``). Runs that differ only in
what happens after cycle 0 — a sweep over generation settings, the quality study's ablations —
all train the very same seed-only student first. With a cache folder, the first of them
stores it under a key hashed from everything that determines it, and the others copy it
instead of training it again.

Only cold starts are cached (a warm start depends on an earlier student's weights). The key
names the model by its spec string, not its files: a cache must not outlive a change to the
files behind a local model path. Entries are written whole (a temporary folder, then a
rename), so a killed writer leaves nothing a reader would take; two writers of one key both
produce the same student, and the second rename loses harmlessly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch

from workers.training.config import STATE_FILE, Checkpoint, TrainConfig, TrainData

log = logging.getLogger(__name__)


def cache_key(cfg: TrainConfig, data: TrainData, device: torch.device) -> str:
    """Hash of every input of a cold-start training: settings, data, seed, software, device."""
    blob = json.dumps({
        "settings": cfg.fingerprint_fields() | {"epochs": cfg.epochs, "patience": cfg.patience},
        "data": [data.label_names, data.texts, data.labels, data.val_texts, data.val_labels,
                 data.rationales],
        "torch": torch.__version__, "device": device.type, "threads": torch.get_num_threads(),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def lookup(cfg: TrainConfig, key: str) -> Checkpoint | None:
    """Copy the cached student ``key`` to ``cfg.output_dir``; None when there is none."""
    if cfg.cache_dir is None or cfg.init_from is not None:
        return None
    entry = Path(str(cfg.cache_dir).removeprefix("file://")).expanduser() / key
    if not (entry / STATE_FILE).is_file():
        return None
    out = cfg.output_dir
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(entry, partial)
    state = json.loads((partial / STATE_FILE).read_text())
    (partial / STATE_FILE).write_text(json.dumps(state | {"cached": True}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    log.info("student %s taken from the cache %s: not trained again", key, cfg.cache_dir)
    return Checkpoint.load(out)


def store(cfg: TrainConfig, key: str, ckpt: Checkpoint) -> None:
    """Put a freshly trained cold-start student into the cache (whole or not at all)."""
    if cfg.cache_dir is None or cfg.init_from is not None:
        return
    root = Path(str(cfg.cache_dir).removeprefix("file://")).expanduser()
    entry = root / key
    if entry.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{key}.{uuid.uuid4().hex}.partial"
    try:
        shutil.copytree(ckpt.output_dir, tmp)
        try:
            os.replace(tmp, entry)
        except OSError:  # another writer got there first (a non-empty folder is not replaced)
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("student %s stored in the cache %s", key, root)
