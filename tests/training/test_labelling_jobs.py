"""The score and select jobs of a labelling cycle (workers/labelling/cycle.py), with a real
trained student."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
from training_kit import Subset, Trained, write_subset_csv

from distillq import paths
from distillq.spec import parse_spec
from orchestrator.datasets import Labelled
from orchestrator.runs import create_run, examples_table
from storage.store import ShardStore
from workers.labelling.cycle import labelled_ids, score_shard, select_texts


def _run(tmp_path: Path, corpus: Path, subset: Subset, trained: Trained,
         strategy: str = "diverse") -> tuple:
    train = write_subset_csv(corpus, tmp_path / "train.csv", classes=10, per_class=8)
    pool = tmp_path / "pool.csv"
    with pool.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([t] for t, _ in subset.test[:200])
    spec = parse_spec({
        "run_id": "lab", "storage": str(tmp_path / "store"),
        "dataset": {"train": str(train), "seed_size": 60, "unlabelled": str(pool)},
        "generation": {"examples_per_cycle": 40},
        "labelling": {"share": 0.5, "strategy": strategy, "candidates_factor": 2,
                      "shard_rows": 100},
        "student": {"device": "cpu"},
    })
    create_run(spec)
    store = ShardStore(spec.storage)
    store.put_dir(trained.cfg.output_dir, "lab", paths.student(0))
    store.put_dir(trained.cfg.output_dir, "lab", paths.student(1))
    per_class = {c: {"f1": 0.9 if i else 0.1, "support": 5} for i, c in enumerate(subset.labels)}
    store.write_json("lab", paths.eval_report(0), {"per_class": per_class})
    store.write_json("lab", paths.eval_report(1), {"per_class": per_class})
    return spec, store


def test_scoring_and_selecting_a_cycle(tmp_path: Path, corpus: Path, subset: Subset,
                                       trained: Trained) -> None:
    spec, store = _run(tmp_path, corpus, subset, trained)
    shards = store.list_jobs("lab", 0, "unlabelled")
    assert len(shards) == 2
    assert [score_shard(spec, store, "lab", 1, s, tmp_path / "work") for s in shards] == [100, 100]
    scores = store.read_kind("lab", 1, "scores")
    margins = scores.column("margin").to_pylist()
    assert all(0.0 <= m <= 1.0 for m in margins)
    with_embedding = scores.column("embedding").is_valid().to_pylist()
    assert sum(with_embedding) == 2 * 40, "the 2 × 20 most uncertain of each shard"
    kept = sorted(m for m, e in zip(margins, with_embedding, strict=True) if e)
    assert max(kept[:40]) <= min(m for m, e in zip(margins, with_embedding, strict=True)
                                 if not e), "the most uncertain keep their embedding"
    # scored again (a redelivered job): the committed shard is kept
    assert score_shard(spec, store, "lab", 1, shards[0], tmp_path / "nowhere") == 100

    chosen = select_texts(spec, store, "lab", 1)
    ids = [x["id"] for x in chosen["texts"]]
    assert len(ids) == len(set(ids)) == 20 and chosen["strategy"] == "diverse"
    assert sum(chosen["quotas"].values()) == 20
    assert chosen["quotas"][subset.labels[0]] > chosen["quotas"][subset.labels[1]], \
        "the weak class gets more"
    texts = dict(zip(*(store.read_kind("lab", 0, "unlabelled").column(c).to_pylist()
                       for c in ("id", "text")), strict=True))
    assert all(x["text"] == texts[x["id"]] for x in chosen["texts"])
    assert select_texts(spec, store, "lab", 1) == chosen, "written once"

    # cycle 1 labels five of them; cycle 2 scores only the others
    done = Labelled(ids[:5], [texts[i] for i in ids[:5]], [subset.labels[0]] * 5)
    table = examples_table(done, "lab", 1, "pool", "c01-0009", "x")
    table = table.set_column(0, "id", pa.array(ids[:5]))
    store.commit("lab", 1, "generated", "c01-0009", table)
    generated = examples_table(done, "lab", 1, "teacher", "c01-0000", "c01-0000")
    store.commit("lab", 1, "generated", "c01-0000", generated)  # a generation job's rows
    store.write_json("lab", paths.plan(1), {"jobs": ["c01-0000", "c01-0009"],
                                            "labelling": ["c01-0009"]})
    assert labelled_ids(store, "lab", 1) == set(ids[:5])
    assert sum(score_shard(spec, store, "lab", 2, s, tmp_path / "work") for s in shards) == 195
    assert not set(ids[:5]) & set(store.read_kind("lab", 2, "scores").column("id").to_pylist())


def test_a_strategy_that_does_not_cluster_stores_no_embeddings(
        tmp_path: Path, corpus: Path, subset: Subset, trained: Trained) -> None:
    spec, store = _run(tmp_path, corpus, subset, trained, strategy="margin")
    for shard in store.list_jobs("lab", 0, "unlabelled"):
        score_shard(spec, store, "lab", 1, shard, tmp_path / "work")
    scores = store.read_kind("lab", 1, "scores")
    assert scores.num_rows == 200 and scores.column("embedding").null_count == 200
    chosen = select_texts(spec, store, "lab", 1)
    assert len(chosen["texts"]) == 20
    # within each predicted class, the chosen are that class's most uncertain texts
    by_class: dict[str, list[tuple[float, str]]] = {}
    for row in scores.to_pylist():
        by_class.setdefault(row["pred"], []).append((row["margin"], row["id"]))
    picked = {x["id"] for x in chosen["texts"]}
    for rows in by_class.values():
        ranked = [i for _, i in sorted(rows)]
        n = sum(i in picked for i in ranked)
        assert set(ranked[:n]) <= picked
