"""``orchestrator export RUN DIR --onnx --int8``: a real cycle-0 student (a 1-layer MiniLM, 4
classes of the tests' corpus, 2 epochs) exported as ONNX fp32 and int8 with a model card; the
card's own ONNX Runtime snippet, run in a fresh process that never imports torch or
transformers, gives the PyTorch student's predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from manifestkit import decision
from training_kit import write_subset_csv

from distillq.manifest import save_manifest
from distillq.spec import parse_spec
from orchestrator.cli import main
from orchestrator.runs import create_run, load_manifest
from storage.store import ShardStore
from workers.training.cycle import evaluate_on_test, train_cycle

pytestmark = pytest.mark.slow

CLASSES, PER_CLASS = 4, 30
RUN = "onnx"


@pytest.fixture
def run(corpus: Path, tmp_path: Path) -> ShardStore:
    data = write_subset_csv(corpus, tmp_path / "data.csv", CLASSES, PER_CLASS)
    spec = parse_spec({
        "run_id": RUN, "storage": str(tmp_path / "store"),
        "dataset": {"train": str(data), "test": str(data), "seed_size": 80},
        "student": {"model": "builtin:minilm", "num_layers": 1, "max_length": 32,
                    "lr": 1e-3, "batch_size": 16, "epochs": 2, "device": "cpu"},
    })
    store = ShardStore(spec.storage)
    create_run(spec, store)
    train_cycle(spec, store, RUN, 0, tmp_path / "work")
    evaluate_on_test(spec, store, RUN, 0, tmp_path / "work")
    manifest = load_manifest(store, RUN)
    manifest.decide(decision(0, 0))
    manifest.stop_at(0, "max_cycles=0 reached")
    save_manifest(store, manifest)
    return store


def test_the_onnx_export_serves_without_torch_and_agrees_with_pytorch(
        run: ShardStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export"
    assert main(["export", RUN, str(out), "--storage", run.uri, "--onnx", "--int8"]) == 0
    said = capsys.readouterr().out
    assert "onnx int8:" in said and "ms per 64 texts" in said
    files = {p.name for p in out.iterdir()}
    assert {"README.md", "model.onnx", "model.int8.onnx", "config.json",
            "tokenizer.json"} <= files
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size / 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")], "no staging left"

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification")
    assert "**The teacher was simulated**" in card
    assert "| the labelled seed (training part) | 64 |" in card
    test = run.read_json(RUN, "test.json")
    assert f"| test | {test['n']} | {test['macro_f1']:.4f} |" in card
    assert "| onnx fp32 |" in card and "| onnx int8 |" in card and "| pytorch fp32 |" in card

    # the card's ONNX Runtime snippet, as a user would paste it, in a fresh process
    snippet = card.split("```python\n")[2].split("```")[0]
    texts = run.read_table(RUN, "test").column("text").to_pylist()[:100]
    assert snippet.rstrip().endswith('print(classify(["a text to classify"]))')  # batch of 1
    probe = (snippet + "\nimport sys\n"
             + f"print(json.dumps({{'labels': classify({texts!r}), "
             + "'heavy': [m for m in ('torch', 'transformers') if m in sys.modules]}))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=out, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []

    from workers.training.evaluate import Classifier

    clf = Classifier.load(out, "cpu")
    expected = [clf.labels[i] for i in clf.predict(texts).preds]
    agree = sum(a == b for a, b in zip(got["labels"], expected, strict=True)) / len(texts)
    assert agree >= 0.95, f"int8 agrees with PyTorch fp32 on {agree:.0%} only"
    from workers.training.onnx_export import OnnxStudent

    fp32 = OnnxStudent(out).probs(texts)
    assert abs(fp32 - clf.predict(texts).probs).max() < 1e-4, "fp32 ONNX is PyTorch's numbers"

