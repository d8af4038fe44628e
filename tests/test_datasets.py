from __future__ import annotations

import re
from pathlib import Path

import pytest

from distillq.errors import InvalidInputError
from distillq.spec import DatasetSpec
from distillq.split import steer_count, steer_mask
from orchestrator.datasets import load_and_split, read_labelled, resolve_data_path


def _csv(tmp_path: Path, body: str | bytes, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


def _rows(n_per_class: int = 10, classes: int = 3) -> str:
    lines = ["text,label"]
    lines += [f"example {c}-{i} about topic{c},c{c}" for c in range(classes)
              for i in range(n_per_class)]
    return "\n".join(lines) + "\n"


def test_seed_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows(20))
    ds = DatasetSpec(train=str(path), seed_size=20, val_fraction=0.25, sample_seed=3)
    a, b = load_and_split(ds), load_and_split(ds)
    assert a.seed_train.ids == b.seed_train.ids and a.val.ids == b.val.ids
    assert (len(a.seed_train), len(a.val), len(a.pool)) == (15, 5, 40)
    assert not set(a.seed_train.ids) & set(a.val.ids)
    assert not (set(a.seed_train.ids) | set(a.val.ids)) & set(a.pool.ids)
    assert a.taxonomy == ["c0", "c1", "c2"]


@pytest.mark.parametrize(
    ("body", "kwargs", "needle"),
    [
        ("txt,label\na,b\n", {}, "column 'text'"),
        ("text,label\n,b\n", {}, "line 2 has an empty text"),
        ("text,label\nhello,\n", {}, "line 2 has an empty label"),
        (b"text,label\nok,a\nbad \xff\xfe,b\n", {}, "line 3 is not UTF-8"),
        ("text,label\n" + "x" * 100 + ",a\n", {"max_text_chars": 50}, "over dataset.max_text_chars"),
        ("id,text,label\n1,a,x\n1,b,y\n", {"id_column": "id"}, "duplicate ids"),
        ("text,label\na,x\nb,y\n", {"labels": ["x"]}, "not in dataset.labels"),
        ("text,label\na,x\nb,x\n", {"labels": ["x", "y"]}, "no training examples: ['y']"),
        ("text,label\na,x\nb,y\n", {"seed_size": 5}, "more than the 2 training rows"),
        ("text,label\na,x\nb,y\nc,x\n", {"val_fraction": 0.8},
         "leaves none to train on"),
        # a quoted two-line text and a blank line before the bad row: line 5, not 3
        ('text,label\n"two\nlines",x\n\n,y\n', {}, "line 5 has an empty text"),
        ("text,label\nok,a\nnul \x00 inside,b\n", {}, "line 3: its text holds the control "
         "character U+0000"),
        ("text,label\nok,a\nfine,b\x1b[31m\n", {}, "line 3: its label holds the control "
         "character U+001B"),
        ("text,label\na,x\nb,x\nc,x\n", {}, "every row has the label 'x'; a classifier needs "
         "at least two classes"),
        ("text,label\nsame  text,x\nother,y\nsame text,y\n", {},
         "identical texts under more than one label: 1 (2 rows), e.g. 'same text' under "
         "['x', 'y']"),
    ],
)
def test_bad_datasets_name_the_problem(tmp_path: Path, body: str | bytes, kwargs: dict,
                                       needle: str) -> None:
    path = _csv(tmp_path, body)
    with pytest.raises(InvalidInputError, match=re.escape(needle)):
        load_and_split(DatasetSpec(train=str(path), **{"seed_size": 2, **kwargs}))


def test_missing_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        resolve_data_path(str(tmp_path / "nope.csv"))
    with pytest.raises(InvalidInputError, match="unknown builtin dataset"):
        resolve_data_path("builtin:imagenet")


def test_orange_builtin_20newsgroups_reads() -> None:
    ds = DatasetSpec(train="builtin:20newsgroups-test", text_column="Text",
                     label_column="Category", max_text_chars=1_000_000)
    data = read_labelled(resolve_data_path(ds.train), ds)
    assert len(data) == 7528
    assert len(set(data.labels)) == 20


def test_a_train_and_a_test_file_split_into_seed_validation_pool_and_test(corpus: Path) -> None:
    ds = DatasetSpec(train=str(corpus / "train.csv"), test=str(corpus / "test.csv"),
                     label_column="category")
    split = load_and_split(ds)  # 3,840 training rows, 12 labels; seed_size 1,000, 20% of it val
    assert (len(split.seed_train), len(split.val), len(split.pool)) == (800, 200, 2840)
    assert split.test is not None and len(split.test) == 1440
    assert len(split.taxonomy) == 12


def test_steer_mask_draws_its_share_label_by_label() -> None:
    # 7 labels with 1-6 validation examples each (22 in all)
    labels = [f"c{c}" for c in range(7) for _ in range(1 + c % 6)]
    ids = [f"v{i:03d}" for i in range(len(labels))]
    mask = steer_mask(ids, labels, 0.5, seed=1)
    assert sum(mask) == steer_count(len(ids), 0.5) == 11
    for label in set(labels):
        n = labels.count(label)
        k = sum(m for m, y in zip(mask, labels, strict=True) if y == label)
        assert n // 2 <= k <= (n + 1) // 2, (label, n, k)
    # the same examples steer whatever the order of the rows; another seed draws others
    order = list(reversed(range(len(ids))))
    again = steer_mask([ids[i] for i in order], [labels[i] for i in order], 0.5, seed=1)
    assert {ids[i] for i, m in zip(order, again, strict=True) if m} == \
        {i for i, m in zip(ids, mask, strict=True) if m}
    assert steer_mask(ids, labels, 0.5, seed=2) != mask
    assert not any(steer_mask(ids, labels, 0.0))
    assert sum(steer_mask(ids, labels, 0.25, seed=1)) == 6


def test_steer_fraction_that_leaves_one_part_empty_is_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows(20))
    ok = load_and_split(DatasetSpec(train=str(path), seed_size=20, val_fraction=0.2,
                                    steer_fraction=0.5))
    assert len(ok.val) == 4
    with pytest.raises(InvalidInputError, match="steer_fraction=0.1 of the 4 validation "
                                                "examples leaves none to steer"):
        load_and_split(DatasetSpec(train=str(path), seed_size=20, val_fraction=0.2,
                                   steer_fraction=0.1))
    with pytest.raises(InvalidInputError, match="leaves none to select"):
        load_and_split(DatasetSpec(train=str(path), seed_size=20, val_fraction=0.2,
                                   steer_fraction=0.9))


ROWS = [(f"example {c}-{i} about topic{c}", f"c{c}") for c in range(3) for i in range(10)]


def _write_format(tmp_path: Path, fmt: str, rows: list[tuple[str, str]]) -> Path:
    """``rows`` as a training set in ``fmt`` (the columns text and label)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": [r[0] for r in rows], "label": [r[1] for r in rows]})
    if fmt == "parquet":
        pq.write_table(table, tmp_path / "d.parquet")
        return tmp_path / "d.parquet"
    if fmt == "parquet shards":
        folder = tmp_path / "shards"
        folder.mkdir()
        for k in range(3):  # read in name order: part-0, part-1, part-2
            pq.write_table(table.slice(k * 10, 10), folder / f"part-{k}.parquet")
        return folder
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": lab, "other": 1}) + "\n"
                                for t, lab in rows))
        return path
    import datasets  # a real save_to_disk folder, the label as a ClassLabel

    names = sorted({r[1] for r in rows})
    data = datasets.Dataset.from_dict(
        {"text": [r[0] for r in rows], "label": [names.index(r[1]) for r in rows]},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=names)}))
    data.save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf"


@pytest.mark.parametrize("fmt", ["parquet", "parquet shards", "jsonl", "hf"])
def test_every_format_reads_as_the_same_rows(tmp_path: Path, fmt: str) -> None:
    path = _write_format(tmp_path, fmt, ROWS)
    data = read_labelled(resolve_data_path(str(path)), DatasetSpec(train=str(path)))
    assert list(zip(data.texts, data.labels, strict=True)) == ROWS
    split = load_and_split(DatasetSpec(train=str(path), seed_size=12))
    assert split.taxonomy == ["c0", "c1", "c2"] and len(split.pool) == 18


@pytest.mark.parametrize(("fmt", "rows", "kwargs", "needle"), [
    ("parquet", ROWS, {"label_column": "category"},
     "column 'category' (dataset.label_column) not found; columns are ['text', 'label']"),
    ("parquet shards", ROWS[:12] + [("", "c1")] + ROWS[13:], {}, "part-1.parquet: row 3 has "
     "an empty text"),
    ("jsonl", ROWS[:4] + [("a \x00 b", "c0")] + ROWS[5:], {},
     "d.jsonl: line 5: its text holds the control character U+0000"),
    ("hf", ROWS[:5] + [("x" * 60, "c0")] + ROWS[6:], {"max_text_chars": 50},
     "hf: row 6 text is 60 characters, over dataset.max_text_chars=50"),
])
def test_every_format_names_the_file_and_row_of_a_problem(
        tmp_path: Path, fmt: str, rows: list[tuple[str, str]], kwargs: dict, needle: str) -> None:
    path = _write_format(tmp_path, fmt, rows)
    with pytest.raises(InvalidInputError, match=re.escape(needle)):
        load_and_split(DatasetSpec(train=str(path), seed_size=12, **kwargs))


def test_a_jsonl_problem_names_the_line_blank_lines_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"  # the empty text is the 3rd row, on the 5th line
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n\n'
                    '{"text": " ", "label": "x"}\n')
    with pytest.raises(InvalidInputError, match=re.escape("d.jsonl: line 5 has an empty text")):
        read_labelled(path, DatasetSpec(train=str(path)))


def test_a_datasetdict_folder_is_pointed_at_one_split(tmp_path: Path) -> None:
    import datasets

    data = datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]})
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InvalidInputError, match=r"DatasetDict with the splits \['train', 'test'\]"
                       ": point at one split's folder, e.g. .*dd/train"):
        load_and_split(DatasetSpec(train=str(tmp_path / "dd"), seed_size=2))
    split = load_and_split(DatasetSpec(train=str(tmp_path / "dd" / "train"), seed_size=2))
    assert split.taxonomy == ["x", "y"]


def test_conflicting_labels_are_dropped_or_kept_on_request(tmp_path: Path) -> None:
    body = _rows(10) + "example 0-0 about topic0,c1\n"  # the same text under c0 and c1
    path = _csv(tmp_path, body)
    with pytest.raises(InvalidInputError, match="set dataset.conflicting_labels to drop"):
        read_labelled(path, DatasetSpec(train=str(path)))
    dropped = read_labelled(path, DatasetSpec(train=str(path), conflicting_labels="drop"))
    kept = read_labelled(path, DatasetSpec(train=str(path), conflicting_labels="keep"))
    assert (len(dropped), len(kept)) == (29, 31)
    assert "example 0-0 about topic0" not in dropped.texts


def test_whitespace_controls_pass_and_dropping_every_row_is_an_error(tmp_path: Path) -> None:
    path = _csv(tmp_path, _rows(4) + "page one\fpage two\x85next line,c1\n")
    data = read_labelled(path, DatasetSpec(train=str(path)))
    assert "page one\fpage two\x85next line" in data.texts, "form feed, next line: whitespace"
    clash = _csv(tmp_path, "text,label\nsame,a\nsame,b\n", "clash.csv")
    with pytest.raises(InvalidInputError, match="no rows left once the conflicting ones"):
        load_and_split(DatasetSpec(train=str(clash), seed_size=2, conflicting_labels="drop"))


def test_a_folder_of_mixed_formats_is_refused(tmp_path: Path) -> None:
    folder = _write_format(tmp_path, "parquet shards", ROWS)
    (folder / "test.jsonl").write_text('{"text": "t", "label": "c0"}\n')
    with pytest.raises(InvalidInputError, match="mixes jsonl and parquet files"):
        load_and_split(DatasetSpec(train=str(folder), seed_size=12))
