"""The manifest model (distillq/manifest.py): its JSON, its changes, and what a broken one says."""

from __future__ import annotations

from pathlib import Path

import pytest
from manifestkit import decision, write_manifest

from distillq.errors import ManifestError, PermanentError
from distillq.manifest import read_manifest, require_manifest
from storage.store import ShardStore


def test_the_json_leaves_out_what_is_unset_and_reads_back(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    written = write_manifest(store, "r1", counts={"val": 3})
    raw = store.read_json("r1", "manifest.json")
    assert set(raw) == {"run_id", "spec", "taxonomy", "created_at", "status", "decisions",
                        "counts"}
    assert read_manifest(store, "r1") == written


def test_a_stop_decision_makes_the_best_cycle_final_and_finish_ends_the_run(
        tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    manifest = write_manifest(store, "r1")
    manifest.decide(decision(0, 0))
    assert manifest.final is None and manifest.cycle == 1 and manifest.best_so_far() == 0
    manifest.decide(decision(1, 0, action="stop", reason="patience"))
    assert manifest.final is not None and manifest.final.best_cycle == 0
    manifest.finish("failed", "test of cycle 0 failed", at=5.0)
    assert manifest.ended and manifest.stop_reason == "test of cycle 0 failed"
    manifest.reopen(at=6.0)
    assert (manifest.status, manifest.stop_reason, manifest.resumed_at) == ("running", None, 6.0)
    assert "stop_reason" not in manifest.to_json()


def test_a_broken_manifest_names_each_problem(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write_json("r1", "manifest.json", {"run_id": "r1", "spec": {}, "status": "paused",
                                             "created_at": 0, "colour": "red"})
    with pytest.raises(ManifestError) as err:
        read_manifest(store, "r1")
    message = str(err.value)
    assert message.startswith("manifest of r1 is not valid: ")
    for problem in ("taxonomy: Field required", "status: Input should be", "colour: Extra"):
        assert problem in message
    assert isinstance(err.value, PermanentError), "a worker's job on it fails for good"


def test_a_missing_manifest(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    assert read_manifest(store, "nope") is None
    with pytest.raises(ManifestError, match="run 'nope' has no manifest"):
        require_manifest(store, "nope")
