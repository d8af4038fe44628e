"""The ``attribute`` queue's plain functions: prepare the teacher once, attribute a shard.

- ``prepare_teacher`` fine-tunes a classifier teacher on the run's seed (training split; the
  validation split, or its steering part, drives early stopping) with the training package's
  ``train`` and commits it to ``<run>/teacher`` in storage. Idempotent: a committed teacher
  is never trained again.
- ``attribute_table`` turns a shard of examples into a shard of attributions (``ATTRIBUTIONS``).
- ``quality_report`` measures rationale quality on the validation split, for the run report.

Each worker process loads its teacher once (``teacher_for`` caches it per run and settings).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from distillq import paths
from distillq.errors import TransientError
from distillq.manifest import require_manifest
from distillq.spec import AttributionSpec, RunSpec
from storage.schemas import ATTRIBUTIONS
from storage.store import ShardStore
from workers.attribution.attributor import Attribution, Attributor
from workers.attribution.quality import rationale_quality
from workers.attribution.teachers import Teacher, load_teacher
from workers.attribution.words import RationaleRule
from workers.training.config import TrainConfig, TrainData
from workers.training.cycle import validation_parts
from workers.training.train import train

log = logging.getLogger(__name__)

TEACHER_PATIENCE = 3  # epochs without a better validation loss before fine-tuning stops

_lock = threading.Lock()
_teachers: dict[tuple[str, ...], Teacher] = {}


def _needs_finetune(spec: AttributionSpec) -> bool:
    return spec.kind == "classifier" and spec.finetune


def prepare_teacher(spec: RunSpec, store: ShardStore, run_id: str, workdir: Path | str) -> str:
    """Fine-tune and commit the classifier teacher if the spec asks for one; say where it is."""
    a = spec.attribution
    if not _needs_finetune(a):
        return a.model  # used as it is
    where = f"{run_id}/{paths.TEACHER_DIR}"
    if store.has_dir(run_id, paths.TEACHER_DIR):
        return where
    build = Path(workdir) / "teacher-build"
    shutil.rmtree(build, ignore_errors=True)
    t0 = time.perf_counter()
    epochs = Path(workdir) / "teacher-epochs"
    finetune_teacher(spec, store, run_id, build, epochs)
    store.put_dir(build, run_id, paths.TEACHER_DIR)
    # committed: the local copies (a model, and an optimizer state per epoch) are not needed
    shutil.rmtree(build, ignore_errors=True)
    shutil.rmtree(epochs, ignore_errors=True)
    log.info("%6.2fs fine-tuned the attribution teacher of run %s", time.perf_counter() - t0,
             run_id)
    return where


def finetune_teacher(spec: RunSpec, store: ShardStore, run_id: str, out: Path,
                     checkpoints: Path) -> Path:
    """Train ``spec.attribution.model`` as a classifier of the run's taxonomy; save it to
    ``out``. Its early stopping sees the validation split, or with ``dataset.steer_fraction``
    only its steering part: the teacher's rationales shape the student's training data, which
    the selecting part must not."""
    a = spec.attribution
    train_t = store.training_set(run_id, 0)
    select_t, steer_t = validation_parts(spec, store.read_table(run_id, "val"))
    val_t = select_t if steer_t is None else steer_t
    data = TrainData(
        texts=train_t.column("text").to_pylist(), labels=train_t.column("label").to_pylist(),
        val_texts=val_t.column("text").to_pylist(), val_labels=val_t.column("label").to_pylist(),
        label_names=require_manifest(store, run_id).taxonomy,
    )
    cfg = TrainConfig(
        output_dir=out, model=a.model, max_length=a.max_length, lr=a.finetune_lr,
        batch_size=a.batch_size, epochs=a.finetune_epochs,
        patience=min(TEACHER_PATIENCE, a.finetune_epochs), device=a.device,
        checkpoint_dir=checkpoints,
    )
    return Path(train(cfg, data).output_dir)


def teacher_for(spec: RunSpec, store: ShardStore, run_id: str, workdir: Path | str) -> Teacher:
    """The run's teacher, loaded once per process."""
    a = spec.attribution
    key = (store.uri, run_id, a.model, a.kind, str(a.finetune), a.device, a.dtype, a.prompt or "")
    with _lock:
        if key not in _teachers:
            t0 = time.perf_counter()
            _teachers[key] = _load_teacher(a, store, run_id, Path(workdir))
            log.info("%6.2fs loaded the attribution teacher of run %s", time.perf_counter() - t0,
                     run_id)
        return _teachers[key]


def _load_teacher(a: AttributionSpec, store: ShardStore, run_id: str, workdir: Path) -> Teacher:
    labels = require_manifest(store, run_id).taxonomy
    if not _needs_finetune(a):
        return load_teacher(a.model, a.kind, labels=labels, device=a.device, dtype=a.dtype,
                            prompt=a.prompt)
    workdir.mkdir(parents=True, exist_ok=True)
    local = Path(tempfile.mkdtemp(prefix="teacher-", dir=workdir))
    try:
        if not store.get_dir(run_id, paths.TEACHER_DIR, local):
            raise TransientError(f"run {run_id}: the attribution teacher is not prepared yet")
        return load_teacher(str(local), "classifier", labels=labels, device=a.device,
                            dtype=a.dtype)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def clear_teachers() -> None:
    """Forget the cached teachers (tests; a worker keeps them for its lifetime)."""
    with _lock:
        _teachers.clear()


def attributor_for(a: AttributionSpec, teacher: Teacher) -> Attributor:
    return Attributor(
        teacher, a.method, batch_size=a.batch_size, max_length=a.max_length,
        ig_steps=a.ig_steps, internal_batch_size=a.internal_batch_size, attention=a.attention,
        rule=RationaleRule(a.top_k, a.mass_fraction, a.drop_stopwords),
    )


def attribute_table(spec: RunSpec, store: ShardStore, run_id: str, examples: pa.Table,
                    workdir: Path | str) -> pa.Table:
    """Attributions (``ATTRIBUTIONS`` schema) of a table of examples, one row per example."""
    if examples.num_rows == 0:
        return ATTRIBUTIONS.empty_table()
    teacher = teacher_for(spec, store, run_id, workdir)
    results = attributor_for(spec.attribution, teacher).attribute(
        examples.column("text").to_pylist(), examples.column("label").to_pylist())
    return _table(results, examples, run_id)


def _table(results: list[Attribution], examples: pa.Table, run_id: str) -> pa.Table:
    rows = [r.as_row() for r in results]
    return pa.table({
        "example_id": examples.column("id"),
        "run_id": pa.array([run_id] * len(rows), pa.string()),
        "cycle": examples.column("cycle").cast(pa.int32()),
        "label": pa.array([r["label"] for r in rows], pa.string()),
        "method": pa.array([r["method"] for r in rows], pa.string()),
        "words": pa.array([r["words"] for r in rows], pa.list_(pa.string())),
        "scores": pa.array([r["scores"] for r in rows], pa.list_(pa.float32())),
        "rationale": pa.array([r["rationale"] for r in rows], pa.list_(pa.string())),
    }, schema=ATTRIBUTIONS)


def quality_report(spec: RunSpec, store: ShardStore, run_id: str, workdir: Path | str, *,
                   limit: int = 200, draws: int = 3) -> dict[str, Any]:
    """Rationale quality on the first ``limit`` validation examples, for the run report."""
    a = spec.attribution
    val = store.read_table(run_id, "val").slice(0, limit)
    teacher = teacher_for(spec, store, run_id, workdir)
    results = attributor_for(a, teacher).attribute(val.column("text").to_pylist(),
                                                   val.column("label").to_pylist())
    return rationale_quality(teacher, results, rule=RationaleRule(a.top_k, a.mass_fraction,
                                                                  a.drop_stopwords),
                             draws=draws, max_length=a.max_length, batch_size=a.batch_size)
