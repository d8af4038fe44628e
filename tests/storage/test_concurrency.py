"""Atomic, idempotent commits under concurrency: threads and processes commit overlapping job
ids while a reader polls; it must never see a torn shard, a mixed folder or a second shard for
one job id."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
from shard_tables import examples

from distillq.errors import StorageError, TransientError
from storage import ShardStore

N_JOBS = 25            # job ids j00..j24
N_COMMITS = 100        # each job id committed 4 times, each time with a different version
N_PROCS = 2            # 2 processes x 25 commits, 5 threads x 10 commits


def _version_table(job: str, version: int) -> pa.Table:
    """Version v of a job has 100 + 7v rows, each tagged "v<v>:<rows>" (so a torn or mixed
    shard shows), with ~100-character texts."""
    n = 100 + 7 * version
    return examples(job, n, texts=[f"{job} {version} {i} " + "t" * 90 for i in range(n)],
                    version=f"v{version}:{n}")


def _plan() -> list[tuple[str, int]]:
    return [(f"j{i % N_JOBS:02d}", i // N_JOBS) for i in range(N_COMMITS)]


def _commit_all(root: str, commits: list[tuple[str, int]], start: Any) -> None:
    store = ShardStore(root)
    start.wait(60)
    for job, version in commits:
        store.commit("r", 1, "generated", job, _version_table(job, version))


def _shard_problems(table: pa.Table) -> list[str]:
    problems = []
    for job in set(table.column("job_id").to_pylist()):
        rows = table.filter(pa.compute.equal(table.column("job_id"), job))
        tags = set(rows.column("prompt_id").to_pylist())
        if len(tags) != 1:
            problems.append(f"{job}: rows of several versions {sorted(tags)}")
        elif int(tags.pop().split(":")[1]) != rows.num_rows:
            problems.append(f"{job}: torn, {rows.num_rows} rows")
    ids = table.column("id").to_pylist()
    if len(ids) != len(set(ids)):
        problems.append("an example appears twice")
    return problems


def _poll(stop: threading.Event, check: Callable[[], list[str]]) -> tuple[int, list[str]]:
    reads, problems = 0, []
    while not stop.is_set():
        try:
            problems += check()
        except (StorageError, OSError) as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        reads += 1
    return reads, problems


def _check_shards(store: ShardStore) -> list[str]:
    names = store.list_jobs("r", 1, "generated")
    problems = [f"unexpected shard names {names}"] if not set(names) <= {
        f"j{i:02d}" for i in range(N_JOBS)} else []
    if len(names) != len(set(names)):
        problems.append(f"duplicate shard names {names}")
    return problems + _shard_problems(store.read_kind("r", 1, "generated"))


def test_concurrent_commits_are_atomic_and_idempotent(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    store = ShardStore(root)
    plan = _plan()
    ctx = mp.get_context("spawn")
    n_threads = 5
    start = ctx.Barrier(N_PROCS + n_threads + 1)
    procs = [ctx.Process(target=_commit_all, args=(root, plan[i::N_PROCS * 2], start))
             for i in range(N_PROCS)]
    for proc in procs:
        proc.start()
    thread_share = [c for i in range(N_PROCS, N_PROCS * 2) for c in plan[i::N_PROCS * 2]]
    stop = threading.Event()
    with ThreadPoolExecutor(n_threads + 1) as pool:
        reader = pool.submit(_poll, stop, lambda: _check_shards(store))
        writers = [pool.submit(_commit_all, root, thread_share[i::n_threads], start)
                   for i in range(n_threads)]
        start.wait(60)
        for writer in writers:
            writer.result()
        for proc in procs:
            proc.join(60)
        stop.set()
        reads, problems = reader.result()
    assert [proc.exitcode for proc in procs] == [0] * N_PROCS
    assert problems == []
    assert reads >= 3, "the reader must have polled while commits were landing"
    assert store.list_jobs("r", 1, "generated") == [f"j{i:02d}" for i in range(N_JOBS)]
    assert _shard_problems(store.read_kind("r", 1, "generated")) == []
    folder = tmp_path / "root" / "r" / "cycle=1" / "generated"
    assert sorted(os.listdir(folder)) == [f"j{i:02d}.parquet" for i in range(N_JOBS)]


def _recommit_dir(root: str, src: str, rounds: int, start: Any) -> None:
    store = ShardStore(root)
    start.wait(60)
    for _ in range(rounds):
        store.put_dir(src, "r", "cycle=1/student")


def _make_version(folder: Path, version: str, n_files: int) -> str:
    for i in range(n_files):
        (folder / f"part-{i}.bin").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"part-{i}.bin").write_bytes(version.encode() * 5000)
    (folder / "config.json").write_text(json.dumps({"version": version, "files": n_files}))
    return str(folder)


def _check_dir(store: ShardStore, out: Path) -> list[str]:
    if not store.has_dir("r", "cycle=1/student"):
        return []  # briefly absent while it is swapped: allowed, never partial
    for child in out.glob("*"):
        child.unlink()
    try:
        if not store.get_dir("r", "cycle=1/student", out):
            return []
    except TransientError:
        return []  # rewritten on every attempt: the caller retries later; never a mixed copy
    config = json.loads((out / "config.json").read_text())
    version, parts = config["version"].encode(), sorted(out.glob("part-*.bin"))
    if len(parts) != config["files"] or any(p.read_bytes() != version * 5000 for p in parts):
        return [f"mixed folder: {config} with {len(parts)} parts"]
    return []


def test_folders_are_never_seen_half_written_or_mixed(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    store = ShardStore(root)
    srcs = [_make_version(tmp_path / f"v{v}", f"v{v}", 3 + 2 * v) for v in range(3)]
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    proc = ctx.Process(target=_recommit_dir, args=(root, srcs[0], 15, start))
    proc.start()
    stop = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        reader = pool.submit(_poll, stop, lambda: _check_dir(store, tmp_path / "out"))
        writer = pool.submit(_recommit_dir, root, srcs[1], 8, start)
        start.wait(60)
        writer.result()
        proc.join(60)
        store.put_dir(srcs[2], "r", "cycle=1/student")
        stop.set()
        reads, problems = reader.result()
    assert proc.exitcode == 0
    assert problems == [] and reads >= 3
    assert _check_dir(store, tmp_path / "out") == []
    assert json.loads((tmp_path / "out" / "config.json").read_text())["version"] == "v2"
    assert sorted(os.listdir(tmp_path / "root" / "r" / "cycle=1")) == ["student"]
