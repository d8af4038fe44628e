"""PGKD prompts: what the teacher is told about the student, and what it must return.

A prompt carries (PGKD section 3): the label taxonomy, a few labelled examples, the student's
validation report, the correct / misclassified / hard-negative examples (16 each by
default), and how many new examples to return as strict JSON
(``{"examples": [{"text": ..., "label": ...}]}``). Three modes, as planned by the
controller (``job["mode"]``):

- ``sharded``: the job targets one class or a confused pair; the report shows the targets'
  lines and the worst classes, and the mined examples are the targets' own.
- ``single``: the paper's single prompt: the whole report (as much as fits in
  ``report_token_budget``), any classes.
- ``unguided``: no report, no mined examples: taxonomy, few-shot and the count only.

The format is plain Markdown with one JSON object per example line, so a real LLM reads it
easily and the simulated teacher (``sim``) can parse the very same prompt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distillq.spec import GenerationSpec, RunSpec

SYSTEM = (
    "You write new labelled training examples for a text classifier. You study how the "
    "current student model performs and write examples that teach it what it gets wrong. "
    "You answer with a single JSON object and nothing else."
)

H_TASK = "## Task"
H_TAXONOMY = "## Label taxonomy"
H_REPORT = "## Validation report of the student"
H_FEWSHOT = "## Labelled examples"
H_CORRECT = "## Examples the student classifies correctly"
H_MISCLASSIFIED = "## Examples the student misclassifies"
H_HARD = "## Hard negatives (misclassified with high confidence)"
H_OUTPUT = "## Output"
TARGETS = "Target labels: "   # followed by a JSON list ([] = any label)
COUNT = "Number of examples: "
BATCH = "Batch: "
MAX_CHARS = "Longest text (characters): "
WORST_CLASSES = 5


@dataclass(frozen=True)
class Prompt:
    """One request's messages, what it asks for, and the texts it shows (not to be copied)."""

    messages: list[dict[str, str]]
    n: int
    target_labels: tuple[str, ...]
    shown_texts: tuple[str, ...]
    part: int = 0  # request ``part`` of the job's ``parts``
    parts: int = 1


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _example_line(item: Mapping[str, Any], limit: int, with_pred: bool) -> str:
    obj: dict[str, Any] = {"text": _clip(item.get("text", ""), limit), "label": item.get("label")}
    if with_pred and "pred" in item:
        obj["predicted"] = item["pred"]
        if "confidence" in item:
            obj["confidence"] = round(float(item["confidence"]), 3)
    return "- " + json.dumps(obj, ensure_ascii=False)


def _class_line(label: str, m: Mapping[str, Any]) -> str:
    return (f"| {label} | {float(m.get('precision', 0)):.3f} | {float(m.get('recall', 0)):.3f} "
            f"| {float(m.get('f1', 0)):.3f} | {int(m.get('support', 0))} |")


def report_lines(report: Mapping[str, Any], confusions: list[Any], targets: tuple[str, ...],
                 budget_tokens: int, whole: bool) -> list[str]:
    """Targets' lines, then the worst classes (all classes if ``whole``), within the budget."""
    head = [f"{k}: {float(report[k]):.4f}" for k in ("accuracy", "macro_f1", "weighted_f1")
            if k in report]
    lines = [*head, "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    per_class: Mapping[str, Any] = report.get("per_class", {}) or {}
    worst = sorted(per_class, key=lambda c: (float(per_class[c].get("f1", 0)), c))
    order = [c for c in targets if c in per_class]
    order += [c for c in worst if c not in order][: None if whole else WORST_CLASSES]
    budget = budget_tokens * 4 - sum(len(x) + 1 for x in lines)
    for shown, label in enumerate(order):
        line = _class_line(label, per_class[label])
        if len(line) + 1 > budget:
            lines.append(f"({len(order) - shown} more classes not shown)")
            break
        budget -= len(line) + 1
        lines.append(line)
    conf = [f"- true {t!r} predicted as {p!r}: {n}" for t, p, n in confusions[:10]]
    if conf and budget - sum(len(x) + 1 for x in conf) > 0:
        lines += ["", "Most frequent confusions:", *conf]
    return lines


def _task_lines(targets: tuple[str, ...], n: int, part: int, parts: int) -> list[str]:
    if len(targets) == 1:
        ask = f'Every example must have the label "{targets[0]}".'
    elif targets:
        names = " and ".join(f'"{t}"' for t in targets)
        ask = (f"Write examples of {names}, about evenly split, that the student confuses "
               "today: make the difference between these labels clear.")
    else:
        ask = "Use any labels of the taxonomy; favour the classes where the student is weakest."
    return [H_TASK, f"Write {n} new, realistic and varied examples for the classifier. {ask}",
            TARGETS + json.dumps(list(targets), ensure_ascii=False), COUNT + str(n),
            BATCH + f"{part + 1} of {parts}"]


def _taxonomy_lines(taxonomy: list[str], descriptions: Mapping[str, str]) -> list[str]:
    out = [H_TAXONOMY]
    for label in taxonomy:
        desc = descriptions.get(label)
        out.append(f"- {json.dumps(label, ensure_ascii=False)}" + (f": {desc}" if desc else ""))
    return out


def _section(title: str, items: list[Any], n: int, limit: int, with_pred: bool) -> list[str]:
    items = list(items)[:n]
    if not items:
        return []
    return ["", title, *(_example_line(x, limit, with_pred) for x in items)]


def _output_lines(n: int, max_chars: int) -> list[str]:
    return [
        "", H_OUTPUT,
        f"Return exactly {n} new examples as one JSON object and nothing else:",
        '{"examples": [{"text": "...", "label": "..."}]}',
        "Each label must be one of the taxonomy's labels, spelled exactly. Do not copy or "
        "lightly edit the examples shown above; write new ones.",
        f"{MAX_CHARS}{max_chars}",
    ]


def build_prompt(job: Mapping[str, Any], taxonomy: list[str], gen: GenerationSpec, *,
                 n: int | None = None, part: int = 0, parts: int = 1,
                 descriptions: Mapping[str, str] | None = None) -> Prompt:
    """The messages of one request of ``job`` (request ``part`` of ``parts``)."""
    mode = job.get("mode", gen.mode)
    n = int(n if n is not None else job.get("n_examples", gen.examples_per_request))
    targets = tuple(job.get("target_labels") or ())
    guided = mode != "unguided"
    limit = gen.prompt_example_chars
    lines = _task_lines(targets, n, part, parts)
    lines += ["", *_taxonomy_lines(taxonomy, descriptions or {})]
    lines += _section(H_FEWSHOT, job.get("fewshot", []), gen.n_fewshot, limit, False)
    if guided and gen.use_report and job.get("report"):
        lines += ["", H_REPORT, *report_lines(job["report"], list(job.get("confusions", [])),
                                              targets, gen.report_token_budget,
                                              whole=mode == "single")]
    shown = list(job.get("fewshot", []))[: gen.n_fewshot]
    if guided:
        mined = (("correct", H_CORRECT, gen.n_correct, False),
                 ("misclassified", H_MISCLASSIFIED, gen.n_misclassified, True),
                 ("hard_negatives", H_HARD,
                  gen.n_hard_negatives if gen.use_hard_negatives else 0, True))
        for key, title, count, with_pred in mined:
            lines += _section(title, job.get(key, []), count, limit, with_pred)
            shown += list(job.get(key, []))[:count]
    lines += _output_lines(n, gen.max_chars)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]
    return Prompt(messages, n, targets, tuple(str(x.get("text", "")) for x in shown), part, parts)


def split_counts(total: int, per_request: int) -> list[int]:
    """How a job of ``total`` examples is cut into requests of at most ``per_request``."""
    parts = max(1, math.ceil(total / max(1, per_request)))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def job_prompts(spec: RunSpec, job: dict[str, Any], taxonomy: list[str]) -> list[Prompt]:
    """The requests of a job: its examples cut into batches of ``examples_per_request``."""
    counts = split_counts(int(job.get("n_examples", 0)), spec.generation.examples_per_request)
    counts = [c for c in counts if c > 0]
    return [build_prompt(job, taxonomy, spec.generation, n=n, part=i, parts=len(counts),
                         descriptions=spec.dataset.label_descriptions)
            for i, n in enumerate(counts)]
