"""ShardStore on a real local folder: commits, reads, training set, JSON, folders."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_tables import MakeExamples

from distillq.errors import StorageError
from storage import EXAMPLES, ShardStore, normalise_text
from storage.dedup import normalised


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_commit_writes_the_documented_layout(store: ShardStore, tmp_path: Path,
                                             make_examples: MakeExamples) -> None:
    path = store.commit("r", 1, "generated", "c01-0003", make_examples("c01-0003", 4))
    assert path == str(tmp_path / "root" / "r" / "cycle=1" / "generated" / "c01-0003.parquet")
    on_disk = pq.read_table(path)
    assert on_disk.schema == EXAMPLES and on_disk.num_rows == 4
    assert store.has("r", 1, "generated", "c01-0003")
    assert not store.has("r", 1, "attributed", "c01-0003")
    assert store.uri == str(tmp_path / "root") and store.local


def test_committing_a_job_again_replaces_its_one_shard(store: ShardStore, tmp_path: Path,
                                                       make_examples: MakeExamples) -> None:
    store.commit("r", 1, "generated", "j1", make_examples("j1", 3))
    store.commit("r", 1, "generated", "j1", make_examples("j1", 5))
    store.commit("r", 1, "generated", "j1", make_examples("j1", 5))
    assert store.list_jobs("r", 1, "generated") == ["j1"]
    assert store.read_kind("r", 1, "generated").num_rows == 5
    assert store.read_shard("r", 1, "generated", "j1").num_rows == 5
    assert os.listdir(tmp_path / "root" / "r" / "cycle=1" / "generated") == ["j1.parquet"]


def test_jobs_are_listed_in_job_id_order_and_temp_files_are_ignored(
        store: ShardStore, tmp_path: Path, make_examples: MakeExamples) -> None:
    for job in ["j1-a", "j1", "j0"]:
        store.commit("r", 2, "generated", job, make_examples(job, 1))
    folder = tmp_path / "root" / "r" / "cycle=2" / "generated"
    (folder / ".tmp-0123-j9.parquet").write_bytes(b"PAR1 half a shard")  # a writer killed midway
    (folder / "notes.txt").write_text("not a shard")
    assert store.list_jobs("r", 2, "generated") == ["j0", "j1", "j1-a"]
    assert store.read_kind("r", 2, "generated").column("job_id").to_pylist() == ["j0", "j1", "j1-a"]


def test_reading_what_is_not_there_or_is_corrupt(store: ShardStore, tmp_path: Path) -> None:
    assert store.list_jobs("r", 0, "generated") == []
    assert store.read_kind("r", 0, "predictions").schema.names[-1] == "confidence"
    assert store.read_kind("r", 0, "predictions").num_rows == 0
    with pytest.raises(StorageError, match="nothing committed at .*cycle=0/generated/j.parquet"):
        store.read_shard("r", 0, "generated", "j")
    folder = tmp_path / "root" / "r" / "cycle=0" / "generated"
    folder.mkdir(parents=True)
    (folder / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(StorageError, match="bad.parquet is unreadable"):
        store.read_kind("r", 0, "generated")
    pq.write_table(pa.table({"id": ["x"]}), folder / "bad.parquet")
    with pytest.raises(StorageError, match=r"bad.parquet lacks column\(s\)"):
        store.read_shard("r", 0, "generated", "bad")


def test_training_set_orders_by_cycle_job_row_and_keeps_the_first_text(
        store: ShardStore, make_examples: MakeExamples) -> None:
    store.commit("r", 0, "generated", "seed", make_examples("seed", cycle=0,
                                                            texts=["Hello  World", "b"]))
    store.commit("r", 1, "generated", "j2", make_examples("j2", texts=[" hello world\t", "c"]))
    store.commit("r", 1, "generated", "j1", make_examples("j1", texts=["B", "d", "D "]))
    store.commit("r", 3, "generated", "j3", make_examples("j3", cycle=3, texts=["e", "ｄ"]))
    got = store.training_set("r", 1)
    assert got.column("text").to_pylist() == ["Hello  World", "b", "d", "c"]
    assert got.column("id").to_pylist() == ["seed-0000", "seed-0001", "j1-0001", "j2-0001"]
    assert got.schema == EXAMPLES
    # cycle 2 has nothing; cycle 3's "ｄ" (full-width) is "d" after NFKC
    assert store.training_set("r", 3).column("text").to_pylist() == [
        "Hello  World", "b", "d", "c", "e"]
    assert store.training_set("r", 0).num_rows == 2
    assert store.training_set("other", 5).num_rows == 0


def test_attributions_of_cycles_up_to_c(store: ShardStore) -> None:
    def rows(cycle: int, ex: str) -> pa.Table:
        return pa.table({"example_id": [ex], "run_id": ["r"], "cycle": [cycle], "label": ["a"],
                         "method": ["saliency"], "words": [["w"]], "scores": [[1.0]],
                         "rationale": [["w"]]})
    store.commit("r", 0, "attributed", "seed", rows(0, "seed-0000"))
    store.commit("r", 1, "attributed", "j1", rows(1, "j1-0000"))
    store.commit("r", 2, "attributed", "j2", rows(2, "j2-0000"))
    assert store.attributions("r", 1).column("example_id").to_pylist() == ["seed-0000", "j1-0000"]


@pytest.mark.parametrize("text", [
    "", " ", "Straße", "STRASSE", "ﬁne ﬂow", "Ｆｕｌｌ　Ｗｉｄｔｈ", "a\u00a0b", "a\u2003\u2003b",
    "x\x1cy", "tab\tand\nnewline", "ΣΊΣΥΦΟΣ", "σίσυφος", "  lead", "trail  ", "e\u0301",
    "\u00e9", "Ǆ", "İstanbul", "plain words", "Plain Words",
])
def test_vectorised_keys_agree_with_normalise_text(text: str) -> None:
    assert normalised(pa.array([text, None])).to_pylist() == [normalise_text(text), ""]


def test_vectorised_keys_agree_on_random_text() -> None:
    rng = random.Random(7)
    alphabet = "aAbB zZ\t\n\x0b\x1f\u00a0\u3000ßﬁＡé\u0301Σς"
    texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(3000)]
    assert normalised(pa.chunked_array([texts[:1000], texts[1000:]])).to_pylist() == [
        normalise_text(t) for t in texts]


def test_tables_and_json(store: ShardStore, tmp_path: Path, make_examples: MakeExamples) -> None:
    store.write_table("r", "val", make_examples("val", 2))
    assert store.read_table("r", "val").schema == EXAMPLES
    with pytest.raises(StorageError, match="no|nothing"):
        store.read_table("r", "test")
    assert store.read_json("r", "manifest.json") is None
    store.write_json("r", "cycle=1/eval.json", {"macro_f1": 0.5, "per_class": {"a": [1, 2]}})
    assert store.read_json("r", "cycle=1/eval.json") == {"macro_f1": 0.5, "per_class": {"a": [1, 2]}}
    store.write_json("r", "cycle=1/eval.json", {"macro_f1": 0.6})
    assert store.read_json("r", "cycle=1/eval.json") == {"macro_f1": 0.6}
    assert _files(tmp_path / "root" / "r" / "cycle=1") == ["eval.json"]  # no temp file left
    store.delete_json("r", "cycle=1/eval.json")
    store.delete_json("r", "cycle=1/eval.json")  # gone already: not an error
    assert store.read_json("r", "cycle=1/eval.json") is None
    store.write_json("r", "cycle=1/eval.json", {"macro_f1": 0.6})
    with pytest.raises(StorageError, match="not JSON-serialisable"):
        store.write_json("r", "x.json", {"a": object()})
    (tmp_path / "root" / "r" / "broken.json").write_text("{")
    with pytest.raises(StorageError, match="broken.json of run r is not valid JSON"):
        store.read_json("r", "broken.json")


def test_list_runs_and_names(store: ShardStore) -> None:
    assert store.list_runs() == []
    store.write_json("b-run", "manifest.json", {})
    store.write_json("a-run", "manifest.json", {})
    store.write_json("half", "cycle=0/plan.json", {})  # being created: no manifest yet
    assert store.list_runs() == ["a-run", "b-run"]
    store.write_json("a-run", "cycle=1/failed/generate-j2.json", {})
    store.write_json("a-run", "cycle=1/failed/generate-j1.json", {})
    assert store.list_names("a-run", "cycle=1/failed") == ["generate-j1.json", "generate-j2.json"]
    assert store.list_names("a-run", "cycle=9/failed") == []
    assert store.cycles("a-run") == [1]


def _checkpoint(folder: Path, version: str, extra: bool = False) -> Path:
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"version": version}))
    (folder / "sub" / "weights.bin").write_bytes(version.encode() * 1000)
    if extra:
        (folder / "only-in-v1.txt").write_text("stale")
    return folder


def test_put_dir_get_dir_has_dir(store: ShardStore, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert not store.has_dir("r", "cycle=1/student")
    assert not store.get_dir("r", "cycle=1/student", tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    store.put_dir(_checkpoint(tmp_path / "v1", "v1", extra=True), "r", "cycle=1/student")
    assert store.has_dir("r", "cycle=1/student")
    assert _files(root / "r" / "cycle=1" / "student") == [
        "_COMMITTED", "config.json", "only-in-v1.txt", "sub/weights.bin"]
    # re-commit replaces cleanly: the stale file goes, nothing is left beside the folder
    store.put_dir(_checkpoint(tmp_path / "v2", "v2"), "r", "cycle=1/student")
    assert _files(root / "r" / "cycle=1") == [
        "student/_COMMITTED", "student/config.json", "student/sub/weights.bin"]
    out = tmp_path / "out"
    assert store.get_dir("r", "cycle=1/student", out)
    assert _files(out) == ["config.json", "sub/weights.bin"]
    assert json.loads((out / "config.json").read_text()) == {"version": "v2"}
    assert (out / "sub" / "weights.bin").read_bytes() == b"v2" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "root", "v1", "v2"]


def test_a_half_written_folder_is_not_visible(store: ShardStore, tmp_path: Path) -> None:
    half = tmp_path / "root" / "r" / "cycle=2" / "student"
    _checkpoint(half, "half")  # e.g. copied by hand, or an upload killed before its marker
    assert not store.has_dir("r", "cycle=2/student")
    assert not store.get_dir("r", "cycle=2/student", tmp_path / "out")
    # a put_dir killed midway leaves only a hidden temp folder, which nobody lists
    _checkpoint(tmp_path / "root" / "r" / "cycle=3" / ".tmp-0123-student", "killed")
    assert store.list_names("r", "cycle=3") == []
    assert not store.has_dir("r", "cycle=3/student")
    # committing over the half-written folder replaces it
    store.put_dir(_checkpoint(tmp_path / "good", "good"), "r", "cycle=2/student")
    assert store.has_dir("r", "cycle=2/student")
    assert json.loads((half / "config.json").read_text()) == {"version": "good"}


def test_put_dir_of_a_file_is_refused(store: ShardStore, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="is not a folder"):
        store.put_dir(tmp_path / "f", "r", "student")


def test_file_uri_and_relative_paths_open_the_same_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          make_examples: MakeExamples) -> None:
    ShardStore(f"file://{tmp_path}/root").commit("r", 0, "generated", "seed",
                                                 make_examples("seed", 2))
    monkeypatch.chdir(tmp_path)
    assert ShardStore("root").list_jobs("r", 0, "generated") == ["seed"]
    assert ShardStore("root").uri == str(tmp_path / "root")


def test_get_dir_replaces_what_the_target_held(store: ShardStore, tmp_path: Path) -> None:
    store.put_dir(_checkpoint(tmp_path / "v1", "v1"), "r", "cycle=1/student")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "stale.txt").write_text("from an older copy")
    (out / "sub" / "weights.bin").write_text("old weights")
    assert store.get_dir("r", "cycle=1/student", out)
    assert _files(out) == ["config.json", "sub/weights.bin"], "no mix of old and new"
    assert json.loads((out / "config.json").read_text()) == {"version": "v1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "root", "v1"]


def test_a_copy_that_fails_with_the_folder_unchanged_names_the_failure(
        store: ShardStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not retried as "the folder kept changing": e.g. the target's disk is full."""
    from storage.backends import FolderChanged

    store.put_dir(_checkpoint(tmp_path / "v1", "v1"), "r", "cycle=1/student")

    def fail(key: str, dest: Path) -> None:
        raise FolderChanged("[Errno 28] No space left on device")

    monkeypatch.setattr(store._b, "copy_dir_out", fail)
    with pytest.raises(StorageError, match="No space left on device") as err:
        store.get_dir("r", "cycle=1/student", tmp_path / "out")
    assert "failed" in str(err.value) and not (tmp_path / "out").exists()
