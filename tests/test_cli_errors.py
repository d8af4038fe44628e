"""The command line's answers outside a run's own outcome: `export` into a folder that holds
something, and errors that are not bad input (exit 4, one line, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from manifestkit import decision, write_manifest

from distillq.errors import EXIT_ERROR, EXIT_INVALID
from distillq.spec import parse_spec
from orchestrator.cli import main
from storage import ShardStore


def _run_with_student(root: Path, version: str = "v1") -> ShardStore:
    """A finished run whose cycle-0 student is committed (a stand-in checkpoint)."""
    store = ShardStore(root)
    spec = parse_spec({"run_id": "r", "dataset": {"train": "d.csv"}}).model_dump(mode="json")
    write_manifest(store, "r", spec=spec, status="done", decisions=[decision(0, 0)],
                   final={"best_cycle": 0, "reason": "max_cycles=0 reached"})
    src = root.parent / f"student-{version}"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"version": version}))
    store.put_dir(src, "r", "cycle=0/student")
    return store


def test_export_refuses_a_folder_that_is_not_empty_unless_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_with_student(tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = ["export", "r", str(out), "--storage", str(tmp_path / "store")]
    assert main(args) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "is not empty" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"], "nothing touched"

    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json"], \
        "replaced whole, with its model card"
    assert json.loads((out / "config.json").read_text()) == {"version": "v1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store", "student-v1"], \
        "no temp or old folder left beside it"

    a_file = tmp_path / "model.bin"
    a_file.write_text("x")
    assert main(["export", "r", str(a_file), "--storage", str(tmp_path / "store")]) == \
        EXIT_INVALID
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "x"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "r", str(empty), "--storage", str(tmp_path / "store")]) == 0
    assert (empty / "config.json").is_file()

    assert main(["export", "r", str(tmp_path / "x"), "--storage", str(tmp_path / "store"),
                 "--int8"]) == EXIT_INVALID
    assert "--int8 quantises the ONNX student: add --onnx" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_unreadable_run_is_exit_4_with_the_problem_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store"
    (store / "r").mkdir(parents=True)
    (store / "r" / "manifest.json").write_text("{not json")
    assert main(["status", "r", "--storage", str(store)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: StorageError: manifest.json of run r is not valid JSON")
    assert "Traceback" not in err


def test_a_manifest_that_is_not_a_manifest_is_named_and_list_shows_every_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    store = ShardStore(root)
    write_manifest(store, "a-ok", status="done")
    store.write_json("b-broken", "manifest.json", {"run_id": "b-broken", "status": "paused"})
    write_manifest(store, "c-ok")
    assert main(["status", "b-broken", "--storage", str(root)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ManifestError: manifest of b-broken is not valid: ")
    assert "status: Input should be" in err and "taxonomy: Field required" in err
    assert main(["list", "--storage", str(root), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["status"]) for r in runs] == [("a-ok", "done"), ("b-broken", "invalid"),
                                                          ("c-ok", "running")]
    assert runs[1]["error"].startswith("manifest of b-broken is not valid: ")
    assert main(["list", "--storage", str(root)]) == 0  # for people: a table, the same rows
    out = capsys.readouterr().out
    rows = [[cell.strip() for cell in line.strip("│").split("│")][:2]
            for line in out.splitlines() if line.startswith("│")]
    assert rows == [["a-ok", "done"], ["b-broken", "invalid"], ["c-ok", "running"]]
    assert "b-broken: manifest of b-broken is not valid: " in out
