"""Nothing a caller passes can make the store read or write outside its root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from shard_tables import MakeExamples

from distillq.errors import InvalidInputError, StorageError
from storage import ShardStore

BAD_NAMES = ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "/abs", "x" * 200, "a..b",
             "with space", "nul\0", "ü", "-dash-first", "_COMMITTED", "a\\b/../c"]
BAD_RELPATHS = ["../x.json", "/etc/passwd", "a/../../b", ".hidden/x", "a//b", "a/./b", "",
                "a/", "..\\x", "C:\\x", "cycle=1/../../../../tmp/x"]


def _outside(tmp_path: Path) -> list[str]:
    return sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                  if not p.is_relative_to(tmp_path / "root"))


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_run_and_job_ids_are_refused(store: ShardStore, tmp_path: Path, bad: str,
                                         make_examples: MakeExamples) -> None:
    table = make_examples("j", 1)
    calls: list[Callable[[], Any]] = [
        lambda: store.commit(bad, 0, "generated", "j", table),
        lambda: store.commit("r", 0, "generated", bad, table),
        lambda: store.has("r", 0, "generated", bad),
        lambda: store.read_shard(bad, 0, "generated", "j"),
        lambda: store.list_jobs(bad, 0, "generated"),
        lambda: store.training_set(bad, 1),
        lambda: store.write_table("r", bad, table),
        lambda: store.read_table(bad, "val"),
        lambda: store.write_json(bad, "manifest.json", {}),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError, match="is not allowed"):
            call()
    assert not (tmp_path / "root").exists(), "nothing may be written"
    assert _outside(tmp_path) == [], "nor beside the root"


@pytest.mark.parametrize("bad", BAD_RELPATHS)
def test_relative_paths_that_would_escape_are_refused(store: ShardStore, tmp_path: Path,
                                                      bad: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    calls: list[Callable[[], Any]] = [
        lambda: store.write_json("r", bad, {}),
        lambda: store.read_json("r", bad),
        lambda: store.put_dir(tmp_path / "src", "r", bad),
        lambda: store.get_dir("r", bad, tmp_path / "out"),
        lambda: store.has_dir("r", bad),
        lambda: store.list_names("r", bad),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError):
            call()
    assert not (tmp_path / "root").exists()
    assert _outside(tmp_path) == ["src", "src/f"]


@pytest.mark.parametrize("cycle", [-1, "1", 1.5, None])
def test_bad_cycles_are_refused(store: ShardStore, cycle: Any, make_examples: MakeExamples) -> None:
    with pytest.raises(InvalidInputError, match="cycle"):
        store.commit("r", cycle, "generated", "j", make_examples("j", 1))


def test_unknown_kind_is_refused(store: ShardStore, make_examples: MakeExamples) -> None:
    with pytest.raises(StorageError, match="unknown shard kind"):
        store.commit("r", 0, "../generated", "j", make_examples("j", 1))
    with pytest.raises(StorageError, match="unknown shard kind"):
        store.list_jobs("r", 0, "student")


def test_bad_uris_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="storage location is empty"):
        ShardStore("")
    with pytest.raises(InvalidInputError, match="cannot be opened"):
        ShardStore("nosuchscheme://bucket/prefix")
    # a file system that is not an object store (it may show files while they are written)
    with pytest.raises(InvalidInputError, match="_MockFileSystem is not supported"):
        ShardStore("mock://bucket/prefix")
