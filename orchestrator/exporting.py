"""``orchestrator export RUN DIR [--onnx [--int8]]``: a run's student, ready to serve.

The student folder (Hugging Face format: weights, tokenizer, label map) is copied beside
``DIR``; with ``--onnx`` the student is added as ONNX (``model.onnx``; with ``--int8`` also the
dynamically quantised ``model.int8.onnx``), checked against PyTorch on the run's test texts, and
timed; a model card (``README.md``, the Hugging Face card format) says what the student is: its
labels, the training data by source, the teacher (simulated or real), its validation and test
scores, the latency measured here and how to run it. Only then is the folder swapped into
``DIR`` whole: a program loading from ``DIR`` sees the old export or the new one, never a mix.
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from distillq import paths
from distillq.errors import InvalidInputError
from distillq.manifest import Manifest
from orchestrator.report import partly_simulated, sim_answers, teacher_line
from orchestrator.runs import simulated, spend
from storage.backends import swap_in
from storage.store import ShardStore

SOURCES = {"seed": "the labelled seed (training part)",
           "teacher": "written by the teacher (PGKD generation)",
           "pool": "texts of dataset.unlabelled labelled by the teacher"}


def export(store: ShardStore, manifest: Manifest, cycle: int, out: Path, onnx: bool,
           int8: bool) -> dict[str, Any]:
    """Export cycle ``cycle``'s student of the run to ``out`` (module docstring); what was
    written and measured."""
    # deferred: torch, transformers, onnxruntime are loaded only by an export
    from workers.training.cycle import export_student

    if onnx:
        _need_onnx()

    staging = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:12]}"
    try:
        export_student(store, manifest.run_id, cycle, staging)
        info: dict[str, Any] = {"cycle": cycle, "files": []}
        if onnx:
            info |= _onnx(store, manifest.run_id, staging, int8)
        (staging / "README.md").write_text(model_card(store, manifest, cycle, info))
        info["files"] = sorted(p.name for p in staging.iterdir())
        swap_in(str(staging), str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _need_onnx() -> None:
    """The exporter and the runtime, or an error that says how to install them."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidInputError(f"export --onnx needs {', '.join(missing)}: "
                                "pip install 'distillq[onnx]'")


def _onnx(store: ShardStore, run_id: str, folder: Path, int8: bool) -> dict[str, Any]:
    """ONNX files, their agreement with PyTorch on the run's test texts, their latency."""
    from workers.training import Classifier
    from workers.training.onnx_export import (
        ONNX_FP32,
        ONNX_INT8,
        OnnxStudent,
        export_onnx,
        machine_line,
        time_formats,
    )

    export_onnx(folder, int8=int8)
    split, texts = _check_texts(store, run_id)
    reference = Classifier.load(folder, "cpu").predict(texts).preds
    agreement = {}
    for name, file in (("onnx fp32", ONNX_FP32), ("onnx int8", ONNX_INT8)):
        if (folder / file).exists():
            got = OnnxStudent(folder, file).probs(texts).argmax(axis=1)
            agreement[name] = round(float((got == reference).mean()), 4)
    return {"agreement": agreement, "agreement_n": len(texts), "agreement_split": split,
            "latency_ms_per_64": time_formats(folder, texts), "machine": machine_line()}


def _check_texts(store: ShardStore, run_id: str, n: int = 512) -> tuple[str, list[str]]:
    """Up to ``n`` of the run's test texts (else validation texts) to check and time on, and
    which split they are from."""
    for name, split in (("test", "test"), ("val", "validation")):
        if store.has_table(run_id, name):
            texts = store.read_table(run_id, name).column("text").to_pylist()[:n]
            if texts:
                return split, list(texts)
    raise InvalidInputError(f"run {run_id} has no test or validation texts to check the "
                            "ONNX student on")


def model_card(store: ShardStore, manifest: Manifest, cycle: int, info: dict[str, Any]) -> str:
    """README.md of an export, in the Hugging Face model card format (YAML, then Markdown)."""
    spec = manifest.spec
    run_id = manifest.run_id
    labels = list(manifest.taxonomy)
    sources = Counter(store.training_set(run_id, cycle).column("source").to_pylist())
    val = store.read_json(run_id, paths.eval_report(cycle)) or {}
    test = store.read_json(run_id, paths.TEST_RESULT) or {}
    paid = spend(store, run_id, manifest.cycle)
    base = spec["student"]["model"]
    front = ["---", "library_name: transformers", "pipeline_tag: text-classification",
             "tags: [text-classification, distillation, distillq"
             + (", onnx" if "agreement" in info else "") + "]"]
    if base == "builtin:minilm":
        front.append("base_model: sentence-transformers/all-MiniLM-L6-v2")
    front += ["---", ""]
    lines = [f"# {run_id}: a distilled text classifier", "",
             f"The cycle {cycle} student of the distillq run `{run_id}`"
             + (" (the cycle the run kept by its validation score)."
                if manifest.final is not None and manifest.final.best_cycle == cycle else "."),
             f"Base model: `{base}`; it reads the first {_max_length(spec)} tokens of a text.", "",
             "## Teacher", "", f"{teacher_line(spec, paid)}."]
    by_sim, real = sim_answers(paid)
    if partly_simulated(spec, paid):
        lines += ["", f"**The teacher was partly simulated**: distillq's simulated teacher "
                  f"answered {by_sim:,} of the run's requests from a pool of real labelled "
                  f"examples, not as an LLM would; a real server answered {real:,}. The scores "
                  "below mix both."]
    elif simulated(spec, paid):
        lines += ["", "**The teacher was simulated**: its answers came from a pool of real "
                  "labelled examples, not from an LLM. The scores below show what the loop "
                  "does with a near-perfect teacher, not what a real LLM teacher would give."]
    lines += ["", "## Training data", "", "| source | rows |", "|---|---:|"]
    lines += [f"| {SOURCES.get(s, s)} | {n:,} |" for s, n in sorted(sources.items())]
    lines += [f"| validation (picks the epoch and the cycle) | {val.get('n', 0):,} |", "",
              "## Scores", "", "| split | texts | macro-F1 | accuracy |", "|---|---:|---:|---:|"]
    if val:
        lines.append(f"| validation | {val['n']:,} | {val['macro_f1']:.4f} | "
                     f"{val['accuracy']:.4f} |")
    if test.get("cycle") == cycle:
        lines.append(f"| test | {test['n']:,} | {test['macro_f1']:.4f} | {test['accuracy']:.4f} |")
    elif manifest.counts.get("test"):
        lines.append("| test | - | not measured for this cycle | |")
    else:
        lines.append("| test | - | the run had no test split | |")
    lines += _onnx_lines(info) + ["", "## Labels", "", ", ".join(f"`{x}`" for x in labels), ""]
    lines += _usage(info)
    return "\n".join(front + lines) + "\n"


def _max_length(spec: dict[str, Any]) -> int:
    return int(spec["student"].get("max_length", 64))


def _onnx_lines(info: dict[str, Any]) -> list[str]:
    if "agreement" not in info:
        return []
    lines = ["", "## Latency and ONNX", "",
             f"Milliseconds per batch of 64 texts, tokenising included (median; {info['machine']}"
             "); agreement: the share of "
             f"{info['agreement_n']} {info['agreement_split']} texts where the format predicts "
             "the same label as PyTorch fp32.", "", "| format | ms per 64 texts | agreement with PyTorch fp32 |",
             "|---|---:|---:|"]
    for name, ms in info["latency_ms_per_64"].items():
        agree = info["agreement"].get(name)
        lines.append(f"| {name} | {ms:.1f} | {'-' if agree is None else f'{agree:.4f}'} |")
    return lines


def _usage(info: dict[str, Any]) -> list[str]:
    lines = ["## Use", "", "```python", "from transformers import pipeline",
             "classify = pipeline('text-classification', model='.')  # this folder",
             "print(classify(['a text to classify']))", "```"]
    if "agreement" not in info:
        return lines
    onnx_file = "model.int8.onnx" if "onnx int8" in info["agreement"] else "model.onnx"
    return lines + ["", "With ONNX Runtime alone (`pip install onnxruntime tokenizers numpy`; "
                    "no torch):", "", "```python", ONNX_SNIPPET.format(file=onnx_file), "```"]


# Run as it stands by tests/training/test_export_onnx.py in a fresh process (no torch, no
# transformers).
ONNX_SNIPPET = """\
import json
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

folder = "."  # this folder
labels = json.load(open(f"{{folder}}/config.json"))["id2label"]
state = json.load(open(f"{{folder}}/training_state.json"))
tokenizer = Tokenizer.from_file(f"{{folder}}/tokenizer.json")
tokenizer.enable_truncation(state.get("max_length", 64))
tokenizer.enable_padding()
session = ort.InferenceSession(f"{{folder}}/{file}", providers=["CPUExecutionProvider"])


def classify(texts):
    enc = tokenizer.encode_batch(texts)
    feed = {{"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
            "token_type_ids": [e.type_ids for e in enc]}}
    inputs = {{i.name: np.array(feed[i.name], dtype=np.int64) for i in session.get_inputs()}}
    logits = session.run(["logits"], inputs)[0]
    return [labels[str(i)] for i in logits.argmax(axis=1)]


print(classify(["a text to classify"]))"""

