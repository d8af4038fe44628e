"""The train and test jobs of one cycle, as the Celery task shells call them.

``train_cycle`` is idempotent and resumable, and orders its writes so that nothing half-done
looks done:

1. ``cycle=<c>/eval.json`` exists → the job already ran: return that report.
2. ``cycle=<c>/student`` committed (a kill after the upload) → evaluate that student.
   Otherwise train, with epoch checkpoints under ``<workdir>/<run_id>/cycle=<c>/epochs`` so a
   SIGKILLed and redelivered job goes on from its last finished epoch; the student folder is
   renamed into place locally and uploaded with ``put_dir`` (its ``_COMMITTED`` marker last).
3. Evaluate on validation, mine examples, commit the validation predictions, and write
   ``eval.json`` last: the controller takes its presence as "this cycle's training is done".
   With ``dataset.steer_fraction`` > 0 the validation split has two parts: its steering part
   is evaluated apart (``eval.json``'s ``steer``) and mined, and only the rest picks the epoch
   and, through ``eval.json``'s metrics, the cycle the controller keeps.

``evaluate_on_test`` does the same for the test split and the latency measurement, writing the
run-level ``test.json`` last; ``export_student`` copies a committed student out.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from distillq import paths
from distillq.errors import InvalidInputError, PermanentError
from distillq.manifest import require_manifest
from distillq.spec import RunSpec
from distillq.split import check_steer_split, steer_mask
from storage.schemas import PREDICTIONS
from storage.store import ShardStore
from workers.training.config import Checkpoint, TrainConfig, TrainData
from workers.training.evaluate import Classifier, Predictions, report
from workers.training.latency import measure_latency
from workers.training.mining import MiningCounts, mine, outcomes
from workers.training.train import train

log = logging.getLogger(__name__)


def train_cycle(spec: RunSpec, store: ShardStore, run_id: str, cycle: int,
                workdir: Path | str) -> dict[str, Any]:
    """Train cycle ``cycle``'s student, evaluate it on validation, write ``eval.json``."""
    done: dict[str, Any] | None = store.read_json(run_id, paths.eval_report(cycle))
    if done is not None:
        return done
    scratch = Path(workdir) / run_id / paths.cycle_dir(cycle)
    labels = require_manifest(store, run_id).taxonomy  # the order of the student's outputs
    train_t = store.training_set(run_id, cycle)
    val_t, steer_t = validation_parts(spec, store.read_table(run_id, "val"))
    data = TrainData(
        texts=_col(train_t, "text"), labels=_col(train_t, "label"),
        val_texts=_col(val_t, "text"), val_labels=_col(val_t, "label"), label_names=labels,
        rationales=_rationales(spec, store, run_id, cycle, _col(train_t, "id")),
    )
    ckpt = _student(spec, store, run_id, cycle, data, scratch)
    clf = Classifier.load(ckpt.output_dir, spec.student.device)
    val_pred, train_pred = clf.predict(data.val_texts), clf.predict(data.texts)
    # What steers the next cycle's prompts: the validation split, or only its steering part.
    steer_pred = val_pred if steer_t is None else clf.predict(_col(steer_t, "text"))
    result: dict[str, Any] = {
        "cycle": cycle, "split": "val", "n": len(data.val_texts),
        **report(labels, clf.label_ids(data.val_labels), val_pred),
        "mined": _mine(spec, cycle, clf, [(train_t, train_pred),
                                          (val_t if steer_t is None else steer_t, steer_pred)]),
        "n_train": len(data.texts), **_training_summary(ckpt),
    }
    store.commit(run_id, cycle, "predictions", "val",
                 predictions_table(val_t, val_pred, clf.labels, run_id, cycle, "val"))
    if steer_t is not None:
        result["steer"] = {"split": "steer", "n": steer_t.num_rows,
                           **report(labels, clf.label_ids(_col(steer_t, "label")), steer_pred)}
        store.commit(run_id, cycle, "predictions", "steer",
                     predictions_table(steer_t, steer_pred, clf.labels, run_id, cycle, "steer"))
    store.write_json(run_id, paths.eval_report(cycle), result)
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def validation_parts(spec: RunSpec, val: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """The validation examples that select (early stopping, the kept cycle) and those that
    only steer generation, or ``(val, None)`` when the whole split does both
    (``dataset.steer_fraction`` 0)."""
    fraction = spec.dataset.steer_fraction
    if fraction == 0:
        return val, None
    check_steer_split(val.num_rows, fraction)
    flags = pa.array(steer_mask(_col(val, "id"), _col(val, "label"), fraction,
                                spec.dataset.sample_seed))
    return val.filter(pc.invert(flags)), val.filter(flags)


def evaluate_on_test(spec: RunSpec, store: ShardStore, run_id: str, cycle: int,
                     workdir: Path | str) -> dict[str, Any]:
    """Cycle ``cycle``'s student on the test split, plus its latency; writes ``test.json``."""
    done: dict[str, Any] | None = store.read_json(run_id, paths.TEST_RESULT)
    if done is not None and done.get("cycle") == cycle:
        return done
    scratch = Path(workdir) / run_id / f"test-cycle={cycle}"
    local = _fetch_student(store, run_id, cycle, scratch / "student")
    clf = Classifier.load(local, spec.student.device)
    test_t = store.read_table(run_id, "test")
    if spec.dataset.test_limit is not None:
        test_t = test_t.slice(0, spec.dataset.test_limit)
    texts = _col(test_t, "text")
    pred = clf.predict(texts)
    result: dict[str, Any] = {
        "cycle": cycle, "split": "test", "n": len(texts),
        **report(clf.labels, clf.label_ids(_col(test_t, "label")), pred),
        "latency": measure_latency(clf.model, clf.tokenizer, texts, max_length=clf.max_length),
        "device": str(clf.device),
    }
    store.commit(run_id, cycle, "predictions", "test",
                 predictions_table(test_t, pred, clf.labels, run_id, cycle, "test"))
    store.write_json(run_id, paths.TEST_RESULT, result)
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def export_student(store: ShardStore, run_id: str, cycle: int, out_dir: Path | str) -> Path:
    """Copy cycle ``cycle``'s student to ``out_dir`` (from_pretrained / pipeline ready)."""
    if not store.get_dir(run_id, paths.student(cycle), out_dir):
        raise InvalidInputError(f"run {run_id} has no committed student for cycle {cycle}")
    return Path(out_dir)


# ---- helpers ----------------------------------------------------------------------------------

def _col(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


def _rationales(spec: RunSpec, store: ShardStore, run_id: str, cycle: int,
                ids: list[str]) -> list[list[str] | None] | None:
    """Rationale words per training example (None where it has none), if the spec wants them."""
    if not spec.student.rationales:
        return None
    table = store.attributions(run_id, cycle)
    by_id = dict(zip(_col(table, "example_id"), _col(table, "rationale"), strict=True))
    found: list[list[str] | None] = [by_id.get(i) or None for i in ids]
    if not any(found):
        log.warning("run=%s cycle=%d student.rationales is on but no training example has "
                    "rationale words; training without them", run_id, cycle)
        return None
    return found


def _student(spec: RunSpec, store: ShardStore, run_id: str, cycle: int, data: TrainData,
             scratch: Path) -> Checkpoint:
    """The cycle's committed student if an earlier delivery got that far, else train one."""
    if store.has_dir(run_id, paths.student(cycle)):
        log.info("run=%s cycle=%d student already committed: evaluating it", run_id, cycle)
        return Checkpoint.load(_fetch_student(store, run_id, cycle, scratch / "student"))
    cfg = TrainConfig.from_spec(
        spec.student, output_dir=scratch / "student", checkpoint_dir=scratch / "epochs",
        init_from=_warm_start(spec, store, run_id, cycle, scratch),
    )
    ckpt = train(cfg, data)
    store.put_dir(ckpt.output_dir, run_id, paths.student(cycle))
    return ckpt


def _warm_start(spec: RunSpec, store: ShardStore, run_id: str, cycle: int,
                scratch: Path) -> Path | None:
    if not spec.student.warm_start or cycle == 0:
        return None
    if not store.has_dir(run_id, paths.student(cycle - 1)):
        return None
    return _fetch_student(store, run_id, cycle - 1, scratch / "warm")


def _fetch_student(store: ShardStore, run_id: str, cycle: int, folder: Path) -> Path:
    """A fresh local copy of a committed student in ``folder``; PermanentError if none."""
    shutil.rmtree(folder, ignore_errors=True)
    if not store.get_dir(run_id, paths.student(cycle), folder):
        raise PermanentError(f"run {run_id} has no committed student for cycle {cycle}")
    return folder


def _mine(spec: RunSpec, cycle: int, clf: Classifier,
          parts: list[tuple[pa.Table, Predictions]]) -> dict[str, list[dict[str, Any]]]:
    """Correct / misclassified / hard negatives from training and validation data."""
    items = []
    for table, pred in parts:
        items += outcomes(_col(table, "id"), _col(table, "text"), _col(table, "label"),
                          [clf.labels[i] for i in pred.preds], pred.confidences.tolist())
    gen = spec.generation
    counts = MiningCounts(gen.n_correct, gen.n_misclassified, gen.n_hard_negatives,
                          per_class=gen.mode == "sharded")
    return mine(items, counts, seed=spec.student.seed * 1000 + cycle)


def _training_summary(ckpt: Checkpoint) -> dict[str, Any]:
    return {"epochs_run": ckpt.epochs_run, "best_epoch": ckpt.best_epoch,
            "val_losses": ckpt.val_losses, "train_seconds": round(ckpt.train_seconds, 2),
            "resumed_from_epoch": ckpt.resumed_from_epoch, "warm_start": ckpt.warm_start,
            "rationale_examples": ckpt.rationale_examples, "device": ckpt.device,
            "cached": ckpt.cached}


def predictions_table(table: pa.Table, pred: Predictions, labels: list[str], run_id: str,
                      cycle: int, split: str) -> pa.Table:
    """The PREDICTIONS shard of one split."""
    n = table.num_rows
    return pa.table({
        "example_id": _col(table, "id"), "run_id": [run_id] * n, "cycle": [cycle] * n,
        "split": [split] * n, "label": _col(table, "label"),
        "pred": [labels[i] for i in pred.preds], "confidence": pred.confidences.tolist(),
    }, schema=PREDICTIONS)
