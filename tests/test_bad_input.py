"""Malformed and hostile input through the real command line: each case must give a clear error
that names the problem, exit code 2, and leave nothing written in storage.

Every case here is a row of docs/reliability.md.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

GOOD_ROWS = [("text", "label")] + [(f"example number {i} about topic {c}", f"c{c}")
                                  for c in range(3) for i in range(12)]


def _csv(path: Path, rows: list[tuple[str, ...]]) -> str:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return str(path)


def _parquet(path: Path, columns: dict[str, list[str]]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return str(path)


def _text(path: Path, body: str) -> str:
    path.write_text(body)
    return str(path)


def _spec(tmp: Path, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "bad", "run_id": "bad-input", "storage": str(tmp / "store"),
        "dataset": {"train": _csv(tmp / "train.csv", GOOD_ROWS), "seed_size": 18},
    }
    for key, value in over.items():
        spec[key] = {**spec[key], **value} if isinstance(spec.get(key), dict) else value
    return spec


def _write(tmp: Path, spec: Any) -> Path:
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec) if not isinstance(spec, str) else spec)
    return path


Case = Callable[[Path], list[str]]  # builds the input under tmp, returns the CLI arguments


def _run_spec(make: Callable[[Path], Any]) -> Case:
    return lambda tmp: ["run", str(_write(tmp, make(tmp)))]


def _dataset(rows: list[tuple[str, ...]], **ds: Any) -> Case:
    return _run_spec(lambda tmp: _spec(tmp, dataset={"train": _csv(tmp / "d.csv", rows), **ds}))


def _raw_dataset(data: bytes) -> Case:
    def make(tmp: Path) -> Any:
        (tmp / "raw.csv").write_bytes(data)
        return _spec(tmp, dataset={"train": str(tmp / "raw.csv")})

    return _run_spec(make)


CASES: dict[str, tuple[Case, str]] = {
    "spec is not YAML": (lambda t: ["run", str(_write(t, "name: [unclosed"))], "not valid YAML"),
    "spec is not UTF-8": (lambda t: ["run", str(_bytes(t, b"name: \xff\xfe"))], "not UTF-8"),
    "spec file missing": (lambda t: ["run", str(t / "nope.yaml")], "cannot read"),
    "spec is a list": (lambda t: ["run", str(_write(t, "- a\n- b\n"))], "mapping of fields"),
    "unknown spec field": (_run_spec(lambda t: {**_spec(t), "colour": "red"}), "colour"),
    "wrong type": (_run_spec(lambda t: _spec(t, dataset={"seed_size": "many"})),
                   "dataset.seed_size"),
    "negative budget": (_run_spec(lambda t: _spec(t, budget={"max_cost": -1})),
                        "budget.max_cost"),
    "run id with a path separator": (_run_spec(lambda t: _spec(t, run_id="../escape")),
                                     "run_id"),
    "run id with ..": (_run_spec(lambda t: _spec(t, run_id="a..b")), "run_id"),
    "storage outside the allowed roots": (
        _run_spec(lambda t: _spec(t, storage="/tmp/elsewhere-distillq")), "outside the allowed"),
    "storage URI outside the allowed roots": (
        _run_spec(lambda t: _spec(t, storage="s3://other-bucket/x")), "outside the allowed"),
    "dataset file missing": (_run_spec(lambda t: _spec(t, dataset={"train": str(t / "no.csv")})),
                             "does not exist"),
    "unknown builtin dataset": (_run_spec(lambda t: _spec(t, dataset={"train": "builtin:nope"})),
                                "unknown builtin dataset"),
    "missing label column": (_dataset([("text", "category"), ("a b", "x")]), "label"),
    "empty text": (_dataset(GOOD_ROWS + [("", "c1")]), "empty text"),
    "empty label": (_dataset(GOOD_ROWS + [("some text", "")]), "empty label"),
    "empty class": (_dataset(GOOD_ROWS, labels=["c0", "c1", "c2", "c3"]),
                    "no training examples"),
    "unknown label": (_dataset(GOOD_ROWS + [("text", "c9")], labels=["c0", "c1", "c2"]),
                      "not in dataset.labels"),
    "duplicate ids": (_dataset([("id", "text", "label"), ("1", "a", "c0"), ("1", "b", "c1")]
                               + [(str(i + 2), f"t {i}", f"c{i % 2}") for i in range(20)],
                               id_column="id"), "duplicate ids"),
    "huge text": (_dataset(GOOD_ROWS + [("x" * 50_000, "c0")]), "characters"),
    "non-UTF-8 bytes in the dataset": (_raw_dataset(b"text,label\nabc\xff\xfe,c0\n"),
                                       "UTF-8"),
    "empty dataset": (_raw_dataset(b"text,label\n"), "no examples"),
    "NUL byte inside a text": (_raw_dataset(b"text,label\nabc\x00def,c0\nok,c1\n"),
                               "line 2: its text holds the control character U+0000"),
    "a single class": (_dataset([("text", "label")] + [(f"t {i}", "c0") for i in range(30)]),
                       "a classifier needs at least two classes"),
    "identical texts under different labels": (
        _dataset(GOOD_ROWS + [(GOOD_ROWS[1][0], "c1"), (GOOD_ROWS[1][0], "c2")]),
        "identical texts under more than one label: 1 (3 rows)"),
    "Parquet without the label column": (_run_spec(lambda t: _spec(t, dataset={
        "train": _parquet(t / "d.parquet", {"text": ["a", "b"], "category": ["x", "y"]})})),
        "column 'label' (dataset.label_column) not found"),
    "JSONL line that is not JSON": (_run_spec(lambda t: _spec(t, dataset={
        "train": _text(t / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label}\n')})),
        "d.jsonl: line 2 is not JSON"),
    "seed larger than the data": (_run_spec(lambda t: _spec(t, dataset={"seed_size": 500})),
                                  "seed_size"),
    "test labels outside the taxonomy": (
        _run_spec(lambda t: _spec(t, dataset={
            "test": _csv(t / "test.csv", [("text", "label"), ("x y", "zzz")])})),
        "outside the taxonomy"),
    "status of a run id with a separator": (lambda t: ["status", "../etc", "--storage",
                                                       str(t / "store")], "not allowed"),
    "export of a run that does not exist": (
        lambda t: ["export", "ghost", str(t / "out"), "--storage", str(t / "store")], "no run"),
}


def _bytes(tmp: Path, data: bytes) -> Path:
    path = tmp / "spec.yaml"
    path.write_bytes(data)
    return path


def run_case(name: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    make, _ = CASES[name]
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "DISTILLQ_STORAGE_ROOTS": f"{tmp},s3://distillq-runs"}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *make(tmp)], env=env,
                          cwd=tmp, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _written(tmp: Path) -> list[str]:
    store = tmp / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_by_name_with_exit_2_and_nothing_written(
        name: str, tmp_path: Path) -> None:
    done = run_case(name, tmp_path)
    _, expected = CASES[name]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert _written(tmp_path) == []
    assert not Path("/tmp/elsewhere-distillq").exists()


def test_a_good_spec_passes_the_same_checks(tmp_path: Path) -> None:
    """The cases above fail for their own reason: the unchanged spec creates its run."""
    from distillq.spec import parse_spec
    from orchestrator.runs import create_run

    spec = parse_spec(_spec(tmp_path))
    assert create_run(spec) == "bad-input"
    assert "bad-input/manifest.json" in _written(tmp_path)


if __name__ == "__main__":  # print the table rows of docs/reliability.md
    import tempfile

    for case in sorted(CASES):
        with tempfile.TemporaryDirectory() as d:
            out = run_case(case, Path(d))
            msg = out.stderr.strip().replace("\n", " ").replace("|", "\\|")
            print(f"| {case} | {out.returncode} | {msg[:220]} |")


def test_storage_roots_see_through_dots_and_symlinks(tmp_path: Path) -> None:
    from distillq.errors import InvalidInputError
    from orchestrator.runs import check_storage

    root = tmp_path / "allowed"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    roots = f"{root},s3://bucket/runs"
    assert check_storage(str(root / "a" / "b"), roots)
    assert check_storage("s3://bucket/runs/team-a?region=x", roots)
    for bad in (str(root / ".." / "x"), str(root / "link" / "x"), "s3://bucket/runs/../x",
                "s3://bucket/runsx", "s3://other/runs"):
        with pytest.raises(InvalidInputError, match="outside the allowed roots"):
            check_storage(bad, roots)
    assert check_storage("/anywhere", "") == "/anywhere"
