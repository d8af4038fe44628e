"""PGKD prompts: what the teacher is told about the student, and what it must return.

A prompt carries (PGKD section 3): the label taxonomy, a few labelled examples, the student's
validation report, the correct / misclassified / hard-negative examples (16 each by
default), and how many new examples to return as strict JSON
(``{"examples": [{"text": ..., "label": ...}]}``). Three modes, as planned by the
controller (``job["mode"]``):

- ``sharded``: the job targets one class or a confused pair; the report shows the worst
  classes and the targets' lines, and the mined examples are the targets' own (with
  ``generation.shared_examples``, the cycle's, of every class).
- ``single``: the paper's single prompt: the whole report (as much as fits in
  ``report_token_budget``), any classes.
- ``unguided``: no report, no mined examples: taxonomy, few-shot and the count only.

The format is plain Markdown with one JSON object per example line, so a real LLM reads it
easily and the simulated teacher (``sim``) can parse the very same prompt.

Order (``PROMPT_LAYOUT`` 2): what many requests share comes first, so a provider's prompt
cache (a request whose first tokens equal a recent one's: docs/teachers.md, "Prompt
caching") serves it at its cached price. The system message, the taxonomy and the output rules
are the same for every request of a run; the report's cycle-wide part (its head and the worst
classes) for every request of a cycle, and with ``generation.shared_examples`` (or a single
prompt) the cycle's most frequent confusions and the mined examples too. Then what belongs to
the request: its targets' report lines and confusions, few-shot and (by default) mined
examples, and last the task with the count and the batch number. Layout 1 put the task
first, so no two requests shared more than the system message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from distillq.spec import GenerationSpec, RunSpec

SYSTEM = (
    "You write new labelled training examples for a text classifier. You study how the "
    "current student model performs and write examples that teach it what it gets wrong. "
    "You answer with a single JSON object and nothing else."
)

PROMPT_LAYOUT = 2  # bumped when the same job gives other prompts (bench/quality's protocol)

H_TASK = "## Task"
H_TAXONOMY = "## Label taxonomy"
H_REPORT = "## Validation report of the student"
H_TARGET_REPORT = "## The target labels in the report"
H_FEWSHOT = "## Labelled examples"
H_CORRECT = "## Examples the student classifies correctly"
H_MISCLASSIFIED = "## Examples the student misclassifies"
H_HARD = "## Hard negatives (misclassified with high confidence)"
H_OUTPUT = "## Output"
TARGETS = "Target labels: "   # followed by a JSON list ([] = any label)
COUNT = "Number of examples: "
BATCH = "Batch: "
MAX_CHARS = "Longest text (characters): "
WORST_CLASSES = 5  # the report's cycle-wide part shows the worst classes (orchestrator.planning)
TABLE_HEAD = ("| class | precision | recall | f1 | support |", "|---|---|---|---|---|")


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


def report_lines(report: Mapping[str, Any], confusions: list[Any], budget_tokens: int,
                 whole: bool) -> list[str]:
    """The report's cycle-wide part: its head, the worst classes (all classes if ``whole``)
    within the budget, and the most frequent confusions if they fit. The same for every
    request of a cycle, whatever it targets (the targets' lines come later:
    ``target_lines``)."""
    head = [f"{k}: {float(report[k]):.4f}" for k in ("accuracy", "macro_f1", "weighted_f1")
            if k in report]
    lines = [*head, "", *TABLE_HEAD]
    per_class: Mapping[str, Any] = report.get("per_class", {}) or {}
    order = sorted(per_class, key=lambda c: (float(per_class[c].get("f1", 0)), c))
    order = order[: None if whole else WORST_CLASSES]
    budget = budget_tokens * 4 - sum(len(x) + 1 for x in lines)
    for shown, label in enumerate(order):
        line = _class_line(label, per_class[label])
        if len(line) + 1 > budget:
            lines.append(f"({len(order) - shown} more classes not shown)")
            break
        budget -= len(line) + 1
        lines.append(line)
    conf = _confusion_lines(confusions)
    if conf and budget - sum(len(x) + 1 for x in conf) > 0:
        lines += ["", "Most frequent confusions:", *conf]
    return lines


def target_lines(report: Mapping[str, Any], confusions: list[Any], targets: tuple[str, ...],
                 shown: Collection[str] = ()) -> list[str]:
    """The targets' own report lines and the confusions that involve them, less the lines
    ``shown`` already (the cycle-wide part's)."""
    per_class: Mapping[str, Any] = report.get("per_class", {}) or {}
    rows = [line for c in targets if c in per_class
            if (line := _class_line(c, per_class[c])) not in shown]
    conf = [line for line in _confusion_lines(
        [c for c in confusions if c[0] in targets or c[1] in targets]) if line not in shown]
    lines = [*TABLE_HEAD, *rows] if rows else []
    if conf:
        lines += [*([""] if lines else []), "Their most frequent confusions:", *conf]
    return lines


def _confusion_lines(confusions: list[Any]) -> list[str]:
    return [f"- true {t!r} predicted as {p!r}: {n}" for t, p, n in confusions[:10]]


def _task_lines(targets: tuple[str, ...], n: int, part: int, parts: int) -> list[str]:
    if len(targets) == 1:
        ask = f'Every example must have the label "{targets[0]}".'
    elif targets:
        names = " and ".join(f'"{t}"' for t in targets)
        ask = (f"Write examples of {names}, about evenly split, that the student confuses "
               "today: make the difference between these labels clear.")
    else:
        ask = "Use any labels of the taxonomy; favour the classes where the student is weakest."
    return ["", H_TASK, f"Write {n} new, realistic and varied examples for the classifier. {ask}",
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


def _output_lines(max_chars: int) -> list[str]:
    return [
        "", H_OUTPUT,
        "Return the new examples as one JSON object and nothing else:",
        '{"examples": [{"text": "...", "label": "..."}]}',
        "Each label must be one of the taxonomy's labels, spelled exactly. Do not copy or "
        "lightly edit the examples shown in this message; write new ones.",
        f"{MAX_CHARS}{max_chars}",
    ]


def _mined(job: Mapping[str, Any], gen: GenerationSpec) -> tuple[list[str], list[Any]]:
    """The correct / misclassified / hard-negative sections, and the examples they show."""
    kinds = (("correct", H_CORRECT, gen.n_correct, False),
             ("misclassified", H_MISCLASSIFIED, gen.n_misclassified, True),
             ("hard_negatives", H_HARD, gen.n_hard_negatives if gen.use_hard_negatives else 0,
              True))
    lines: list[str] = []
    shown: list[Any] = []
    for key, title, count, with_pred in kinds:
        lines += _section(title, job.get(key, []), count, gen.prompt_example_chars, with_pred)
        shown += list(job.get(key, []))[:count]
    return lines, shown


def build_prompt(job: Mapping[str, Any], taxonomy: list[str], gen: GenerationSpec, *,
                 n: int | None = None, part: int = 0, parts: int = 1,
                 descriptions: Mapping[str, str] | None = None) -> Prompt:
    """The messages of one request of ``job`` (request ``part`` of ``parts``), shared parts
    first (module docstring)."""
    mode = job.get("mode", gen.mode)
    n = int(n if n is not None else job.get("n_examples", gen.examples_per_request))
    targets = tuple(job.get("target_labels") or ())
    guided = mode != "unguided"
    # shared by every request of the run
    lines = [*_taxonomy_lines(taxonomy, descriptions or {}), *_output_lines(gen.max_chars)]
    # shared by every request of the cycle
    report = job.get("report") if guided and gen.use_report else None
    cycle_conf, own_conf = list(job.get("confusions", [])), job.get("target_confusions")
    if own_conf is None:  # a job planned before layout 2: its confusions are its targets'
        cycle_conf, own_conf = [], cycle_conf
    elif targets and not gen.shared_examples:
        cycle_conf = []  # its targets' are enough; the cycle's would only lengthen it
    cycle_lines = report_lines(report, cycle_conf, gen.report_token_budget,
                               whole=mode == "single") if report else []
    if report:
        lines += ["", H_REPORT, *cycle_lines]
    mined, mined_shown = _mined(job, gen) if guided else ([], [])
    if gen.shared_examples:
        lines += mined
    # this request's own
    if report and (own := target_lines(report, list(own_conf), targets, set(cycle_lines))):
        lines += ["", H_TARGET_REPORT, *own]
    fewshot = list(job.get("fewshot", []))[: gen.n_fewshot]
    lines += _section(H_FEWSHOT, fewshot, gen.n_fewshot, gen.prompt_example_chars, False)
    if not gen.shared_examples:
        lines += mined
    lines += _task_lines(targets, n, part, parts)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]
    shown = tuple(str(x.get("text", "")) for x in [*fewshot, *mined_shown])
    return Prompt(messages, n, targets, shown, part, parts)


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
