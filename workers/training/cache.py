"""A folder of trained students shared between runs (``student.cache_dir``).

Training from the base model is a pure function of the training settings, the data and the
seed (bit for bit on CPU with the same thread count; see ``train``). Runs that differ only in
what happens after cycle 0 — a sweep over generation settings, the quality study's ablations —
all train the very same seed-only student first. With a cache folder, the first of them
stores it under a key hashed from everything that determines it, and the others copy it
instead of training it again.

Only cold starts are cached (a warm start depends on an earlier student's weights). The key
also covers the versions of torch and transformers and a hash of distillq's training code, so
an upgrade or a code change trains afresh; it names the model by its spec string, not its
files: a cache must not outlive a change to the files behind a local model path. Entries are
written whole (a temporary folder, then a rename), so a killed writer leaves nothing a reader
would take; two writers of one key both produce the same student, and the second rename
loses harmlessly. The cache is best effort: an error reading or writing it is logged, and the
student is trained (or kept) as if there were no cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch
import transformers

from workers.training.config import STATE_FILE, Checkpoint, TrainConfig, TrainData

log = logging.getLogger(__name__)


@functools.cache
def _code_hash() -> str:
    """distillq's training code: a change to it must not reuse students trained before."""
    folder = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(cfg: TrainConfig, data: TrainData, device: torch.device) -> str | None:
    """Hash of every input of a cold-start training: settings, data, seed, software, device;
    None when this training is not cached (no cache folder, or a warm start)."""
    if cfg.cache_dir is None or cfg.init_from is not None:
        return None
    blob = json.dumps({
        "settings": cfg.fingerprint_fields() | {"epochs": cfg.epochs, "patience": cfg.patience},
        "data": [data.label_names, data.texts, data.labels, data.val_texts, data.val_labels,
                 data.rationales],
        "torch": torch.__version__, "transformers": transformers.__version__,
        "code": _code_hash(), "device": device.type, "threads": torch.get_num_threads(),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def lookup(cfg: TrainConfig, key: str | None) -> Checkpoint | None:
    """Copy the cached student ``key`` to ``cfg.output_dir``; None when there is none (or the
    cache cannot be read: logged)."""
    if key is None or cfg.cache_dir is None:
        return None
    entry = Path(cfg.cache_dir) / key
    if not (entry / STATE_FILE).is_file():
        return None
    out = cfg.output_dir
    partial = out.with_name(out.name + ".partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(entry, partial)
        state = json.loads((partial / STATE_FILE).read_text())
        (partial / STATE_FILE).write_text(json.dumps(state | {"cached": True}, indent=1))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(partial, out)
        ckpt = Checkpoint.load(out)
    except (OSError, ValueError) as exc:
        log.warning("student cache %s: entry %s unreadable (%s); training instead",
                    cfg.cache_dir, key, exc)
        shutil.rmtree(partial, ignore_errors=True)
        return None
    log.info("student %s taken from the cache %s: not trained again", key, cfg.cache_dir)
    return ckpt


def store(cfg: TrainConfig, key: str | None, ckpt: Checkpoint) -> None:
    """Put a freshly trained cold-start student into the cache (whole or not at all; an error
    is logged, never raised: the student itself is fine)."""
    if key is None or cfg.cache_dir is None:
        return
    root = Path(cfg.cache_dir)
    entry = root / key
    tmp = root / f".{key}.{uuid.uuid4().hex}.partial"
    try:
        if (entry / STATE_FILE).is_file():
            return
        root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ckpt.output_dir, tmp)
        if entry.exists():  # an entry without its state file: broken, replace it
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another writer got there first (a non-empty folder is not replaced)
            return
        log.info("student %s stored in the cache %s", key, root)
    except OSError as exc:
        log.warning("student cache %s: could not store %s: %s", root, key, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
