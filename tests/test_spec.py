from __future__ import annotations

from pathlib import Path

import pytest

from distillq.errors import SpecError
from distillq.spec import load_spec, parse_spec


def _fields(exc: SpecError) -> set[str]:
    return {field for field, _ in exc.problems}


def test_minimal_spec_gets_paper_defaults(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text("dataset:\n  train: data/train.csv\n")
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.dataset.train == str(tmp_path / "data" / "train.csv")
    assert spec.dataset.seed_size == 1000 and spec.dataset.val_fraction == 0.2
    assert (spec.student.lr, spec.student.batch_size, spec.student.patience) == (2e-5, 64, 5)
    assert (spec.loop.max_cycles, spec.loop.patience) == (10, 5)
    assert spec.generation.n_hard_negatives == 16


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "dataset"),
        ({"dataset": {"train": "x.csv", "seed_size": 0}}, "dataset.seed_size"),
        ({"dataset": {"train": "x.csv"}, "student": {"lr": -1}}, "student.lr"),
        ({"dataset": {"train": "x.csv"}, "teacher": {"kind": "gpt"}}, "teacher.kind"),
        ({"dataset": {"train": "x.csv"}, "teacher": {"kind": "openai"}}, "teacher"),
        ({"dataset": {"train": "x.csv"}, "run_id": "../etc"}, "run_id"),
        ({"dataset": {"train": "x.csv"}, "run_id": "a/b"}, "run_id"),
        ({"dataset": {"train": "x.csv"}, "bogus": 1}, "bogus"),
        ({"dataset": {"train": "x.csv"}, "generation": {"mode": "magic"}}, "generation.mode"),
        ({"dataset": {"train": "x.csv"}, "student": {"rationales": True}}, "(top level)"),
    ],
)
def test_spec_errors_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(data, "spec.yaml")
    assert field in _fields(info.value), info.value.problems
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"dataset: [unclosed", "not valid YAML"), (b"\xff\xfe\x00bad", "not UTF-8"),
     (b"- a\n- b\n", "mapping")],
)
def test_unreadable_spec_files(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=needle):
        load_spec(path)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nope.yaml")


def test_docs_spec_page_is_current() -> None:
    from orchestrator.specdoc import render

    page = Path(__file__).resolve().parents[1] / "docs" / "spec.md"
    assert page.read_text() == render(), "run: python -m orchestrator.specdoc > docs/spec.md"
