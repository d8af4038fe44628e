"""dataset.unlabelled (orchestrator/unlabelled.py): read from every format in batches, texts
of the evaluation splits and repeats dropped, bad input refused with nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillq.errors import InvalidInputError
from distillq.spec import parse_spec
from orchestrator.runs import create_run
from storage.store import ShardStore

LABELS = ("a", "b", "c")


def _labelled(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(60):
            w.writerow([f"labelled text {i} about {LABELS[i % 3]}", LABELS[i % 3]])
    return path


def _spec(tmp_path: Path, unlabelled: str, **dataset: Any) -> Any:
    train = _labelled(tmp_path)
    return parse_spec({
        "run_id": "u1", "storage": str(tmp_path / "store"),
        "dataset": {"train": str(train), "test": str(train), "seed_size": 30,
                    "unlabelled": unlabelled, **dataset},
        "labelling": {"share": 0.5, "shard_rows": 100},
    })


def _stored(tmp_path: Path) -> list[tuple[str, str]]:
    store = ShardStore(str(tmp_path / "store"))
    rows = []
    for name in store.list_jobs("u1", 0, "unlabelled"):
        t = store.read_shard("u1", 0, "unlabelled", name)
        rows += list(zip(t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True))
    return rows


TEXTS = [f"an unlabelled message number {i}" for i in range(250)]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "folder", "hf"])
def test_every_format_is_read_and_stored_in_shards(tmp_path: Path, fmt: str) -> None:
    ids = [f"m{i}" for i in range(len(TEXTS))]
    if fmt in ("csv", "tsv"):
        path = tmp_path / f"pool.{fmt}"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            w.writerow(["msg_id", "body", "ignored"])
            w.writerows([i, t, "x"] for i, t in zip(ids, TEXTS, strict=True))
    elif fmt == "jsonl":
        path = tmp_path / "pool.jsonl"
        path.write_text("".join(json.dumps({"msg_id": i, "body": t}) + "\n"
                                for i, t in zip(ids, TEXTS, strict=True)))
    elif fmt == "hf":  # a real `datasets` save_to_disk folder
        import datasets

        path = tmp_path / "pool-hf"
        datasets.Dataset.from_dict({"msg_id": ids, "body": TEXTS}).save_to_disk(str(path))
    else:
        path = tmp_path / ("pool" if fmt == "folder" else "pool.parquet")
        table = pa.table({"msg_id": ids, "body": TEXTS, "ignored": [0] * len(TEXTS)})
        if fmt == "folder":
            path.mkdir()
            pq.write_table(table.slice(0, 100), path / "part-0.parquet")
            pq.write_table(table.slice(100), path / "part-1.parquet")
            (path / "README.md").write_text("not data")
        else:
            pq.write_table(table, path)
    spec = _spec(tmp_path, str(path), unlabelled_text_column="body",
                 unlabelled_id_column="msg_id")
    create_run(spec)
    assert _stored(tmp_path) == list(zip(ids, TEXTS, strict=True))
    manifest = json.loads((tmp_path / "store" / "u1" / "manifest.json").read_text())
    assert manifest["counts"]["unlabelled"] == 250 and manifest["counts"]["unlabelled_shards"] == 3


def test_evaluation_texts_and_repeats_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "pool.csv"
    rows = [["text"], ["Labelled text 3 about a!"], ["  labelled   TEXT 4 about b "],
            ["fresh one"], ["Fresh one."], ["another fresh one"]]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    create_run(_spec(tmp_path, str(path)))  # train = test here: every labelled text is tested
    assert [t for _, t in _stored(tmp_path)] == ["fresh one", "another fresh one"]
    assert [i for i, _ in _stored(tmp_path)] == ["pool.csv:3", "pool.csv:5"], "file and row"
    counts = json.loads((tmp_path / "store" / "u1" / "manifest.json").read_text())["counts"]
    assert counts["unlabelled_dropped_repeated"] == 1
    assert counts["unlabelled_dropped_in_seed_or_val"] + counts["unlabelled_dropped_in_test"] == 2


def test_rest_of_train_is_the_pool_as_texts(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "rest_of_train", test=None)
    create_run(spec)
    stored = _stored(tmp_path)
    assert len(stored) == 30 and all(t.startswith("labelled text") for _, t in stored)


@pytest.mark.parametrize("content,problem", [
    ("text\nfine\n\"\"\n", r"pool.csv: row 2 has an empty text"),
    ("body\nfine\n", r"pool.csv: column 'text' \(dataset.unlabelled_text_column\) not found"),
    ("text\nfine\nnot \x00 fine\n", r"pool.csv: row 2: its text holds the control character "
     r"U\+0000"),
    ("text,id\nfine,1\nalso fine,1\n", r"pool.csv: row 2 repeats the id '1'"),
    ("text,id\nfine,1\nalso fine,\n", r"pool.csv: row 2 has no id"),
    ("text\nfine\n" + "x" * 20_001 + "\n", r"pool.csv: row 2 text is 20001 characters"),
    ("text\nlabelled text 1 about b\n", r"no text left to label"),
])
def test_bad_input_is_named_and_nothing_is_written(tmp_path: Path, content: str,
                                                   problem: str) -> None:
    path = tmp_path / "pool.csv"
    path.write_text(content)
    id_column = "id" if ",id" in content else None
    with pytest.raises(InvalidInputError, match=problem):
        create_run(_spec(tmp_path, str(path), unlabelled_id_column=id_column))
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.*"))


def test_a_jsonl_pool_names_lines_and_keeps_row_numbered_ids(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"  # blank lines: the 2nd text is on line 3, the 3rd on line 5
    body = '{"text": "first new text"%s}\n\n{"text": "second new text"%s}\n\n' \
        '{"text": "third new text"%s}\n'
    path.write_text(body % (', "id": "z"', ', "id": "a"', ', "id": "a"'))
    with pytest.raises(InvalidInputError, match=r"pool.jsonl: line 5 repeats the id 'a'"):
        create_run(_spec(tmp_path, str(path), unlabelled_id_column="id"))
    path.write_text(body % ("", "", ""))
    create_run(_spec(tmp_path, str(path)))
    assert _stored(tmp_path)[-2:] == [("pool.jsonl:2", "second new text"),
                                      ("pool.jsonl:3", "third new text")]


def test_share_needs_an_unlabelled_source(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="labelling.share > 0 needs dataset.unlabelled"):
        parse_spec({"dataset": {"train": "x.csv"}, "labelling": {"share": 0.5}})
