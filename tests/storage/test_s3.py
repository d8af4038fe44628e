"""The store on S3: a real S3 API served by moto on 127.0.0.1, spoken to by pyarrow's S3
client through the URI form users write."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from shard_tables import examples

from distillq.errors import InvalidInputError, StorageError
from storage import ShardStore

BUCKET = "distillq-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, Any]]:
    """(endpoint, boto3 client) of a fresh local S3 server with one bucket."""
    import boto3  # test extras that scripts/setup installs: never skipped
    import moto.server as moto_server
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_EC2_METADATA_DISABLED": "true"}.items():
            env.setenv(key, value)
        port = _free_port()
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        endpoint = f"127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=f"http://{endpoint}")
        client.create_bucket(Bucket=BUCKET)
        try:
            yield endpoint, client
        finally:
            server.stop()


@pytest.fixture
def s3_store(s3: tuple[str, Any], request: pytest.FixtureRequest) -> ShardStore:
    """A store under a prefix of its own (the test's name)."""
    endpoint, _ = s3
    prefix = request.node.name.replace("[", "-").replace("]", "")
    return ShardStore(f"s3://{BUCKET}/{prefix}?endpoint_override={endpoint}&scheme=http")


def _keys(client: Any, prefix: str = "") -> list[str]:
    """Object keys under ``prefix/`` (the whole bucket for ""), without the prefix."""
    start = f"{prefix}/" if prefix else ""
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=start)
    return sorted(o["Key"][len(start):] for o in listing.get("Contents", [])
                  if not o["Key"].endswith("/"))


def test_shards_round_trip(s3_store: ShardStore, s3: tuple[str, Any]) -> None:
    assert not s3_store.local and s3_store.uri.startswith(f"s3://{BUCKET}/")
    s3_store.commit("r", 0, "generated", "seed", examples("seed", cycle=0, texts=["a", "b", "c"]))
    s3_store.commit("r", 1, "generated", "j2", examples("j2", texts=["e", "A "]))
    for rows in (["x"], ["B", "d"]):  # the second commit of j1 replaces the first
        s3_store.commit("r", 1, "generated", "j1", examples("j1", texts=rows))
    assert s3_store.list_jobs("r", 1, "generated") == ["j1", "j2"]
    assert s3_store.has("r", 1, "generated", "j1") and not s3_store.has("r", 1, "generated", "j3")
    assert s3_store.read_shard("r", 1, "generated", "j1").column("text").to_pylist() == ["B", "d"]
    assert s3_store.read_kind("r", 1, "generated").num_rows == 4
    assert s3_store.training_set("r", 1).column("text").to_pylist() == ["a", "b", "c", "d", "e"]
    assert _keys(s3[1], "test_shards_round_trip") == [
        "r/cycle=0/generated/seed.parquet", "r/cycle=1/generated/j1.parquet",
        "r/cycle=1/generated/j2.parquet"]
    with pytest.raises(StorageError, match="nothing committed"):
        s3_store.read_shard("r", 1, "generated", "j3")


def test_concurrent_commits_of_one_job_leave_one_shard(s3_store: ShardStore,
                                                       s3: tuple[str, Any]) -> None:
    def commit(version: int) -> None:
        s3_store.commit("r", 1, "generated", "j", examples("j", 50 + version, version=f"v{version}"))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(commit, range(16)))
    table = s3_store.read_shard("r", 1, "generated", "j")
    assert len(set(table.column("prompt_id").to_pylist())) == 1
    assert table.num_rows == 50 + int(table.column("prompt_id")[0].as_py()[1:])
    assert _keys(s3[1], "test_concurrent_commits_of_one_job_leave_one_shard") == [
        "r/cycle=1/generated/j.parquet"]


def test_json_tables_and_runs(s3_store: ShardStore) -> None:
    assert s3_store.read_json("r", "manifest.json") is None
    assert s3_store.list_runs() == []
    s3_store.write_json("r", "manifest.json", {"run_id": "r"})
    s3_store.write_json("r", "cycle=1/failed/generate-j1.json", {"error": "x"})
    s3_store.write_table("r", "val", examples("val", 2))
    assert s3_store.read_json("r", "manifest.json") == {"run_id": "r"}
    # the same store opened through a URI that also names the region
    with_region = ShardStore(f"{s3_store.uri}&region=us-east-1")
    assert with_region.read_json("r", "manifest.json") == {"run_id": "r"}
    assert s3_store.read_table("r", "val").num_rows == 2
    assert s3_store.list_runs() == ["r"]
    assert s3_store.list_names("r", "cycle=1/failed") == ["generate-j1.json"]
    assert s3_store.cycles("r") == [1]
    s3_store.delete_json("r", "cycle=1/failed/generate-j1.json")
    s3_store.delete_json("r", "cycle=1/failed/generate-j1.json")  # gone already: no error
    assert s3_store.list_names("r", "cycle=1/failed") == []


def test_folders_round_trip_and_recommit_cleanly(s3_store: ShardStore, s3: tuple[str, Any],
                                                 tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"v": 1}))
    (src / "stale.bin").write_bytes(b"old")
    (src / "sub" / "model.bin").write_bytes(b"w" * 3_000_000)  # streamed in chunks
    assert not s3_store.has_dir("r", "cycle=1/student")
    s3_store.put_dir(src, "r", "cycle=1/student")
    assert s3_store.has_dir("r", "cycle=1/student")
    (src / "stale.bin").unlink()
    (src / "config.json").write_text(json.dumps({"v": 2}))
    s3_store.put_dir(src, "r", "cycle=1/student")
    prefix = "test_folders_round_trip_and_recommit_cleanly/r/cycle=1/student"
    assert _keys(s3[1], prefix) == ["_COMMITTED", "config.json", "sub/model.bin"]
    out = tmp_path / "back"
    assert s3_store.get_dir("r", "cycle=1/student", out)
    assert json.loads((out / "config.json").read_text()) == {"v": 2}
    assert (out / "sub" / "model.bin").read_bytes() == b"w" * 3_000_000
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "sub"]


def test_a_folder_without_its_marker_is_not_visible(s3_store: ShardStore, s3: tuple[str, Any],
                                                    tmp_path: Path) -> None:
    prefix = "test_a_folder_without_its_marker_is_not_visible"
    s3[1].put_object(Bucket=BUCKET, Key=f"{prefix}/r/cycle=2/student/config.json", Body=b"{}")
    assert not s3_store.has_dir("r", "cycle=2/student")
    assert not s3_store.get_dir("r", "cycle=2/student", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_escapes_are_refused_before_any_request(s3_store: ShardStore, s3: tuple[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        s3_store.write_json("r", "../../other-prefix/x.json", {})
    with pytest.raises(InvalidInputError):
        s3_store.commit("..", 0, "generated", "j", examples("j", 1))
    assert _keys(s3[1], "test_escapes_are_refused_before_any_request") == []
    assert not [k for k in _keys(s3[1]) if k.startswith("other-prefix")]


def test_a_missing_bucket_is_an_error(s3: tuple[str, Any]) -> None:
    store = ShardStore(f"s3://no-such-bucket/p?endpoint_override={s3[0]}&scheme=http")
    assert store.read_json("r", "manifest.json") is None
    with pytest.raises(StorageError, match="no-such-bucket"):
        store.write_json("r", "manifest.json", {})


def test_the_report_of_a_run_on_s3_says_where_it_is(s3_store: ShardStore, s3: tuple[str, Any],
                                                      tmp_path: Path) -> None:
    from distillq.spec import parse_spec
    from orchestrator.report import write_report
    from orchestrator.runs import create_run

    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"example {i} of {c},{c}\n" for c in "ab"
                                              for i in range(10)))
    spec = parse_spec({"run_id": "rep", "storage": s3_store.uri,
                       "dataset": {"train": str(train), "seed_size": 10}})
    create_run(spec, s3_store)
    where = write_report(s3_store, "rep")
    prefix = s3_store.uri.split("?")[0]
    assert where == f"{prefix}/rep/report/report.md", "no endpoint query in the middle"
    _, client = s3
    assert "# " in client.get_object(Bucket=BUCKET, Key=where[len("s3://" + BUCKET) + 1:])[
        "Body"].read().decode()
