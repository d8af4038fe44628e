"""Helpers shared by the end-to-end tests: specs on a corpus subset, CLI calls, waiting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from storage.store import ShardStore

CLASSES = 6
PER_CLASS = 130  # texts of each class in the run's data file


def write_spec(tmp_path: Path, corpus: Path, name: str, **over: Any) -> Path:
    import csv

    rows = list(csv.DictReader(open(corpus / "train.csv", encoding="utf-8")))
    keep = sorted({r["category"] for r in rows})[:CLASSES]
    data = tmp_path / "data.csv"
    if not data.exists():
        taken = dict.fromkeys(keep, 0)
        with open(data, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "category"])
            for r in rows:
                if r["category"] in taken and taken[r["category"]] < PER_CLASS:
                    taken[r["category"]] += 1
                    w.writerow([r["text"], r["category"]])
    spec: dict[str, Any] = {
        "name": name, "run_id": name, "storage": str(tmp_path / "store"),
        "dataset": {"train": str(data), "test": str(data), "label_column": "category",
                    "seed_size": 120, "test_limit": 60},
        "teacher": {"kind": "sim", "model": "distillq-sim", "rpm": 6000},
        "generation": {"examples_per_cycle": 24, "examples_per_request": 4},
        "student": {"model": "builtin:minilm", "num_layers": 1, "max_length": 32, "lr": 1e-3,
                    "batch_size": 16, "epochs": 2, "patience": 1},
        "loop": {"max_cycles": 1, "patience": 3, "generate_deadline_s": 60},
    }
    for key, value in over.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return {**base, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def orchestrator(*args: str, env: dict[str, str],
                 timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start_sim(store: ShardStore, run_id: str,
              tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    from distillq.spec import parse_spec
    from orchestrator.commands import start_sim_process

    spec = parse_spec(store.read_json(run_id, "manifest.json")["spec"])
    return start_sim_process(spec, store, run_id, tmp_path / f"sim-{run_id}")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


