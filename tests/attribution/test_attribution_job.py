"""The ``attribute`` queue's functions on real Parquet storage and the tiny saved teacher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from manifestkit import write_manifest

from distillq import paths
from distillq.errors import PermanentError, TransientError
from distillq.spec import RunSpec
from distillq.words import split_words
from storage.schemas import ATTRIBUTIONS, EXAMPLES
from storage.store import ShardStore
from workers.attribution import job

RUN = "run-attr"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    job.clear_teachers()
    yield
    job.clear_teachers()


def _spec(tiny, **attribution: object) -> RunSpec:
    fields = {"enabled": True, "model": str(tiny.folder), "finetune": False, "top_k": 2,
              "device": "cpu", "method": "integrated_gradients", "ig_steps": 4, **attribution}
    return RunSpec(dataset={"train": "unused.csv"}, attribution=fields)


def _examples(texts: list[str], labels: list[str], cycle: int = 1) -> pa.Table:
    n = len(texts)
    return pa.table({
        "id": [f"job-7-{i:04d}" for i in range(n)], "run_id": [RUN] * n, "cycle": [cycle] * n,
        "source": ["teacher"] * n, "label": labels, "text": texts, "job_id": ["job-7"] * n,
        "teacher_model": ["sim"] * n, "prompt_id": ["p"] * n, "input_tokens": [0] * n,
        "output_tokens": [0] * n, "latency_s": [0.0] * n, "cost": [0.0] * n,
    }, schema=EXAMPLES)


@pytest.fixture
def store(tmp_path: Path, tiny) -> ShardStore:
    s = ShardStore(tmp_path / "runs")
    write_manifest(s, RUN, taxonomy=list(tiny.teacher.labels))
    return s


def test_attribute_table_commits_one_row_per_example(tiny, store, tmp_path) -> None:
    spec = _spec(tiny)
    examples = _examples(tiny.texts[:6], tiny.labels[:6])
    table = job.attribute_table(spec, store, RUN, examples, tmp_path / "work")
    assert table.schema == ATTRIBUTIONS
    store.commit(RUN, 1, "attributed", "job-7", table)
    back = store.read_shard(RUN, 1, "attributed", "job-7").to_pylist()
    assert [r["example_id"] for r in back] == examples.column("id").to_pylist()
    for row, text, label in zip(back, tiny.texts, tiny.labels, strict=False):
        assert row["run_id"] == RUN and row["cycle"] == 1 and row["label"] == label
        assert row["method"] == "integrated_gradients"
        assert row["words"] == [w.text for w in split_words(text)]
        assert len(row["scores"]) == len(row["words"])
        assert set(row["rationale"]) <= set(row["words"]) and len(row["rationale"]) <= 2
    assert job.attribute_table(spec, store, RUN, examples.slice(0, 0), tmp_path).num_rows == 0


def test_the_teacher_is_loaded_once_per_process(tiny, store, tmp_path) -> None:
    spec = _spec(tiny)
    first = job.teacher_for(spec, store, RUN, tmp_path)
    assert job.teacher_for(spec, store, RUN, tmp_path) is first
    assert job.prepare_teacher(spec, store, RUN, tmp_path) == str(tiny.folder)  # used as it is


def test_quality_report_on_the_validation_split(tiny, store, tmp_path) -> None:
    store.write_table(RUN, "val", _examples(tiny.texts, tiny.labels, cycle=0))
    report = job.quality_report(_spec(tiny, method="saliency"), store, RUN, tmp_path,
                                limit=12, draws=2)
    assert report["examples"] == 12 and report["method"] == "saliency"
    assert report["deletion"]["n"] > 0 and report["label_overlap"]["n"] == 12


def test_missing_manifest_and_unprepared_teacher(tiny, tmp_path) -> None:
    empty = ShardStore(tmp_path / "empty")
    with pytest.raises(PermanentError, match="has no manifest"):
        job.teacher_for(_spec(tiny), empty, RUN, tmp_path)
    write_manifest(empty, RUN, taxonomy=list(tiny.teacher.labels))
    with pytest.raises(TransientError, match="not prepared"):
        job.teacher_for(_spec(tiny, finetune=True), empty, RUN, tmp_path)


def test_a_fine_tuned_teacher_is_committed_and_its_local_copies_removed(
    tiny, store, tmp_path
) -> None:
    half = len(tiny.texts) // 2
    store.commit(RUN, 0, "generated", "seed",
                 _examples(tiny.texts[:half], tiny.labels[:half], cycle=0))
    store.write_table(RUN, "val", _examples(tiny.texts[half:], tiny.labels[half:], cycle=0))
    spec = _spec(tiny, finetune=True, finetune_epochs=1)
    work = tmp_path / "work"
    assert job.prepare_teacher(spec, store, RUN, work) == f"{RUN}/teacher"
    assert store.has_dir(RUN, "teacher")
    assert not (work / "teacher-build").exists() and not (work / "teacher-epochs").exists()
    assert job.prepare_teacher(spec, store, RUN, work) == f"{RUN}/teacher"  # already there


def test_the_seed_attribute_task_measures_quality_for_a_ready_made_teacher(
    tiny, store, tmp_path, redis_url, monkeypatch
) -> None:
    """No prepare_teacher job runs for a teacher used as it is: the seed's attribute job
    writes the run's rationale-quality report (once), which the run report shows."""
    from workers import tasks
    from workers.app import configure

    configure(redis_url)
    monkeypatch.setenv("DISTILLQ_WORKDIR", str(tmp_path / "work"))
    spec = _spec(tiny, method="saliency")
    write_manifest(store, RUN, spec=spec.model_dump(mode="json"),
                   taxonomy=list(tiny.teacher.labels))
    store.commit(RUN, 0, "generated", "seed", _examples(tiny.texts[:8], tiny.labels[:8], 0))
    store.write_table(RUN, "val", _examples(tiny.texts, tiny.labels, cycle=0))
    result = tasks.attribute.apply(args=[RUN, 0, "seed", store.uri])
    assert result.successful(), result.result
    report = store.read_json(RUN, paths.ATTRIBUTION_QUALITY)
    assert report["method"] == "saliency" and report["deletion"]["n"] > 0


def test_the_faithfulness_benchmark_reads_a_runs_teacher_and_validation(
        tiny, store, tmp_path, capsys) -> None:
    """bench.attribution.faithfulness: every method at every k on a run's committed teacher;
    a run without a teacher or a validation split is refused by name."""
    import json

    from bench.attribution import faithfulness

    args = ["--storage", store.uri, "--run", RUN, "--limit", "8", "--k", "1,2", "--draws", "2",
            "--methods", "saliency", "attention", "--json", str(tmp_path / "f.json")]
    assert faithfulness.main(args) == 2
    assert "no validation split" in capsys.readouterr().err
    store.write_table(RUN, "val", _examples(tiny.texts, tiny.labels, cycle=0))
    assert faithfulness.main(args) == 2
    assert "has no fine-tuned teacher" in capsys.readouterr().err
    store.put_dir(tiny.folder, RUN, "teacher")
    assert faithfulness.main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")
            or line.startswith("| 2 |")]
    assert [r.split(" | ")[1] for r in rows] == ["saliency", "attention"] * 2
    got = json.loads((tmp_path / "f.json").read_text())
    assert got["texts"] == 8 and [(r["k"], r["method"]) for r in got["rows"]] == [
        (1, "saliency"), (1, "attention"), (2, "saliency"), (2, "attention")]
    for r in got["rows"]:
        assert r["deletion"]["n"] > 0 and r["deletion"]["k_mean"] <= r["k"]


def test_with_a_split_validation_the_teacher_stops_on_the_steering_part(
    tiny, store, tmp_path, monkeypatch
) -> None:
    """The teacher's rationales shape the student's data, so with dataset.steer_fraction its
    early stopping sees only the steering part, never the part that selects."""

    from workers.training.cycle import validation_parts

    half = len(tiny.texts) // 2
    store.commit(RUN, 0, "generated", "seed",
                 _examples(tiny.texts[:half], tiny.labels[:half], cycle=0))
    val = _examples(tiny.texts[half:], tiny.labels[half:], cycle=0)
    store.write_table(RUN, "val", val)
    seen: list[list[str]] = []

    def fake_train(cfg, data):  # records what early stopping would see, trains nothing
        seen.append(list(data.val_texts))
        raise RuntimeError("stop here")

    monkeypatch.setattr(job, "train", fake_train)  # the train() the teacher fine-tuning calls
    for fraction in (0.0, 0.5):
        spec = RunSpec(dataset={"train": "unused.csv", "steer_fraction": fraction,
                                "sample_seed": 4},
                       attribution=_spec(tiny, finetune=True).attribution)
        with pytest.raises(RuntimeError, match="stop here"):
            job.finetune_teacher(spec, store, RUN, tmp_path / "out", tmp_path / "ep")
    whole, steer = seen
    assert whole == val.column("text").to_pylist()
    _, steer_t = validation_parts(spec, val)
    assert steer_t is not None and steer == steer_t.column("text").to_pylist()
    assert 0 < len(steer) < len(whole)
