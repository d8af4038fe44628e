"""Measuring the quality study's cells: a row through the system (``orchestrator run``) or
the upper bound trained directly, each finished run read back into a cell, and ``--fill``,
which gives cells an earlier harness wrote the fields it did not record."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.quality.results import write_cell
from bench.quality.study import METRICS, NON_GENERATING, Row, merge_spec
from distillq import paths
from distillq.manifest import Manifest, read_manifest, require_manifest
from distillq.spec import parse_spec
from orchestrator.datasets import load_and_split
from orchestrator.runs import spend
from storage.store import ShardStore


def data_files(args: argparse.Namespace, work: Path) -> tuple[str, str]:
    """The data files the runs read (a label subset when --classes is given)."""
    src = Path(args.data)
    if args.classes is None:
        return str(src / "train.csv"), str(src / "test.csv")
    out = []
    keep: set[str] | None = None
    for name in ("train.csv", "test.csv"):
        rows = list(csv.DictReader(open(src / name, encoding="utf-8")))
        if keep is None:
            keep = set(sorted({r["category"] for r in rows})[: args.classes])
        path = work / f"{args.classes}-{name}"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "category"])
            w.writerows([r["text"], r["category"]] for r in rows if r["category"] in keep)
        out.append(str(path))
    return out[0], out[1]


def run_system(row: Row, spec: dict[str, Any], work: Path, seed: int) -> dict[str, Any]:
    """One row through `orchestrator run`; its test metrics, spend and wall time. A run the
    same --work folder already holds is resumed (`orchestrator resume`), or read if done."""
    run_id = f"row{row.key}-seed{seed}"
    spec = merge_spec(spec, {**row.spec, "run_id": run_id})
    path = work / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("REDIS_URL", None)
    store = ShardStore(spec["storage"])
    before = read_manifest(store, run_id)
    status = before.status if before is not None else None
    command = (["run", str(path), "--quiet"] if status is None
               else ["resume", run_id, "--storage", str(spec["storage"])])
    t0 = time.monotonic()
    if status != "done":
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *command], env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"row {row.key} seed {seed} failed:\n{done.stdout[-2000:]}"
                               f"\n{done.stderr[-3000:]}")
    return measure(store, run_id, time.monotonic() - t0, resumed=status is not None,
                   scratch=work / "scratch")


def test_by_cycle(store: Any, run_id: str, manifest: Manifest,
                  scratch: Path) -> list[float]:
    """Test macro-F1 of every cycle's student, for the findings only: the controller never
    sees it (it keeps the cycle with the best validation score)."""
    # deferred: workers.training imports torch and transformers, which only a measured run needs
    from workers.training import Classifier, report

    test = store.read_table(run_id, "test")
    limit = manifest.spec["dataset"].get("test_limit")
    if limit is not None:
        test = test.slice(0, int(limit))
    texts, labels = test.column("text").to_pylist(), test.column("label").to_pylist()
    out = []
    for decision in manifest.decisions:
        folder = scratch / run_id / paths.cycle_dir(decision.cycle)
        shutil.rmtree(folder, ignore_errors=True)
        if not store.get_dir(run_id, paths.student(decision.cycle), folder):
            raise RuntimeError(f"run {run_id} has no student for cycle {decision.cycle}")
        clf = Classifier.load(folder, "cpu")
        out.append(round(float(report(clf.labels, clf.label_ids(labels),
                                      clf.predict(texts))["macro_f1"]), 4))
        shutil.rmtree(folder, ignore_errors=True)
    return out


def measure(store: Any, run_id: str, wall: float, resumed: bool,
            scratch: Path) -> dict[str, Any]:
    """A finished run's cell, from its storage: test metrics, examples added, spend, the
    validation and test scores per cycle, training time per cycle."""
    manifest = require_manifest(store, run_id)
    if resumed:  # resumed or already done: creation to finish, pauses included
        if manifest.finished_at is None:
            raise RuntimeError(f"run {run_id} has not finished")
        wall = manifest.finished_at - manifest.created_at
    test = _json(store, run_id, paths.TEST_RESULT)
    best = int(test["cycle"])
    # the seed as training reads it (duplicate texts dropped), like the kept cycle's set
    seed_n = store.training_set(run_id, 0).num_rows
    added = store.training_set(run_id, best).num_rows - seed_n
    evals = [_json(store, run_id, paths.eval_report(d.cycle)) for d in manifest.decisions]
    cost = spend(store, run_id, manifest.cycle - 1)
    # The validation metric the controller decided on, per cycle: guided generation is steered
    # by the validation errors, so how far the kept cycle's validation score sits above its
    # test score shows how much of the gain is fitted to those 200 texts.
    val = [round(d.value, 4) for d in manifest.decisions]
    return {**{m: test[m] for m in METRICS}, "val_macro_f1": val[best], "val_by_cycle": val,
            "added": added, "best_cycle": best,
            "cycles_run": manifest.cycle,
            "tokens": cost["tokens_in"] + cost["tokens_out"], "cost": cost["cost"],
            "wall_s": wall, "resumed": resumed,
            # training time without pauses; cycle 0 copied from student.cache_dir costs ~0
            "train_s_by_cycle": [round(float(e.get("train_seconds", 0.0)), 1) for e in evals],
            "cycle0_cached": bool(evals[0].get("cached", False)),
            "test_by_cycle": test_by_cycle(store, run_id, manifest, scratch),
            **rationale_summary(store, run_id)}


def rationale_summary(store: Any, run_id: str) -> dict[str, Any]:
    """For a run with teacher rationales (row 7): how good they were (the run's
    attribution_quality.json) and how well the white-box teacher fit the seed."""
    quality = store.read_json(run_id, paths.ATTRIBUTION_QUALITY)
    if not isinstance(quality, dict):
        return {}
    teacher = store.read_json(run_id, paths.TEACHER_STATE) or {}
    losses = teacher.get("val_losses") or []
    return {"rationale_quality": quality,
            "teacher_fit": {"epochs_run": teacher.get("epochs_run"),
                            "best_epoch": teacher.get("best_epoch"),
                            "best_val_loss": round(min(losses), 4) if losses else None,
                            "train_s": round(float(teacher.get("train_seconds", 0.0)), 1)}}


def _json(store: Any, run_id: str, name: str) -> dict[str, Any]:
    got = store.read_json(run_id, name)
    if not isinstance(got, dict):
        raise RuntimeError(f"run {run_id} finished without {name}")
    return got


def run_upper_bound(spec: dict[str, Any], work: Path, seed: int) -> dict[str, Any]:
    """Row 0: the same student trained directly on every training row (validation: the
    seed's validation part), evaluated on the same test set."""
    # deferred: workers.training imports torch and transformers, which only a measured run needs
    from workers.training import Classifier, TrainConfig, TrainData, report, train

    parsed = parse_spec(spec)
    split = load_and_split(parsed.dataset)
    texts = list(split.seed_train.texts) + list(split.pool.texts)
    labels = list(split.seed_train.labels) + list(split.pool.labels)
    data = TrainData(texts, labels, list(split.val.texts), list(split.val.labels),
                     list(split.taxonomy))
    t0 = time.monotonic()
    cfg = TrainConfig.from_spec(parsed.student, output_dir=work / f"upper-{seed}",
                                checkpoint_dir=work / f"upper-{seed}.epochs")  # resumable
    ckpt = train(cfg, data)
    clf = Classifier.load(ckpt.output_dir, parsed.student.device)
    assert split.test is not None
    test_texts, test_labels = list(split.test.texts), list(split.test.labels)  # test_limit applied
    rep = report(clf.labels, clf.label_ids(test_labels), clf.predict(test_texts))
    val = report(clf.labels, clf.label_ids(list(split.val.labels)),
                 clf.predict(list(split.val.texts)))
    return {**{m: rep[m] for m in METRICS}, "val_macro_f1": round(float(val["macro_f1"]), 4),
            "added": len(split.pool.texts), "best_cycle": 0,
            "cycles_run": 1, "tokens": 0.0, "cost": 0.0, "wall_s": time.monotonic() - t0,
            "epochs_run": ckpt.epochs_run, "best_epoch": ckpt.best_epoch}


def fill(args: argparse.Namespace, folder: Path, base_folder: Path, work: Path) -> None:
    """``--fill``: the cells of --rows / --seeds (row 0 is not a run of the system)."""
    for seed in args.seeds_list:
        for key in (k for k in args.rows_list if k != 0):
            cells = base_folder if key in NON_GENERATING else folder
            path = cells / f"row{key}-seed{seed}.json"
            if path.exists() and fill_cell(path, work / f"store-{cells.name}", work):
                print(f"[quality] row {key}, seed {seed}: filled from its run", flush=True)


def fill_cell(path: Path, store_root: Path, work: Path) -> bool:
    """Add the fields a cell lacks from its finished run in ``store_root``; the measured
    wall time, machine and finishing time stay. False when there is nothing to add (or no
    finished run to add it from)."""
    cell = json.loads(path.read_text())
    if "test_by_cycle" in cell["result"]:
        return False
    store = ShardStore(str(store_root))
    run_id = f"row{cell['row']}-seed{cell['seed']}"
    manifest = read_manifest(store, run_id)
    if manifest is None or manifest.status != "done":
        print(f"[quality] {path.name}: no finished run {run_id} in {store_root}", flush=True)
        return False
    wall = float(cell["result"]["wall_s"])
    got = measure(store, run_id, wall, resumed=False, scratch=work / "scratch")
    for key in METRICS:  # the same run: the same numbers, or this is not its run
        if abs(float(got[key]) - float(cell["result"][key])) > 1e-9:
            raise RuntimeError(f"{path}: run {run_id} in {store_root} gives {key} "
                               f"{got[key]}, the cell {cell['result'][key]}")
    got["resumed"] = manifest.resumed_at is not None  # the harness did not record it then
    cell["result"] = {**got, "wall_s": wall}
    cell["filled"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_cell(path, cell)
    return True


def study_args(argv: list[str]) -> list[str]:
    """The arguments that say what the study measures (not where it keeps its files)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--work", "--results", "--out"):
            skip = True
        elif not arg.startswith(("--work=", "--results=", "--out=", "--table-only", "--redo",
                                 "--fill")):
            out.append(arg)
    return out
