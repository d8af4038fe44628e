"""Student training and inference speed on CPU, through distillq's own training code.

    python -m bench.train.run [--layers 2 6] [--train-n 1024] [--infer-n 2048] [--threads 2]

Data: Banking77 from ``../shared/data/banking77`` (read in place, never copied): the first
``--train-n`` training texts in a fixed shuffled order (all 77 classes), and the first
``--infer-n`` test texts. Model: all-MiniLM-L6-v2 (``builtin:minilm``) as a 77-way classifier,
cut to its first N layers by ``load_student`` exactly as ``student.num_layers`` does.

Per student, with the spec's defaults (``max_length`` 64, batch 64, lr 2e-5, AdamW, fp32):

- **train** — examples/s of ``workers.training.train.train_epoch`` (tokenise, forward,
  cross-entropy, backward, clip, optimizer step), after a one-batch warm-up; one epoch over the
  training texts. Model loading, validation and saving are not in it (``load_s`` is reported).
- **inference** — examples/s of ``workers.training.evaluate.predict`` (batch 128, texts sorted
  by length: what evaluation and mining run), on the test texts.
- **latency** — ``workers.training.latency.measure_latency``: seconds per batch of 64 texts,
  end to end (tokenise, forward, softmax), median of 7 runs after 2 warm-ups.

Prints one JSON object per student and a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from workers.training.checkpoints import Parts
from workers.training.config import TrainConfig, TrainData
from workers.training.evaluate import predict
from workers.training.latency import measure_latency
from workers.training.model import Precision, load_student
from workers.training.train import Batcher, train_epoch

BANKING77 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "banking77"


def read_split(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [(row["text"], row["category"]) for row in csv.DictReader(fh)]


def bench_student(layers: int, train_rows: list[tuple[str, str]], infer_texts: list[str],
                  labels: list[str], max_length: int, batch_size: int) -> dict[str, Any]:
    device = torch.device("cpu")
    t0 = time.perf_counter()
    model, tokenizer = load_student("builtin:minilm", labels, layers, device)
    load_s = time.perf_counter() - t0
    cfg = TrainConfig(output_dir=Path("unused"), num_layers=layers, max_length=max_length,
                      batch_size=batch_size, device="cpu")
    precision = Precision(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=True)
    parts = Parts(model, None, optimizer, precision.scaler())
    batcher = Batcher(tokenizer, max_length, device)

    def data(rows: list[tuple[str, str]]) -> TrainData:
        texts, ys = [t for t, _ in rows], [y for _, y in rows]
        return TrainData(texts=texts, labels=ys, val_texts=texts[:1], val_labels=ys[:1],
                         label_names=labels)

    train_epoch(parts, batcher, data(train_rows[:batch_size]), cfg, 0, precision)  # warm-up
    t0 = time.perf_counter()
    loss, _ = train_epoch(parts, batcher, data(train_rows), cfg, 1, precision)
    train_s = time.perf_counter() - t0

    predict(model, tokenizer, infer_texts[:128], max_length=max_length)  # warm-up
    t0 = time.perf_counter()
    predict(model, tokenizer, infer_texts, max_length=max_length, batch_size=128)
    infer_s = time.perf_counter() - t0

    latency = measure_latency(model, tokenizer, infer_texts, max_length=max_length)
    params = sum(p.numel() for p in model.parameters())
    return {
        "student": f"MiniLM-L6 cut to {layers} layers" if layers < 6 else "MiniLM-L6 (6 layers)",
        "layers": layers, "params_m": round(params / 1e6, 1), "load_s": round(load_s, 2),
        "train_examples": len(train_rows), "train_s": round(train_s, 2),
        "train_examples_per_s": round(len(train_rows) / train_s, 1),
        "train_loss": round(loss, 4),
        "infer_examples": len(infer_texts), "infer_s": round(infer_s, 2),
        "infer_examples_per_s": round(len(infer_texts) / infer_s, 1),
        "latency_s_per_64": round(latency["seconds_per_batch"], 4),
        "latency_examples_per_s": round(latency["examples_per_s"], 1),
        "threads": torch.get_num_threads(), "max_length": max_length, "batch_size": batch_size,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[2, 6])
    p.add_argument("--train-n", type=int, default=1024)
    p.add_argument("--infer-n", type=int, default=2048)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--data", type=Path, default=BANKING77)
    args = p.parse_args(argv)
    if not (args.data / "train.csv").exists():
        print(f"Banking77 not found at {args.data}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_rows = read_split(args.data / "train.csv")
    labels = sorted({y for _, y in train_rows})
    random.Random(0).shuffle(train_rows)
    infer_texts = [t for t, _ in read_split(args.data / "test.csv")][:args.infer_n]
    rows = [bench_student(n, train_rows[:args.train_n], infer_texts, labels, args.max_length,
                          args.batch_size) for n in args.layers]
    for row in rows:
        print(json.dumps(row))
    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end\n")
    print("| student | params | train ex/s | inference ex/s | latency per 64 (s) |\n"
          "|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['student']} | {r['params_m']}M | {r['train_examples_per_s']} | "
              f"{r['infer_examples_per_s']} | {r['latency_s_per_64']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
