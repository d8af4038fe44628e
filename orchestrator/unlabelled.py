"""The unlabelled texts of a run (``dataset.unlabelled``), read in batches and stored as shards.

Sources: any that ``orchestrator.sources`` reads (a CSV, TSV, Parquet or JSONL file, a folder
of them, a ``datasets`` save_to_disk folder), or ``rest_of_train``: the training rows outside
the seed, as texts only (the quality study's pool). Only the text and id columns are read, in
batches, twice (to check, then to write), so a pool of millions of texts never sits in memory
whole: only each text's id and an 8-byte digest of it are kept, to find repeats.

A text is dropped, and counted, when its normalised form (``workers.teachers.parsing.
normalise``: case, spaces and punctuation ignored, as the teacher's copies are judged) is
that of a seed, validation or test text (the teacher must not label what the student is
evaluated on) or of an earlier unlabelled text (never label a text twice). A missing column,
an empty text, a text over ``dataset.max_text_chars`` or holding a control character (NUL…),
a missing or repeated id is an
``InvalidInputError`` naming the file and row; without an id column a text's id is
``<file name>:<row>``; nothing is written until the whole source has
been read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from distillq.errors import InvalidInputError
from distillq.spec import DatasetSpec
from orchestrator.datasets import Split
from orchestrator.sources import BATCH_ROWS, Places, files_of, read_columns, text_cell
from storage.schemas import UNLABELLED
from storage.store import ShardStore
from workers.teachers.parsing import normalise

REST_OF_TRAIN = "rest_of_train"


@dataclass
class PoolCounts:
    """What reading the source found: texts kept, and dropped by reason."""

    kept: int = 0
    read: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {"in_seed_or_val": 0,
                                                              "in_test": 0, "repeated": 0})
    shards: int = 0


def _digest(text: str) -> bytes:
    return hashlib.blake2b(normalise(text).encode(), digest_size=8).digest()


@dataclass(frozen=True)
class Batch:
    where: str  # the file (or rest_of_train)
    places: Places  # where each text sits in it: "row 7", or "line 9" in JSONL
    ids: list[str]
    texts: list[str]


def batches(ds: DatasetSpec, split: Split) -> Iterator[Batch]:
    """The source's texts in batches, checked (module docstring)."""
    if ds.unlabelled == REST_OF_TRAIN:
        pool = split.pool
        for i in range(0, len(pool), BATCH_ROWS):  # ids as in the run's pool table
            chunk = [f"pool-{x}" for x in pool.ids[i:i + BATCH_ROWS]]
            yield Batch(REST_OF_TRAIN, Places(i + 1), chunk, list(pool.texts[i:i + BATCH_ROWS]))
        return
    assert ds.unlabelled is not None
    text_col = ds.unlabelled_text_column or ds.text_column
    id_col = ds.unlabelled_id_column
    columns = [text_col] + ([id_col] if id_col else [])
    fields = ["dataset.unlabelled_text_column", "dataset.unlabelled_id_column"][:len(columns)]
    for path, kind in files_of(ds.unlabelled, "dataset.unlabelled"):
        for got in read_columns(path, kind, columns, fields):
            texts = got.columns[0]
            ids: list[Any] = got.columns[1] if id_col else [None] * len(texts)
            texts = [text_cell(text, f"{path}: {got.places(j)}", "text", ds.max_text_chars)
                     for j, text in enumerate(texts)]
            if ds.unlabelled_id_column is None:  # the row's number, as in every earlier run
                ids = [f"{path.name}:{got.places.first_row + j}" for j in range(len(texts))]
            else:
                for j, pool_id in enumerate(ids):
                    if pool_id is None or not str(pool_id).strip():
                        raise InvalidInputError(f"{path}: {got.places(j)} has no id "
                                                f"({ds.unlabelled_id_column!r})")
            yield Batch(str(path), got.places, [str(i) for i in ids],
                        [" ".join(t.split()) for t in texts])


def check_unlabelled(ds: DatasetSpec, split: Split) -> tuple[bytearray, PoolCounts]:
    """Read the source once: check it (InvalidInputError) and choose the texts to keep (1 per
    row kept, 0 dropped; counts by reason). Writes nothing."""
    counts = PoolCounts()
    return _choose(ds, split, counts), counts


def write_unlabelled(store: ShardStore, run_id: str, ds: DatasetSpec, split: Split,
                     keep: bytearray, counts: PoolCounts, shard_rows: int) -> None:
    """Read the source again and commit the rows ``keep`` says as shards
    ``cycle=0/unlabelled/u00000.parquet`` … of ``shard_rows`` texts."""
    row = 0
    ids_out: list[str] = []
    texts_out: list[str] = []
    for batch in batches(ds, split):
        for pool_id, text in zip(batch.ids, batch.texts, strict=True):
            if keep[row]:
                ids_out.append(pool_id)
                texts_out.append(text)
            row += 1
            if len(ids_out) == shard_rows:
                _commit(store, run_id, counts, ids_out, texts_out)
                ids_out, texts_out = [], []
    if ids_out:
        _commit(store, run_id, counts, ids_out, texts_out)


def _choose(ds: DatasetSpec, split: Split, counts: PoolCounts) -> bytearray:
    """Which rows of the source to keep (1) or drop (0, counted by reason)."""
    evaluated = {_digest(t) for t in split.seed_train.texts + split.val.texts}
    tested = {_digest(t) for t in (split.test.texts if split.test else [])}
    seen: set[bytes] = set()
    ids_seen: set[str] = set()
    keep = bytearray()
    for batch in batches(ds, split):
        for j, (pool_id, text) in enumerate(zip(batch.ids, batch.texts, strict=True)):
            counts.read += 1
            if pool_id in ids_seen:
                raise InvalidInputError(f"{batch.where}: {batch.places(j)} repeats "
                                        f"the id {pool_id!r} of an earlier text")
            ids_seen.add(pool_id)
            key = _digest(text)
            reason = ("in_seed_or_val" if key in evaluated else "in_test" if key in tested
                      else "repeated" if key in seen else None)
            if reason:
                counts.dropped[reason] += 1
            seen.add(key)
            keep.append(reason is None)
    counts.kept = sum(keep)
    if not counts.kept:
        raise InvalidInputError("dataset.unlabelled: no text left to label (all "
                                f"{counts.read} are in the seed, validation or test split, "
                                "or repeated)")
    return keep


def _commit(store: ShardStore, run_id: str, counts: PoolCounts, ids: list[str],
            texts: list[str]) -> None:
    table = pa.table({"id": ids, "text": texts}, schema=UNLABELLED)
    store.commit(run_id, 0, "unlabelled", shard_name(counts.shards), table)
    counts.shards += 1


def shard_name(k: int) -> str:
    return f"u{k:05d}"
