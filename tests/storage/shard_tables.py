"""Example tables for the storage tests (a helper module, imported by name: pytest's default
import mode puts this folder on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

MakeExamples = Callable[..., pa.Table]


def examples(job: str, n: int = 3, cycle: int = 1, texts: list[str] | None = None,
             version: str = "v0") -> pa.Table:
    """An examples table of ``n`` rows as a generation job would commit it (int64 and float64
    columns: the store must cast them)."""
    texts = texts if texts is not None else [f"{job} example {i} " + "x" * 80 for i in range(n)]
    n = len(texts)
    return pa.table({
        "id": [f"{job}-{i:04d}" for i in range(n)], "run_id": ["r"] * n, "cycle": [cycle] * n,
        "source": ["teacher"] * n, "label": [f"c{i % 3}" for i in range(n)], "text": texts,
        "job_id": [job] * n, "teacher_model": ["m"] * n, "prompt_id": [version] * n,
        "input_tokens": [10] * n, "output_tokens": [5] * n, "latency_s": [0.1] * n,
        "cost": [0.001] * n,
    })
