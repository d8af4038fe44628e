"""Attribution throughput on CPU: distillq's batched methods vs the floor and vs captum.

    python -m bench.attribution.run [--n 1000] [--captum-n 100] [--threads 2] [--ig-steps 16]
                                    [--internal-batch-size 256] [--methods ...] [--profile]

Data: the first ``--n`` texts of Banking77's training split in a fixed shuffled order. Teacher:
all-MiniLM-L6-v2 (all 6 layers) as a 77-way sequence classifier; its head is freshly initialised
(speed does not depend on the weights). Per method, examples/s of

- **distillq** — ``Attributor(teacher, method, batch_size=32).attribute(texts, labels)``, the
  whole path: tokenisation with offsets, length buckets, the method, word aggregation, rationale;
- **floor** — one forward and one backward (to the input embeddings) per example, batched the
  same way, on texts tokenised beforehand (untimed); nothing else. Timed alternately with each
  method (best of the same number of repeats), so that load from other processes hits both;
- **captum** — the same method through captum (``Saliency``, ``InputXGradient``,
  ``IntegratedGradients`` with the same baseline and Gauss–Legendre rule) one example at a time,
  tokenisation included, word aggregation not; on the first ``--captum-n`` texts. Attention has
  no captum method: its baseline is one eager forward with attention maps per example.

Also reported: the largest difference between distillq's and captum's word scores on the captum
subset (both aggregated to words the same way). Needs ``pip install captum``.

``--profile`` measures instead what batching can buy at all on this machine: the floor batched
against the same forward + backward one example at a time (on the first ``--captum-n`` texts,
timed alternately), and where the batched floor spends its time (torch.profiler, self CPU time
by operator; the linear layers' and attention's matrix products grouped).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from distillq.words import split_words
from workers.assets import resolve_model
from workers.attribution import METHODS, Attributor, ClassifierTeacher
from workers.attribution.teachers import Batch, Encoding, eager_attention, length_batches
from workers.attribution.words import piece_words, word_scores

BANKING77 = Path(__file__).resolve().parents[3] / "shared" / "data" / "banking77" / "train.csv"


def load_texts(n: int) -> tuple[list[str], list[str], list[str]]:
    with BANKING77.open(newline="") as f:
        rows = list(csv.DictReader(f))
    labels = sorted({r["category"] for r in rows})
    random.Random(0).shuffle(rows)
    rows = rows[:n]
    return [r["text"] for r in rows], [r["category"] for r in rows], labels


def load_teacher(labels: list[str]) -> ClassifierTeacher:
    # deferred: transformers takes seconds to import (the --help of this bench does not)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model("builtin:minilm").path
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={c: i for i, c in enumerate(labels)})
    return ClassifierTeacher(model, AutoTokenizer.from_pretrained(path), device="cpu")


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def floor(teacher: ClassifierTeacher, batches: list[Batch]) -> None:
    """One forward + backward to the input embeddings per example, nothing else."""
    for batch in batches:
        embeds = teacher.embed(batch).detach().requires_grad_(True)
        scores = teacher.forward(batch, embeds).scores
        torch.autograd.grad(scores.sum(), embeds)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
              "aten::linear", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile(teacher: ClassifierTeacher, batches: list[Batch], singles: list[Batch],
            repeats: int = 3) -> dict[str, Any]:
    """The batched floor against the one-example floor, and the batched floor's time by op."""
    n = sum(len(b.input_ids) for b in batches)
    batched_s = single_s = float("inf")
    for _ in range(repeats):
        batched_s = min(batched_s, timed(lambda: floor(teacher, batches))[0])
        single_s = min(single_s, timed(lambda: floor(teacher, singles))[0])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        floor(teacher, batches)
    ops = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in ops) or 1.0
    matmul = sum(t for k, t in ops if k in MATMUL_OPS)
    top = sorted(ops, key=lambda kt: -kt[1])[:8]
    return {
        "n": n, "batched_eps": n / batched_s, "single_n": len(singles),
        "single_eps": len(singles) / single_s,
        "batching_gain": (n / batched_s) / (len(singles) / single_s),
        "matmul_share": matmul / total,
        "top_ops": [{"op": k, "share": t / total} for k, t in top],
    }


def render_profile(r: dict[str, Any]) -> str:
    lines = [f"floor, batched: {r['batched_eps']:.1f} ex/s ({r['n']} texts); one example at a "
             f"time: {r['single_eps']:.1f} ex/s ({r['single_n']} texts); batching gains "
             f"{r['batching_gain']:.2f}×",
             f"matrix products (linear layers and attention kernels): "
             f"{100 * r['matmul_share']:.0f}% of the batched floor's self CPU time",
             "", "| operator | share of self CPU time |", "|---|---:|"]
    lines += [f"| `{o['op']}` | {100 * o['share']:.1f}% |" for o in r["top_ops"]]
    return "\n".join(lines)


def _captum_forward(teacher: ClassifierTeacher) -> Callable[..., torch.Tensor]:
    def forward(embeds: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                label: torch.Tensor) -> torch.Tensor:
        empty = torch.zeros_like(input_ids, dtype=torch.bool)
        batch = Batch(input_ids, mask, empty, label, empty, torch.zeros_like(label))
        return teacher.forward(batch, embeds).scores
    return forward


def captum_one(teacher: ClassifierTeacher, method: str, enc: Encoding,
               steps: int) -> torch.Tensor:
    """Token scores of one example through captum (attention: one eager forward)."""
    from captum.attr import (  # deferred: captum, needed only for this comparison
        InputXGradient,
        IntegratedGradients,
        Saliency,
    )

    batch = teacher.collate([enc])
    embeds = teacher.embed(batch)
    args = (batch.input_ids, batch.attention_mask, batch.label)
    fwd = _captum_forward(teacher)
    if method == "saliency":
        grads = Saliency(fwd).attribute(embeds, additional_forward_args=args, abs=False)
        return grads.norm(dim=-1)[0] * batch.text_mask[0]
    if method == "input_x_gradient":
        return InputXGradient(fwd).attribute(embeds, additional_forward_args=args).sum(-1)[0] \
            * batch.text_mask[0]
    if method == "integrated_gradients":
        base = embeds * ~batch.text_mask.unsqueeze(-1)
        attr = IntegratedGradients(fwd).attribute(
            embeds, baselines=base, additional_forward_args=args, n_steps=steps,
            method="gausslegendre", internal_batch_size=steps)
        return attr.sum(-1)[0] * batch.text_mask[0]
    with torch.no_grad(), eager_attention(teacher.model):
        out = teacher.model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                            output_attentions=True)
    return out.attentions[-1].mean(1)[0, 0] * batch.text_mask[0]


def captum_run(teacher: ClassifierTeacher, method: str, texts: Sequence[str],
               labels: Sequence[str], steps: int, max_length: int) -> list[torch.Tensor]:
    out = []
    for text, label in zip(texts, labels, strict=True):
        enc = teacher.encode([text], [label], max_length)[0]  # tokenisation is part of it
        out.append(captum_one(teacher, method, enc, steps).detach())
    return out


def word_level(teacher: ClassifierTeacher, texts: Sequence[str], labels: Sequence[str],
               token: list[torch.Tensor], max_length: int) -> list[list[float]]:
    encs = teacher.encode(texts, labels, max_length)
    out = []
    for text, enc, scores in zip(texts, encs, token, strict=True):
        words = split_words(text)
        owner = [w if m else -1 for w, m in zip(piece_words(enc.offsets, words), enc.text_mask,
                                                 strict=True)]
        out.append(word_scores(scores.tolist(), owner, len(words))[1])
    return out


def bench_method(teacher: ClassifierTeacher, method: str, data: dict[str, Any],
                 args: argparse.Namespace) -> dict[str, Any]:
    texts, labels = data["texts"], data["labels"]
    n, k = len(texts), args.captum_n
    attributor = Attributor(teacher, method,  # type: ignore[arg-type]
                            batch_size=args.batch_size, ig_steps=args.ig_steps,
                            max_length=args.max_length,
                            internal_batch_size=args.internal_batch_size)
    attributor.attribute(texts[:64], labels[:64])  # warm-up
    repeats = 2 if method != "integrated_gradients" else 1
    # the floor is timed right next to each method (alternating), so that load from other
    # processes on a shared machine hits both about equally
    ours_s = floor_s = float("inf")
    for _ in range(repeats):
        s, ours = timed(lambda: attributor.attribute(texts, labels))
        ours_s = min(ours_s, s)
        floor_s = min(floor_s, timed(lambda: floor(teacher, data["batches"]))[0])
    attention = (method == "attention")
    captum_run(teacher, method, texts[:2], labels[:2], args.ig_steps, args.max_length)  # warm-up
    captum_s, token = timed(lambda: captum_run(teacher, method, texts[:k], labels[:k],
                                               args.ig_steps, args.max_length))
    theirs = word_level(teacher, texts[:k], labels[:k], token, args.max_length)
    diff = max((abs(a - b) for r, t in zip(ours[:k], theirs, strict=True)
                for a, b in zip(r.scores, t, strict=True)), default=0.0)
    scale = max((abs(a) for r in ours[:k] for a in r.scores), default=1.0)
    steps = args.ig_steps if method == "integrated_gradients" else 1
    return {
        "method": method, "n": n, "ours_s": ours_s, "ours_eps": n / ours_s,
        "captum_n": k, "captum_s": captum_s, "captum_eps": k / captum_s,
        "speedup_vs_captum": (n / ours_s) / (k / captum_s),
        "floor_s": floor_s, "floor_eps": n / floor_s,
        "vs_floor": ours_s / (floor_s * steps) if not attention else None,
        "max_abs_diff": diff, "max_abs_score": scale,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--captum-n", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--ig-steps", type=int, default=16)
    p.add_argument("--internal-batch-size", type=int, default=256,
                   help="rows per forward pass for integrated gradients (on CPU, ~32 is faster)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--profile", action="store_true",
                   help="measure the batched floor against one example at a time, and profile it")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if not BANKING77.exists():
        print(f"Banking77 not found at {BANKING77}", file=sys.stderr)
        return 2
    texts, labels, names = load_texts(args.n)
    teacher = load_teacher(names)
    encs = teacher.encode(texts, labels, args.max_length)
    batches = [teacher.collate([encs[i] for i in idx]) for idx in
               length_batches([len(e.input_ids) for e in encs], args.batch_size)]
    floor(teacher, batches[:2])  # warm-up
    if args.profile:
        singles = [teacher.collate([e]) for e in encs[: args.captum_n]]
        result = profile(teacher, batches, singles)
        print(render_profile(result))
        if args.json:
            args.json.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                             "profile": result}, indent=1))
        return 0
    data = {"texts": texts, "labels": labels, "batches": batches}
    results = []
    for method in args.methods:
        results.append(bench_method(teacher, method, data, args))
        print(json.dumps(results[-1]), file=sys.stderr)
    summary = {"threads": args.threads, "n": args.n, "ig_steps": args.ig_steps,
               "torch": torch.__version__, "results": results}
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


def render(summary: dict[str, Any]) -> str:
    lines = ["| method | distillq ex/s | floor ex/s (1 fwd+bwd, batched) | captum 1-by-1 ex/s | "
             "speed-up vs captum | time vs floor (per step) | max word-score diff vs captum |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["results"]:
        vs_floor = f"{r['vs_floor']:.2f}×" if r["vs_floor"] is not None else "n/a"
        lines.append(f"| {r['method']} | {r['ours_eps']:.1f} | {r['floor_eps']:.1f} | "
                     f"{r['captum_eps']:.1f} | "
                     f"{r['speedup_vs_captum']:.1f}× | {vs_floor} | "
                     f"{r['max_abs_diff']:.1e} (scores up to {r['max_abs_score']:.2f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
