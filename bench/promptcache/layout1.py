"""Prompt layout 1, as distillq built prompts until 2026-12-07 (commit f330b44): the task with
its count and batch number first, then the taxonomy, few-shot examples, the report (the
targets' lines first), the mined examples and the output rules. Kept here only as the
baseline of ``bench.promptcache``; the workers build layout 2 (``workers.teachers.prompts``).

It reads the jobs today's planner writes: for a class-targeted job the report's confusions
were its targets' (today ``target_confusions``), for a single-prompt job the cycle's (today
``confusions``); everything else in a job is as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from distillq.spec import GenerationSpec
from workers.teachers import prompts as P


def report_lines(report: Mapping[str, Any], confusions: list[Any], targets: tuple[str, ...],
                 budget_tokens: int, whole: bool) -> list[str]:
    """Targets' lines, then the worst classes (all classes if ``whole``), within the budget."""
    head = [f"{k}: {float(report[k]):.4f}" for k in ("accuracy", "macro_f1", "weighted_f1")
            if k in report]
    lines = [*head, "", *P.TABLE_HEAD]
    per_class: Mapping[str, Any] = report.get("per_class", {}) or {}
    worst = sorted(per_class, key=lambda c: (float(per_class[c].get("f1", 0)), c))
    order = [c for c in targets if c in per_class]
    order += [c for c in worst if c not in order][: None if whole else P.WORST_CLASSES]
    budget = budget_tokens * 4 - sum(len(x) + 1 for x in lines)
    for shown, label in enumerate(order):
        line = P._class_line(label, per_class[label])
        if len(line) + 1 > budget:
            lines.append(f"({len(order) - shown} more classes not shown)")
            break
        budget -= len(line) + 1
        lines.append(line)
    conf = P._confusion_lines(confusions)
    if conf and budget - sum(len(x) + 1 for x in conf) > 0:
        lines += ["", "Most frequent confusions:", *conf]
    return lines


def build_prompt(job: Mapping[str, Any], taxonomy: list[str], gen: GenerationSpec, *,
                 n: int | None = None, part: int = 0, parts: int = 1,
                 descriptions: Mapping[str, str] | None = None) -> P.Prompt:
    """Layout 1's messages of one request of ``job`` (``workers.teachers.prompts``'s
    ``build_prompt`` signature)."""
    mode = job.get("mode", gen.mode)
    n = int(n if n is not None else job.get("n_examples", gen.examples_per_request))
    targets = tuple(job.get("target_labels") or ())
    guided = mode != "unguided"
    limit = gen.prompt_example_chars
    lines = P._task_lines(targets, n, part, parts)[1:]  # layout 2's has a blank line first
    lines += ["", *P._taxonomy_lines(taxonomy, descriptions or {})]
    lines += P._section(P.H_FEWSHOT, job.get("fewshot", []), gen.n_fewshot, limit, False)
    if guided and gen.use_report and job.get("report"):
        confusions = job.get("target_confusions") if targets else job.get("confusions")
        lines += ["", P.H_REPORT, *report_lines(job["report"], list(confusions or []), targets,
                                                gen.report_token_budget,
                                                whole=mode == "single")]
    shown = list(job.get("fewshot", []))[: gen.n_fewshot]
    if guided:
        mined, mined_shown = P._mined(job, gen)
        lines += mined
        shown += mined_shown
    lines += ["", P.H_OUTPUT,
              f"Return exactly {n} new examples as one JSON object and nothing else:",
              '{"examples": [{"text": "...", "label": "..."}]}',
              "Each label must be one of the taxonomy's labels, spelled exactly. Do not copy or "
              "lightly edit the examples shown above; write new ones.",
              f"{P.MAX_CHARS}{gen.max_chars}"]
    messages = [{"role": "system", "content": P.SYSTEM},
                {"role": "user", "content": "\n".join(lines)}]
    return P.Prompt(messages, n, targets, tuple(str(x.get("text", "")) for x in shown), part,
                    parts)

