"""Shard store throughput: rows/s committing, reading and building a training set.

    python -m bench.storage.run [--sizes 10000 1000000] [--shard-rows 10000] [--uri URI]

For each size N: N examples with ~100-character texts (16 words from a 5,000-word vocabulary;
2% are re-cased / re-spaced copies of earlier texts and 1% contain non-ASCII letters, so the
de-duplication has real work) are cut into shards of ``--shard-rows`` rows spread over 5
cycles. Timed, through ``ShardStore`` only (making the tables is not timed):

- commit: every shard committed by one writer (validate, Parquet + zstd, atomic write);
- read: ``read_kind`` of every cycle (list, read, validate, concatenate);
- training_set: ``training_set(run, 4)`` = the reads plus de-duplication by normalised text.

Sizes up to 100k are run 3 times and the best is kept; larger ones once. ``--uri`` points it at
another store (e.g. ``s3://bucket/prefix?endpoint_override=...``); the default is a temp folder.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from storage import EXAMPLES, ShardStore

CYCLES = 5


def make_texts(n: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(5000)]
    words = np.array(vocab, dtype=object)[rng.integers(0, len(vocab), size=(n, 16))]
    texts = [" ".join(row)[:100].rstrip() for row in words]
    for i in rng.choice(n, n // 100, replace=False):
        texts[i] = "café " + texts[i][5:]
    for i in rng.choice(np.arange(1, n), n // 50, replace=False):
        source = texts[int(rng.integers(0, i))]
        texts[i] = source.upper() if i % 2 else "  " + source.replace(" ", "  ")
    return texts


def make_shards(n: int, shard_rows: int, seed: int = 0) -> list[tuple[int, str, pa.Table]]:
    """(cycle, job id, table) of every shard of an N-example run."""
    texts = make_texts(n, np.random.default_rng(seed))
    shards = []
    for k, start in enumerate(range(0, n, shard_rows)):
        chunk = texts[start:start + shard_rows]
        job, m, cycle = f"c{k % CYCLES:02d}-{k:05d}", len(chunk), k % CYCLES
        cols: dict[str, Any] = {
            "id": [f"{job}-{i:04d}" for i in range(m)], "run_id": ["bench"] * m,
            "cycle": [cycle] * m, "source": ["teacher"] * m,
            "label": [f"class_{i % 77}" for i in range(start, start + m)], "text": chunk,
            "job_id": [job] * m, "teacher_model": ["sim"] * m, "prompt_id": [f"{job}-p"] * m,
            "input_tokens": [900] * m, "output_tokens": [40] * m, "latency_s": [1.5] * m,
            "cost": [0.0004] * m,
        }
        shards.append((cycle, job, pa.table(cols, schema=EXAMPLES)))
    return shards


def best_of(repeats: int, fn: Callable[[int], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for rep in range(repeats):
        t0 = time.perf_counter()
        result = fn(rep)
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_size(store: ShardStore, n: int, shard_rows: int) -> dict[str, Any]:
    shards = make_shards(n, shard_rows)
    repeats = 3 if n <= 100_000 else 1
    runs = [f"bench-{n}-{rep}" for rep in range(repeats)]

    def commit(rep: int) -> None:
        for cycle, job, table in shards:
            store.commit(runs[rep], cycle, "generated", job, table)

    def read(rep: int) -> int:
        return sum(store.read_kind(runs[rep], c, "generated").num_rows for c in range(CYCLES))

    t_commit, _ = best_of(repeats, commit)
    t_read, n_read = best_of(repeats, read)
    t_train, train = best_of(repeats, lambda rep: store.training_set(runs[rep], CYCLES - 1))
    assert n_read == n, (n_read, n)
    return {"n": n, "shards": len(shards), "commit_s": t_commit, "read_s": t_read,
            "train_s": t_train, "unique": train.num_rows, "repeats": repeats}


def report(row: dict[str, Any]) -> str:
    n = row["n"]
    return (f"{n:>9,} {row['shards']:>6} {n / row['commit_s']:>12,.0f} {n / row['read_s']:>12,.0f} "
            f"{n / row['train_s']:>14,.0f} {row['unique']:>9,}   "
            f"({row['commit_s']:.2f} s / {row['read_s']:.2f} s / {row['train_s']:.2f} s, "
            f"best of {row['repeats']})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--uri", help="store to bench (default: a temp folder, removed after)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="distillq-bench-") as tmp:
        store = ShardStore(args.uri or tmp)
        print(f"store {store.uri}; python {platform.python_version()}, pyarrow {pa.__version__}")
        print(f"{'examples':>9} {'shards':>6} {'commit row/s':>12} {'read row/s':>12} "
              f"{'train_set row/s':>14} {'unique':>9}")
        for n in args.sizes:
            print(report(bench_size(store, n, min(args.shard_rows, n))), flush=True)


if __name__ == "__main__":
    main()
