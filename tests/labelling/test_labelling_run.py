"""A mixed run end to end (embedded Redis and workers, the simulated teacher): each cycle
scores the unlabelled texts with the last student, selects, and the teacher labels them
beside PGKD generation."""

from __future__ import annotations

from pathlib import Path

import pytest
from runkit import env as run_env
from runkit import orchestrator, write_spec

from storage.store import ShardStore

pytestmark = pytest.mark.slow


def test_a_mixed_run_labels_new_texts_every_cycle(tmp_path: Path, corpus: Path) -> None:
    spec = write_spec(tmp_path, corpus, "mixed",
                      dataset={"unlabelled": "rest_of_train", "test": None},
                      labelling={"share": 0.5, "strategy": "diverse", "shard_rows": 200,
                                 "texts_per_request": 6, "self_consistency": 2},
                      loop={"max_cycles": 2, "patience": 3, "generate_deadline_s": 60})
    done = orchestrator("run", str(spec), "--quiet", env=run_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = ShardStore(str(tmp_path / "store"))
    truth = dict(zip(store.read_table("mixed", "pool").column("id").to_pylist(),
                     store.read_table("mixed", "pool").column("label").to_pylist(), strict=True))
    seen: set[str] = set()
    for cycle in (1, 2):
        chosen = store.read_json("mixed", f"cycle={cycle}/selection.json")
        assert chosen["strategy"] == "diverse" and len(chosen["texts"]) == 12
        rows = store.read_kind("mixed", cycle, "generated").to_pylist()
        labelled = [r for r in rows if r["source"] == "pool"]
        assert sorted(r["id"] for r in labelled) == sorted(x["id"] for x in chosen["texts"])
        assert all(r["label"] == truth[r["id"]] for r in labelled), "the sim's oracle labels"
        assert any(r["source"] == "teacher" for r in rows), "and PGKD generation beside"
        assert not seen & {r["id"] for r in labelled}, "never labelled twice"
        seen |= {r["id"] for r in labelled}
        assert len(store.list_jobs("mixed", cycle, "scores")) == 4  # 660 texts, 200 a shard
    report = (tmp_path / "store" / "mixed" / "report" / "report.md").read_text()
    assert "## Labelled texts per cycle" in report and "| 1 | diverse |" in report
