"""The shard store: the source of truth of every run.

Layout (see docs/storage.md and storage/layout.py)::

    <root>/<run_id>/manifest.json
    <root>/<run_id>/data/<name>.parquet
    <root>/<run_id>/cycle=<c>/<kind>/<job_id>.parquet        kind: generated|attributed|predictions
    <root>/<run_id>/cycle=<c>/eval.json, plan.json, ...
    <root>/<run_id>/cycle=<c>/student/..., _COMMITTED         a folder, marker written last

DESIGN: delivery is at least once, so a job may run twice, even at the same time on two
machines. Each job writes exactly one shard, named by its deterministic id, with an atomic
commit (storage/backends.py): readers see the old shard, the new one, or none, never a part,
and a second commit of the same job replaces the first instead of adding a copy. Listing is
therefore the commit log: a job is done iff its shard is listed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from distillq import paths
from distillq.errors import StorageError, TransientError
from storage import layout
from storage.backends import MARKER, FolderChanged, open_backend, swap_in
from storage.dedup import dedup_by_text
from storage.schemas import ATTRIBUTIONS, EXAMPLES, conform, empty, schema_of, validate

_READERS = 8
_GET_DIR_ATTEMPTS = 5
T = TypeVar("T")


def _parquet(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _parse(data: bytes, schema: pa.Schema, where: str) -> pa.Table:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise StorageError(f"{where} is unreadable: {exc}") from None
    return conform(table, schema, where)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables(tables) if tables else empty(schema)


def _move_into(src: Path, out: Path) -> None:
    """Rename ``src`` to ``out``, replacing whatever ``out`` held: a reader of ``out`` sees the
    old folder or the new one, never a mix (what was there is moved aside, then deleted)."""
    swap_in(str(src), str(out))


def _map(fn: Callable[[str], T], items: list[str]) -> list[T]:
    """``fn`` over ``items`` in order; in threads when there are several (I/O, GIL released)."""
    if len(items) < 2:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(_READERS, len(items))) as pool:
        return list(pool.map(fn, items))


class ShardStore:
    """Shards, tables, JSON documents and model folders of runs under one root.

    ``uri``: a folder (``runs``, ``/abs/path``, ``file:///abs/path``) or any ``pyarrow.fs``
    URI, e.g. ``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``. Thread
    safe; cheap to create, but workers keep one per URI.
    """

    def __init__(self, uri: str | os.PathLike[str]):
        self._b = open_backend(uri)

    @property
    def uri(self) -> str:
        """The URI to hand to other processes (a local folder: its absolute path)."""
        return self._b.uri

    @property
    def root(self) -> str:
        return self._b.root

    @property
    def local(self) -> bool:
        return self._b.local

    def __repr__(self) -> str:
        return f"ShardStore({self.uri!r})"

    # ---- shards ------------------------------------------------------------------------------
    def commit(self, run_id: str, cycle: int, kind: str, job_id: str, table: pa.Table) -> str:
        """Atomically write (or replace) the one shard of this job; returns where it went."""
        key = layout.shard_key(run_id, cycle, kind, job_id)
        self._b.write_bytes(key, _parquet(validate(kind, table)))
        return self._b.path(key)

    def has(self, run_id: str, cycle: int, kind: str, job_id: str) -> bool:
        return self._b.exists(layout.shard_key(run_id, cycle, kind, job_id))

    def list_jobs(self, run_id: str, cycle: int, kind: str) -> list[str]:
        """Ids of the committed jobs of that kind, sorted."""
        return layout.job_ids(self._b.names(layout.kind_key(run_id, cycle, kind)))

    def read_shard(self, run_id: str, cycle: int, kind: str, job_id: str) -> pa.Table:
        return self._read_parquet(layout.shard_key(run_id, cycle, kind, job_id), schema_of(kind))

    def read_kind(self, run_id: str, cycle: int, kind: str) -> pa.Table:
        """Every committed shard of that kind, in job id order."""
        folder = layout.kind_key(run_id, cycle, kind)
        keys = [f"{folder}/{job}{layout.SHARD_SUFFIX}" for job in self.list_jobs(run_id, cycle, kind)]
        schema = schema_of(kind)
        return _concat(_map(lambda key: self._read_parquet(key, schema), keys), schema)

    def cycles(self, run_id: str) -> list[int]:
        """The cycles that have a folder, ascending."""
        found = (layout.cycle_of(n) for n in self._b.names(layout.run_key(run_id)))
        return sorted(c for c in found if c is not None)

    def training_set(self, run_id: str, upto_cycle: int) -> pa.Table:
        """Generated examples of cycles 0..c in (cycle, job id, row) order, the first of each
        normalised text kept (see ``normalise_text``)."""
        last = layout.check_cycle(upto_cycle)
        tables = [self.read_kind(run_id, c, "generated") for c in range(last + 1)]
        return dedup_by_text(_concat(tables, EXAMPLES))

    def attributions(self, run_id: str, upto_cycle: int) -> pa.Table:
        """Attributions of cycles 0..c in (cycle, job id, row) order."""
        last = layout.check_cycle(upto_cycle)
        tables = [self.read_kind(run_id, c, "attributed") for c in range(last + 1)]
        return _concat(tables, ATTRIBUTIONS)

    def _read_parquet(self, key: str, schema: pa.Schema) -> pa.Table:
        data = self._b.read_bytes(key)
        if data is None:
            raise StorageError(f"nothing committed at {self._b.path(key)}")
        return _parse(data, schema, self._b.path(key))

    # ---- tables and JSON ---------------------------------------------------------------------
    def write_table(self, run_id: str, name: str, table: pa.Table) -> str:
        """``data/<name>.parquet`` (examples schema): val, test, pool."""
        key = layout.table_key(run_id, name)
        self._b.write_bytes(key, _parquet(conform(table, EXAMPLES, f"table {name!r}")))
        return self._b.path(key)

    def read_table(self, run_id: str, name: str) -> pa.Table:
        return self._read_parquet(layout.table_key(run_id, name), EXAMPLES)

    def has_table(self, run_id: str, name: str) -> bool:
        return self._b.exists(layout.table_key(run_id, name))

    def write_json(self, run_id: str, relpath: str, obj: Any) -> None:
        """Atomically write ``obj`` as JSON at ``<run_id>/<relpath>``."""
        key = layout.rel_key(run_id, relpath)
        try:
            data = json.dumps(obj, indent=1).encode()
        except (TypeError, ValueError) as exc:
            raise StorageError(f"{relpath} of run {run_id}: not JSON-serialisable: {exc}") from None
        self._b.write_bytes(key, data)

    def read_json(self, run_id: str, relpath: str, invalid_as_missing: bool = False) -> Any | None:
        """The JSON document at ``<run_id>/<relpath>``, or None if there is none (or, with
        ``invalid_as_missing``, if it is not valid JSON: for documents their reader rewrites)."""
        data = self._b.read_bytes(layout.rel_key(run_id, relpath))
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            if invalid_as_missing:
                return None
            raise StorageError(f"{relpath} of run {run_id} is not valid JSON: {exc}") from None

    def delete_json(self, run_id: str, relpath: str) -> None:
        """Remove the document at ``<run_id>/<relpath>`` (gone already: not an error)."""
        self._b.delete(layout.rel_key(run_id, relpath))

    def list_names(self, run_id: str, relpath: str) -> list[str]:
        """Names inside a folder of the run (e.g. ``cycle=1/failed``), sorted; [] if none."""
        return self._b.names(layout.rel_key(run_id, relpath))

    def list_runs(self) -> list[str]:
        """Runs that have a manifest, sorted."""
        return [n for n in self._b.names("")
                if layout.is_name(n) and self._b.exists(f"{n}/{paths.MANIFEST}")]

    # ---- folders (checkpoints, reports) ------------------------------------------------------
    def has_dir(self, run_id: str, relpath: str) -> bool:
        """True only once the folder's ``_COMMITTED`` marker is there."""
        return self._b.exists(f"{layout.rel_key(run_id, relpath)}/{MARKER}")

    def put_dir(self, local_dir: str | Path, run_id: str, relpath: str) -> str:
        """Upload a folder so that it is never seen half-written (the marker goes last);
        committing it again replaces it. Returns where it went."""
        key, src = layout.rel_key(run_id, relpath), Path(local_dir)
        if not src.is_dir():
            raise StorageError(f"{src} is not a folder")
        self._b.put_dir(src, key, f"{uuid.uuid4().hex}\n".encode())
        return self._b.path(key)

    def get_dir(self, run_id: str, relpath: str, local_dir: str | Path) -> bool:
        """Copy a committed folder to ``local_dir``, replacing what was there (the copy is made
        beside it and renamed into place). False if the folder is not committed."""
        key, out = layout.rel_key(run_id, relpath), Path(local_dir)
        for attempt in range(_GET_DIR_ATTEMPTS):
            token = self._b.read_bytes(f"{key}/{MARKER}")
            if token is None:
                return False
            if self._copy_if_unchanged(key, token, out):
                return True
            time.sleep(0.05 * (attempt + 1))  # a writer is replacing it; let it finish
        raise TransientError(f"{self._b.path(key)} kept changing while it was copied")

    def _copy_if_unchanged(self, key: str, token: bytes, out: Path) -> bool:
        """Copy into a temp folder beside ``out``; move it in if the marker did not change."""
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f"{layout.HIDDEN}tmp-{uuid.uuid4().hex[:16]}-{out.name}"
        try:
            self._b.copy_dir_out(key, tmp)
            if self._b.read_bytes(f"{key}/{MARKER}") != token:
                return False
            tmp.mkdir(exist_ok=True)  # an empty committed folder
            _move_into(tmp, out)
            return True
        except FolderChanged as exc:
            if self._b.read_bytes(f"{key}/{MARKER}") != token:
                return False  # it was re-committed while we copied: copy the new one
            # the folder is as it was: the copy failed for another reason (disk full, ...)
            raise StorageError(f"copying {self._b.path(key)} to {out} failed: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
