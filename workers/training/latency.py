"""Student latency, the student's half of PGKD's Table 5 (the teacher's comes from its jobs).

One timed run classifies one batch of 64 texts end to end: tokenize, forward, softmax, back to
the host. After a few warm-up runs, the median of several runs is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distillq.errors import InvalidInputError
from workers.training.evaluate import predict


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                    texts: Sequence[str], *, max_length: int = 64, batch_size: int = 64,
                    warmup: int = 2, runs: int = 7) -> dict[str, Any]:
    """Seconds per batch of ``batch_size`` (median of ``runs``) and examples per second."""
    if not texts:
        raise InvalidInputError("latency needs at least one text")
    batch = [texts[i % len(texts)] for i in range(batch_size)]
    device = next(model.parameters()).device
    times = []
    for run in range(warmup + runs):
        _sync(device)
        t0 = time.perf_counter()
        predict(model, tokenizer, batch, max_length=max_length, batch_size=batch_size)
        _sync(device)
        if run >= warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "device": str(device) if device.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)",
        "batch_size": batch_size,
        "seconds_per_batch": median,
        f"seconds_per_{batch_size}": median,
        "examples_per_s": batch_size / median,
        "runs": runs,
        "max_length": max_length,
    }
