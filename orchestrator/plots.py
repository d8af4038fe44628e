"""The run report's plots (PNG): validation per cycle, per-class F1 of the seed student vs the
best, teacher examples per class, teacher tokens and cost per cycle. Only a report that draws
them loads matplotlib (``orchestrator.report`` imports this module when it writes one)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def metrics(evals: list[dict[str, Any]], folder: Path) -> str:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    cycles = [e["cycle"] for e in evals]
    for key in ("macro_f1", "accuracy"):
        ax[0].plot(cycles, [e.get(key, 0) for e in evals], marker="o", label=key)
    ax[0].set(xlabel="cycle", title="validation", ylim=(0, 1))
    ax[0].legend()
    ax[1].plot(cycles, [e.get("loss", 0) for e in evals], marker="o", color="C3")
    ax[1].set(xlabel="cycle", title="validation loss")
    for axis in ax:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(folder / "metrics.png", dpi=90)
    plt.close(fig)
    return "metrics.png"


def per_class(first: dict[str, Any], best: dict[str, Any], folder: Path) -> str:
    labels = sorted(first.get("per_class", {}))
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(labels) + 2), 3.5))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [first["per_class"][c]["f1"] for c in labels], 0.4,
           label=f"cycle {first['cycle']} (seed)")
    ax.bar([i + 0.2 for i in x], [best.get("per_class", {}).get(c, {}).get("f1", 0)
                                  for c in labels], 0.4, label=f"cycle {best['cycle']} (best)")
    ax.set_xticks(list(x), labels, rotation=90, fontsize=6)
    ax.set(ylabel="F1", ylim=(0, 1), title="per-class F1, seed vs best")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "per_class_f1.png", dpi=90)
    plt.close(fig)
    return "per_class_f1.png"


def generated(counts: Counter[str], folder: Path) -> str:
    labels = sorted(counts)
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(labels) + 2), 3.2))
    ax.bar(range(len(labels)), [counts[c] for c in labels])
    ax.set_xticks(list(range(len(labels))), labels, rotation=90, fontsize=6)
    ax.set(ylabel="examples", title="teacher examples kept, per class (all cycles)")
    fig.tight_layout()
    fig.savefig(folder / "generated_per_class.png", dpi=90)
    plt.close(fig)
    return "generated_per_class.png"


def cost(rows: list[dict[str, float]], folder: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    cycles = [int(r["cycle"]) for r in rows]
    ax.bar(cycles, [r["tokens_in"] + r["tokens_out"] for r in rows], color="C2")
    ax.set(xlabel="cycle", ylabel="teacher tokens", title="teacher tokens (cost on the right)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    ax2.plot(cycles, [r["cost"] for r in rows], color="C1", marker="o")
    ax2.set_ylabel("cost")
    fig.tight_layout()
    fig.savefig(folder / "teacher_cost.png", dpi=90)
    plt.close(fig)
    return "teacher_cost.png"
