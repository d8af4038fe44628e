"""The shard store on real files, under concurrency, and on a real local S3 server."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest

from storage import EXAMPLES, ShardStore, StorageError
from storage.errors import InvalidInputError
from storage.schemas import validate


def _examples(job: str, n: int, cycle: int = 1, texts: list[str] | None = None) -> pa.Table:
    texts = texts or [f"{job} example {i} " + "x" * 80 for i in range(n)]
    rows = {
        "id": [f"{job}-{i:04d}" for i in range(n)], "run_id": ["r"] * n, "cycle": [cycle] * n,
        "source": ["teacher"] * n, "label": [f"c{i % 3}" for i in range(n)], "text": texts,
        "job_id": [job] * n, "teacher_model": ["m"] * n, "prompt_id": ["p"] * n,
        "input_tokens": [10] * n, "output_tokens": [5] * n, "latency_s": [0.1] * n,
        "cost": [0.001] * n,
    }
    return pa.table(rows)


def test_schema_validation_names_the_column() -> None:
    with pytest.raises(StorageError, match=r"lacks column\(s\) \['text'\]"):
        validate("generated", _examples("j", 2).drop_columns(["text"]))
    bad = _examples("j", 2).set_column(2, "cycle", pa.array(["a", "b"]))
    with pytest.raises(StorageError, match="column 'cycle' is string"):
        validate("generated", bad)
    assert validate("generated", _examples("j", 2)).schema == EXAMPLES  # int64 → int32 cast


def test_commit_is_idempotent_per_job(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    store.commit("r", 1, "generated", "j1", _examples("j1", 3))
    store.commit("r", 1, "generated", "j1", _examples("j1", 5))
    assert store.list_jobs("r", 1, "generated") == ["j1"]
    assert store.read_shard("r", 1, "generated", "j1").num_rows == 5
    assert [p.name for p in (tmp_path / "r" / "cycle=1" / "generated").iterdir()] == ["j1.parquet"]


def test_training_set_orders_and_deduplicates(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    store.commit("r", 0, "generated", "seed", _examples("seed", 2, 0, ["Hello  World", "b"]))
    store.commit("r", 1, "generated", "j2", _examples("j2", 2, 1, ["hello world", "c"]))
    store.commit("r", 1, "generated", "j1", _examples("j1", 2, 1, ["B", "d"]))
    store.commit("r", 2, "generated", "j3", _examples("j3", 1, 2, ["e"]))
    got = store.training_set("r", 1)
    assert got.column("text").to_pylist() == ["Hello  World", "b", "d", "c"]
    assert got.column("id").to_pylist() == ["seed-0000", "seed-0001", "j1-0001", "j2-0001"]
    assert store.training_set("r", 2).num_rows == 5


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "", "x" * 200, "a\\b/../c"])
def test_ids_that_would_escape_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    store = ShardStore(str(tmp_path))
    with pytest.raises(InvalidInputError):
        store.commit(bad, 0, "generated", "j", _examples("j", 1))
    with pytest.raises(InvalidInputError):
        store.commit("r", 0, "generated", bad, _examples("j", 1))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "nothing may be written"


@pytest.mark.parametrize("bad", ["../x.json", "/etc/passwd", "a/../../b", ".hidden/x", "a//b"])
def test_relative_paths_that_would_escape_are_refused(tmp_path: Path, bad: str) -> None:
    store = ShardStore(str(tmp_path / "root"))
    with pytest.raises(InvalidInputError):
        store.write_json("r", bad, {})
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_json_and_folders_are_never_half_visible(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path / "root"))
    assert store.read_json("r", "manifest.json") is None
    store.write_json("r", "cycle=1/eval.json", {"f1": 0.5})
    assert store.read_json("r", "cycle=1/eval.json") == {"f1": 0.5}
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "sub").mkdir()
    (src / "sub" / "w.bin").write_bytes(b"\0" * 1000)
    assert not store.has_dir("r", "cycle=1/student")
    store.put_dir(src, "r", "cycle=1/student")
    assert store.has_dir("r", "cycle=1/student")
    (src / "config.json").write_text('{"v": 2}')
    store.put_dir(src, "r", "cycle=1/student")  # re-commit replaces cleanly
    out = tmp_path / "out"
    assert store.get_dir("r", "cycle=1/student", out)
    assert (out / "config.json").read_text() == '{"v": 2}'
    assert (out / "sub" / "w.bin").stat().st_size == 1000
    assert not (out / "_COMMITTED").exists()
    # a folder without its marker (an upload killed midway) is not committed
    half = tmp_path / "root" / "r" / "cycle=2" / "student"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    assert not store.has_dir("r", "cycle=2/student")
    assert not store.get_dir("r", "cycle=2/student", tmp_path / "out2")


def _commit_many(root: str, jobs: list[str], n_rows: int) -> None:
    store = ShardStore(root)
    for job in jobs:
        store.commit("r", 1, "generated", job, _examples(job, n_rows))


def test_reader_never_sees_a_torn_or_duplicate_shard(tmp_path: Path) -> None:
    """100 concurrent commits (threads and processes) of overlapping job ids, read throughout."""
    root = str(tmp_path)
    store = ShardStore(root)
    jobs = [f"j{i % 25:02d}" for i in range(100)]  # every job id committed 4 times
    stop, problems, reads = threading.Event(), [], [0]

    def reader() -> None:
        while not stop.is_set():
            names = store.list_jobs("r", 1, "generated")
            if len(names) != len(set(names)):
                problems.append(f"duplicate shard names {names}")
            try:
                table = store.read_kind("r", 1, "generated")
            except StorageError as exc:
                problems.append(str(exc))
                continue
            ids = table.column("id").to_pylist()
            if len(ids) != len(set(ids)):
                problems.append("duplicate rows")
            if table.num_rows % 200:
                problems.append(f"torn shard: {table.num_rows} rows")
            reads[0] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_commit_many, args=(root, jobs[i::4], 200)) for i in range(2)]
    for p in procs:
        p.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda j: _commit_many(root, [j], 200), jobs[2::4] + jobs[3::4]))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    time.sleep(0.2)
    stop.set()
    thread.join()
    assert problems == []
    assert reads[0] > 3
    assert store.list_jobs("r", 1, "generated") == sorted(set(jobs))
    assert not [n for n in os.listdir(tmp_path / "r" / "cycle=1" / "generated")
                if n.startswith(".tmp-")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_uri(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1") \
        .create_bucket(Bucket="distillq")
    yield f"s3://distillq/runs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    server.stop()


def test_s3_round_trip_against_a_real_local_server(s3_uri: str, tmp_path: Path) -> None:
    store = ShardStore(s3_uri)
    assert not store.local
    store.commit("r", 0, "generated", "seed", _examples("seed", 3, 0, ["a", "b", "c"]))
    store.commit("r", 1, "generated", "j1", _examples("j1", 2, 1, ["A", "d"]))
    store.commit("r", 1, "generated", "j1", _examples("j1", 2, 1, ["A", "d"]))
    assert store.list_jobs("r", 1, "generated") == ["j1"]
    assert store.training_set("r", 1).column("text").to_pylist() == ["a", "b", "c", "d"]
    store.write_json("r", "manifest.json", {"run_id": "r"})
    assert store.read_json("r", "manifest.json") == {"run_id": "r"}
    assert store.list_runs() == ["r"]
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "model.bin").write_bytes(b"weights")
    store.put_dir(src, "r", "cycle=1/student")
    assert store.has_dir("r", "cycle=1/student")
    assert store.get_dir("r", "cycle=1/student", tmp_path / "back")
    assert (tmp_path / "back" / "model.bin").read_bytes() == b"weights"
