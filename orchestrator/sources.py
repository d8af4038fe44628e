"""Reading the columns a run needs from a data file or folder, in batches.

Formats, by suffix: CSV (``.csv``), TSV (``.tsv``), Parquet (``.parquet``, ``.pq``), JSONL
(``.jsonl``, ``.ndjson``); a folder of such files (read in name order, e.g. Parquet shards); or
a folder written by Hugging Face ``datasets``' ``save_to_disk`` (it holds ``state.json``), read
with the ``datasets`` package (``pip install 'distillq[hf]'``), a ``ClassLabel`` column as its
label names. Only the columns asked for are read (Parquet column by column, CSV with
``include_columns``), in batches of ``BATCH_ROWS``, so a file of millions of rows never sits in
memory whole unless its caller keeps it.

Every problem is an ``InvalidInputError`` that names the file and, where there is one, the row
(1: the first data row) or, in a JSONL file, the line. Each batch carries the place of each of
its rows in the same terms, so a caller's error about a cell points where the reader's would.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from distillq.errors import InvalidInputError

BATCH_ROWS = 10_000
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".jsonl": "jsonl", ".ndjson": "jsonl"}
HF = "hf"  # a `datasets` save_to_disk folder


# C0 and C1 controls but the whitespace ones (tab, line feed, vertical tab, form feed, carriage
# return, next line: text extracted from PDFs and e-mails has them)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")


def control_character(text: str) -> str | None:
    """The first control character of ``text`` (NUL, escape, …), as ``U+0000``; None if none.
    Whitespace controls (tab, line breaks, form feed) are not counted."""
    found = _CONTROL.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


def text_cell(value: Any, where: str, what: str, limit: int | None = None) -> str:
    """A text, label or id read from a file, stripped, or an ``InvalidInputError`` that says
    ``where`` (file and row or line) what is wrong: empty or missing, not text (a number is
    taken as its digits), over ``limit`` characters, or holding a control character."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInputError(f"{where} has an empty {what}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInputError(f"{where}: its {what} is a {type(value).__name__}, not text")
    out = str(value).strip()
    if limit is not None and len(out) > limit:
        raise InvalidInputError(f"{where} {what} is {len(out)} characters, over "
                                f"dataset.max_text_chars={limit}")
    if bad := control_character(out):
        raise InvalidInputError(f"{where}: its {what} holds the control character {bad} "
                                "(a binary or corrupted file?)")
    return out


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def files_of(ref: str, field: str) -> list[tuple[Path, str]]:
    """The files (and their format) behind ``ref``, the value of the spec field ``field``."""
    path = Path(ref)
    if is_hf_folder(path):
        return [(path, HF)]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not found:
            raise InvalidInputError(f"{field}: folder {ref} holds no "
                                    f"{'/'.join(sorted(SUFFIXES))} file and is not a "
                                    "`datasets` save_to_disk folder")
        kinds = sorted({SUFFIXES[p.suffix.lower()] for p in found})
        if len(kinds) > 1:  # a test.jsonl beside train shards must not become training data
            raise InvalidInputError(f"{field}: folder {ref} mixes {' and '.join(kinds)} files; "
                                    "a folder is one dataset's shards, in one format")
        return [(p, kinds[0]) for p in found]
    if not path.is_file():
        raise InvalidInputError(f"{field}: {ref} does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise InvalidInputError(f"{field}: {ref}: unknown format {path.suffix!r}; known: "
                                f"{sorted(SUFFIXES)} or a folder of them")
    return [(path, SUFFIXES[path.suffix.lower()])]


@dataclass(frozen=True)
class Places:
    """Where the rows of a batch sit in their file, for errors: ``places(j)`` is ``row 7``,
    or in JSONL, where blank lines are skipped and rows and lines part, ``line 9``."""

    first_row: int  # the batch's first row (1: the file's first data row)
    lines: list[int] | None = None  # JSONL: each row's line number

    def __call__(self, j: int) -> str:
        return f"line {self.lines[j]}" if self.lines is not None else f"row {self.first_row + j}"


@dataclass(frozen=True)
class Rows:
    """One batch of a file: ``columns`` (one list per column asked for, in that order)."""

    columns: list[list[Any]]
    places: Places


def read_columns(path: Path, kind: str, columns: Sequence[str],
                 fields: Sequence[str]) -> Iterator[Rows]:
    """Batches of ``columns`` of one file; ``fields`` names the spec field each column comes
    from, for the error when one is missing."""
    if kind == "jsonl":
        yield from _read_jsonl(path, columns, fields)
        return
    row = 1
    for batch in _read_hf(path, columns, fields) if kind == HF else _read_table(path, kind,
                                                                                columns, fields):
        yield Rows(batch, Places(row))
        row += len(batch[0])


def _read_table(path: Path, kind: str, columns: Sequence[str],
                fields: Sequence[str]) -> Iterator[list[list[Any]]]:
    try:
        if kind == "parquet":
            reader: Any = pq.ParquetFile(path)
            _need(columns, fields, reader.schema_arrow.names, path)
            stream = reader.iter_batches(batch_size=BATCH_ROWS, columns=list(columns))
        else:
            _need(columns, fields, _csv_names(path, kind), path)
            stream = pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(block_size=1 << 22),
                parse_options=pacsv.ParseOptions(delimiter="," if kind == "csv" else "\t",
                                                 newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(columns),
                    column_types={c: pa.string() for c in columns}))
        for batch in stream:
            yield [batch.column(c).to_pylist() for c in columns]
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"{path}: cannot read it as {kind}: {exc}") from None


def _csv_names(path: Path, kind: str) -> list[str]:
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as f:
        return next(csv.reader(f, delimiter="," if kind == "csv" else "\t"), [])


def _read_jsonl(path: Path, columns: Sequence[str],
                fields: Sequence[str]) -> Iterator[Rows]:
    out: list[list[Any]] = [[] for _ in columns]
    lines: list[int] = []
    row = 1
    with path.open("r", encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise InvalidInputError(f"{path}: line {n} is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise InvalidInputError(f"{path}: line {n} is not a JSON object")
            for col, field, values in zip(columns, fields, out, strict=True):
                if col not in obj:
                    raise InvalidInputError(f"{path}: line {n} has no {col!r} field ({field})")
                values.append(obj[col])
            lines.append(n)
            if len(lines) == BATCH_ROWS:
                yield Rows(out, Places(row, lines))
                out, lines, row = [[] for _ in columns], [], row + len(lines)
    if lines:
        yield Rows(out, Places(row, lines))


def _read_hf(path: Path, columns: Sequence[str],
             fields: Sequence[str]) -> Iterator[list[list[Any]]]:
    try:
        import datasets  # optional: pip install 'distillq[hf]'
    except ImportError:
        raise InvalidInputError(f"{path} is a Hugging Face `datasets` folder; reading it needs "
                                "the datasets package: pip install 'distillq[hf]'") from None
    try:
        data = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"{path}: cannot read it as a `datasets` folder: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        raise InvalidInputError(f"{path} holds a DatasetDict with the splits {list(data)}: "
                                f"point at one split's folder, e.g. {path / next(iter(data))}")
    _need(columns, fields, data.column_names, path)
    names = {c: data.features[c].int2str for c in columns
             if isinstance(data.features[c], datasets.ClassLabel)}
    for batch in data.select_columns(list(columns)).iter(batch_size=BATCH_ROWS):
        yield [_names(batch[c], names[c]) if c in names else batch[c] for c in columns]


def _names(values: list[Any], int2str: Any) -> list[Any]:
    return [None if v is None or v < 0 else int2str(v) for v in values]  # -1: no label


def _need(columns: Sequence[str], fields: Sequence[str], names: Sequence[str],
          path: Path) -> None:
    for col, field in zip(columns, fields, strict=True):
        if col not in names:
            raise InvalidInputError(f"{path}: column {col!r} ({field}) not found; columns are "
                                    f"{list(names)}")
