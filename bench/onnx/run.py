"""The student on CPU: PyTorch fp32, ONNX fp32 and ONNX int8, side by side in one run.

For a student folder (``orchestrator export RUN DIR``; the ONNX files are made here with the
exporter ``orchestrator export --onnx --int8`` uses when the folder lacks them): test macro-F1
and accuracy of each format on a labelled test file, each format's agreement with PyTorch
fp32 (same predicted label), and milliseconds per batch of 64 test texts, tokenising included
(``workers.training.onnx_export.time_formats``: the formats take turns, median of --runs, so
a busy machine slows them alike). Targets (issue 26): int8 within 0.01 macro-F1 of fp32, and at
least 2× faster than PyTorch fp32.

    python -m bench.onnx.run --student DIR [--data ../shared/data/banking77/test.csv]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BANKING77_TEST = ROOT.parent / "shared" / "data" / "banking77" / "test.csv"


def evaluate(folder: Path, texts: list[str], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Test metrics of each format in ``folder`` and its agreement with PyTorch fp32."""
    from workers.training import Classifier, Predictions, report
    from workers.training.onnx_export import ONNX_FP32, ONNX_INT8, OnnxStudent

    clf = Classifier.load(folder, "cpu")
    y = clf.label_ids(labels)
    probs = {"pytorch fp32": clf.predict(texts).probs,
             "onnx fp32": OnnxStudent(folder, ONNX_FP32).probs(texts),
             "onnx int8": OnnxStudent(folder, ONNX_INT8).probs(texts)}
    reference = probs["pytorch fp32"].argmax(axis=1)
    out = {}
    for name, p in probs.items():
        preds = p.argmax(axis=1)
        got = report(clf.labels, y, Predictions(preds, p[np.arange(len(p)), preds], p))
        out[name] = {"macro_f1": round(float(got["macro_f1"]), 4),
                     "accuracy": round(float(got["accuracy"]), 4),
                     "agreement": round(float((preds == reference).mean()), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", required=True, help="a student folder (orchestrator export)")
    p.add_argument("--data", default=str(BANKING77_TEST), help="labelled test CSV")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="category")
    p.add_argument("--runs", type=int, default=15, help="timed runs per format")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from distillq.spec import DatasetSpec
    from orchestrator.datasets import read_labelled, resolve_data_path
    from workers.training.onnx_export import ONNX_INT8, export_onnx, machine_line, time_formats

    ds = DatasetSpec(train=args.data, text_column=args.text_column,
                     label_column=args.label_column)
    test = read_labelled(resolve_data_path(args.data), ds, "--data")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.student)
        if not (folder / ONNX_INT8).exists():
            folder = Path(tmp) / "student"
            shutil.copytree(args.student, folder)
            print("[onnx] exporting model.onnx and model.int8.onnx ...", file=sys.stderr)
            export_onnx(folder, int8=True)
        sizes = {name: round((folder / f).stat().st_size / 2**20, 1) for name, f in
                 (("pytorch fp32", "model.safetensors"), ("onnx fp32", "model.onnx"),
                  ("onnx int8", "model.int8.onnx"))}
        print(f"[onnx] evaluating on {len(test)} texts ...", file=sys.stderr)
        scores = evaluate(folder, test.texts, test.labels)
        print(f"[onnx] timing, {args.runs} runs per format ...", file=sys.stderr)
        ms = time_formats(folder, test.texts, runs=args.runs)
    results = {"student": args.student, "data": args.data, "n": len(test), "machine":
               machine_line(), "formats": {name: {**scores[name], "ms_per_64": ms[name],
                                                   "size_mib": sizes[name]} for name in ms}}
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def table(results: dict[str, Any]) -> str:
    f = results["formats"]
    fp32, torch_ms = f["onnx fp32"]["macro_f1"], f["pytorch fp32"]["ms_per_64"]
    lines = [f"{results['n']:,} test texts; {results['machine']}", "",
             "| format | size (MiB) | test macro-F1 | accuracy | agreement with PyTorch fp32 "
             "| ms per 64 texts | speed-up vs PyTorch fp32 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in f.items():
        lines.append(f"| {name} | {r['size_mib']} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | "
                     f"{r['agreement']:.4f} | {r['ms_per_64']:.1f} | "
                     f"{torch_ms / r['ms_per_64']:.2f}× |")
    int8 = f["onnx int8"]
    drop, speed = fp32 - int8["macro_f1"], torch_ms / int8["ms_per_64"]
    lines += ["", f"- int8 within 0.01 macro-F1 of fp32: {'met' if drop <= 0.01 else 'MISSED'} "
              f"(ONNX fp32 {fp32:.4f}, int8 {int8['macro_f1']:.4f}, a drop of {drop:+.4f})",
              f"- int8 at least 2× faster than PyTorch fp32: {'met' if speed >= 2 else 'MISSED'} "
              f"({speed:.2f}×)"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
