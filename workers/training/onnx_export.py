"""The student as ONNX, for serving on CPU with ONNX Runtime (``orchestrator export --onnx``).

``export_onnx(folder)`` writes ``model.onnx`` (fp32, one file, batch and sequence length
dynamic) beside a saved student — traced with ``torch.export`` (the TorchScript tracer bakes the
padding of its example into the attention mask and drifts by up to 0.04 in the logits) — and,
with ``int8``, ``model.int8.onnx``: ONNX Runtime's dynamic quantisation (weights int8 with a
scale per output channel, activations quantised on the fly; no calibration data). ``OnnxStudent`` runs either with
onnxruntime and the ``tokenizers`` library, as a server would (no torch). ``time_formats``
measures PyTorch fp32 and the ONNX files side by side, interleaved, in milliseconds per batch
of 64 texts.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from workers.training.config import STATE_FILE  # the student's settings (max_length)

log = logging.getLogger(__name__)

ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"


def export_onnx(folder: Path, int8: bool = False) -> dict[str, Path]:
    """Write ``model.onnx`` (and ``model.int8.onnx``) into the student folder ``folder``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sample = tokenizer(["a short text", "a longer text, so that the first one is padded"],
                       padding=True, return_tensors="pt")
    batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
    out = {"fp32": folder / ONNX_FP32}
    torch.onnx.export(model, (), str(out["fp32"]), kwargs=dict(sample),
                      input_names=list(sample.keys()), output_names=["logits"],
                      dynamic_shapes={k: {0: batch, 1: length} for k in sample},
                      dynamo=True, external_data=False, verbose=False)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out["int8"] = folder / ONNX_INT8
        # per channel: a scale per output row of each weight matrix, not one per matrix; on a
        # Banking77 student it agreed with PyTorch on 98.4 % of 1,000 training texts, per
        # tensor on 96.3 % (test texts not used to choose)
        root = logging.getLogger()  # the quantiser logs a line per tensor on the root logger
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(out["fp32"]), str(out["int8"]), weight_type=QuantType.QInt8,
                             per_channel=True)
        finally:
            root.setLevel(level)
    return out


class OnnxStudent:
    """An exported student run by onnxruntime: ``OnnxStudent(folder).probs(texts)``."""

    def __init__(self, folder: Path, file: str = ONNX_FP32, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        config = json.loads((folder / "config.json").read_text())
        self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        state = folder / STATE_FILE
        max_length = int(json.loads(state.read_text()).get("max_length", 64)
                         if state.exists() else 64)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / file), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def probs(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(list(texts[start:start + batch_size]))
            feed = {"input_ids": [e.ids for e in enc], "attention_mask":
                    [e.attention_mask for e in enc], "token_type_ids": [e.type_ids for e in enc]}
            logits = self.session.run(["logits"], {k: np.array(feed[k], dtype=np.int64)
                                                   for k in self.inputs})[0]
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            out.append(z / z.sum(axis=1, keepdims=True))
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))


def time_formats(folder: Path, texts: Sequence[str], runs: int = 15,
                 warmup: int = 2) -> dict[str, float]:
    """Milliseconds per batch of 64 ``texts`` (tokenising included), median of ``runs``, for
    PyTorch fp32 and each ONNX file in ``folder``; the formats take turns, so a busy machine
    slows them alike."""
    from workers.training.evaluate import Classifier  # deferred: torch, transformers

    batch = list(texts[:64])
    clf = Classifier.load(folder, "cpu")
    run: dict[str, Callable[[], Any]] = {"pytorch fp32": lambda: clf.predict(batch)}
    for name, file in (("onnx fp32", ONNX_FP32), ("onnx int8", ONNX_INT8)):
        if (folder / file).exists():
            run[name] = partial(OnnxStudent(folder, file).probs, batch)
    times: dict[str, list[float]] = {name: [] for name in run}
    for i in range(warmup + runs):
        for name, fn in run.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: round(statistics.median(ms), 2) for name, ms in times.items()}


def machine_line() -> str:
    """The CPU (its model name), cores, and the torch and onnxruntime versions and threads,
    for latency figures."""
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}")
