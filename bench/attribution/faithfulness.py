"""Which attribution method picks telling words? The deletion test of every method, per k.

    python -m bench.attribution.faithfulness --storage STORE --run RUN [--limit 200]
                                             [--k 1,2,3] [--methods ...] [--draws 5]
                                             [--ig-steps 8] [--threads 1] [--json FILE]

Teacher: the white-box teacher a run fine-tuned on its seed (``<run>/teacher``, committed by
``prepare_teacher`` for a run with ``attribution.enabled`` and a classifier teacher to
fine-tune, e.g. row 7 of the quality study). Texts: the first ``--limit`` texts of the run's
validation split, each attributed toward its own label, so the teacher never trained on them.

For every method and every rationale size k (``RationaleRule(top_k=k)``: the k best words with
a positive score, stop words dropped) it prints the deletion test of
``workers.attribution.quality``: the mean drop of the teacher's label logit when the rationale's
words are deleted, against deleting as many words drawn at random (``--draws`` times); the share
of texts where the rationale drops it more (a tie, where the rationale is every candidate word,
counts as no win); and the label-word overlap. Methods are compared at the same k: a larger
rationale always drops the score more.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from distillq import paths
from distillq.errors import StorageError
from storage.store import ShardStore
from workers.attribution import METHODS, Attributor
from workers.attribution.quality import rationale_quality
from workers.attribution.teachers import load_teacher
from workers.attribution.words import RationaleRule


def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k wants sizes such as 1,2,3, not {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k wants sizes of at least 1, not {text!r}")
    return ks


def measure(attributor: Attributor, texts: list[str], labels: list[str],
            draws: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = attributor.attribute(texts, labels)
    seconds = time.perf_counter() - t0
    return {**rationale_quality(attributor.teacher, results, rule=attributor.rule, draws=draws,
                                max_length=attributor.max_length),
            "method": attributor.method, "k": attributor.rule.top_k,
            "attribute_s": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True, help="the run's storage (a folder or s3:// URI)")
    p.add_argument("--run", required=True, help="run id")
    p.add_argument("--limit", type=int, default=200, help="validation texts")
    p.add_argument("--k", type=_ks, default=[1, 2, 3], help="rationale sizes, e.g. 1,2,3")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--draws", type=int, default=5, help="random deletions per text")
    p.add_argument("--ig-steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.limit < 1 or args.draws < 1:
        p.error("--limit and --draws must be at least 1")

    torch.set_num_threads(args.threads)
    store = ShardStore(args.storage)
    try:
        val = store.read_table(args.run, "val")
    except StorageError as exc:
        print(f"error: run {args.run}: no validation split to attribute ({exc})",
              file=sys.stderr)
        return 2
    val = val.slice(0, args.limit)
    texts, labels = val.column("text").to_pylist(), val.column("label").to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        if not store.get_dir(args.run, paths.TEACHER_DIR, Path(tmp) / "teacher"):
            print(f"error: run {args.run} in {args.storage} has no fine-tuned teacher "
                  "(<run>/teacher: a run with attribution.enabled and a classifier teacher "
                  "to fine-tune commits one)", file=sys.stderr)
            return 2
        teacher = load_teacher(str(Path(tmp) / "teacher"), device="cpu")
    print(f"run {args.run}: {len(texts)} validation texts, {args.draws} random draws, "
          f"torch threads {args.threads}\n")
    print("| k | method | rationale drop | random drop | rationale wins | label-word hits "
          "| texts | attribution s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for k in args.k:
        for method in args.methods:
            row = measure(Attributor(teacher, method, ig_steps=args.ig_steps,
                                     rule=RationaleRule(top_k=k)), texts, labels, args.draws)
            d, o = row["deletion"], row["label_overlap"]
            print(f"| {k} | {method} | {d['topk_drop']:.2f} | {d['random_drop']:.2f} | "
                  f"{d['topk_wins']:.0%} | {o['hit_rate']:.0%} | {d['n']} | "
                  f"{row['attribute_s']:.1f} |", flush=True)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"run": args.run, "texts": len(texts),
                                         "draws": args.draws, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
