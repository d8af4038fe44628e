from __future__ import annotations

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
    ],
)
def test_bad_datasets_name_the_problem(tmp_path: Path, body: str | bytes, kwargs: dict,
                                       needle: str) -> None:
    path = _csv(tmp_path, body)
    with pytest.raises(InvalidInputError, match=needle.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(")):
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
