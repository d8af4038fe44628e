"""Planning: turn cycle c-1's evaluation report into cycle c's generation jobs.

Three modes (``generation.mode``):

- ``sharded`` (distillq's default): per-class quotas — every class keeps ``class_floor``
  examples, the rest goes to classes in proportion to their weakness (1 - F1), and a share goes
  to the most-confused pairs. Each job targets one class or one confused pair and carries that
  class's own report lines and correct / misclassified / hard-negative examples.
- ``single`` (the paper's form): every job carries the whole report and examples of any class.
- ``unguided`` (for comparison): uniform quotas, no report, no mined examples.

Jobs hold at most ``examples_per_request`` examples; a class's quota becomes several jobs
("parts"), each with a different slice of its examples. With ``generation.shared_examples``
every job of a cycle carries the same mined examples, of any class (the prompt shows them in
its shared part, for a provider's prompt cache); the report's cycle-wide part (``confusions``)
is the same for every job either way, the targets' own confusions ride in
``target_confusions``. Job ids are deterministic:
``distillq.jobs.plan_name(cycle, k)`` in a fixed order, so re-planning a cycle gives the same jobs.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any

from distillq.jobs import plan_name
from distillq.quotas import class_quotas, label_budget, largest_remainder, steering
from distillq.spec import GenerationSpec, LabellingSpec
from workers.teachers.prompts import WORST_CLASSES

PAIR_SHARE = 0.25  # share of a sharded cycle's examples that targets confused pairs

Item = dict[str, Any]


def pair_quotas(report: dict[str, Any], total: int) -> dict[tuple[str, str], int]:
    """The most-confused pairs, quota in proportion to how often they are confused."""
    confusions = [(str(t), str(p), int(n)) for t, p, n in report.get("confusions", []) if t != p]
    top = confusions[: max(1, min(10, len(confusions)))] if confusions else []
    weights = {(t, p): float(n) for t, p, n in top}
    quotas = largest_remainder(weights, total)
    return {pair: q for pair, q in quotas.items() if q > 0}


def _involves(item: Item, labels: set[str]) -> bool:
    return item.get("label") in labels or item.get("pred") in labels


def _slice(items: list[Item], n: int, part: int) -> list[Item]:
    """The ``part``-th window of n items (wrapping), so parts of a quota see different ones."""
    if n <= 0 or not items:
        return []
    if len(items) <= n:
        return list(items)
    start = (part * n) % len(items)
    return (items + items)[start : start + n]


class Planner:
    """Builds one cycle's jobs from the previous cycle's report."""

    def __init__(self, gen: GenerationSpec, taxonomy: list[str],
                 fewshot_pool: list[Item], seed: int = 0,
                 labelling: LabellingSpec | None = None):
        self.gen = gen
        self.labelling = labelling or LabellingSpec()
        self.taxonomy = taxonomy
        self.seed = seed
        self.fewshot_by_class: dict[str, list[Item]] = defaultdict(list)
        for item in fewshot_pool:
            self.fewshot_by_class[item["label"]].append(item)

    def plan(self, cycle: int, report: dict[str, Any],
             selection: list[Item] | None = None) -> list[Item]:
        """The cycle's jobs: PGKD generation for its share of ``examples_per_cycle``, then
        (with ``labelling.share``) one labelling job per ``texts_per_request`` of the
        ``selection`` (the select job's texts: ``{"id", "text", ...}``). In the mixed mode
        (0 < share < 1) a selection short of the labelling budget (the unlabelled texts are
        running out) leaves the rest to generation; ``share: 1`` never generates."""
        labelled = label_budget(self.gen, self.labelling)
        if 0 < self.labelling.share < 1:
            labelled = min(labelled, len(selection or []))
        jobs = self._generation(cycle, report, self.gen.examples_per_cycle - labelled)
        per = self.labelling.texts_per_request
        for start in range(0, len(selection or []), per):
            batch = (selection or [])[start:start + per]
            jobs.append({"kind": "label", "mode": "label", "cycle": cycle,
                         "job_id": plan_name(cycle, len(jobs)), "n_examples": len(batch),
                         "texts": [[x["id"], x["text"]] for x in batch]})
        return jobs

    def _generation(self, cycle: int, report: dict[str, Any], total: int) -> list[Item]:
        report = steering(report)
        if total <= 0:
            return []
        if self.gen.mode == "sharded":
            targets = self._sharded_targets(report, total)
        elif self.gen.mode == "single":
            targets = [((), total)]
        else:
            quotas = largest_remainder({c: 1.0 for c in self.taxonomy}, total)
            targets = [((c,), q) for c, q in sorted(quotas.items())]
        jobs: list[Item] = []
        for labels, quota in targets:
            jobs.extend(self._jobs_for(cycle, labels, quota, report, len(jobs)))
        return jobs

    def _sharded_targets(self, report: dict[str, Any],
                         total: int) -> list[tuple[tuple[str, ...], int]]:
        pairs = pair_quotas(report, int(total * PAIR_SHARE)) if report.get("confusions") else {}
        per_class = class_quotas(report, self.taxonomy, self.gen.class_floor,
                                 total - sum(pairs.values()))
        targets: list[tuple[tuple[str, ...], int]] = [((c,), q) for c, q in per_class.items()]
        targets += [((t, p), q) for (t, p), q in sorted(pairs.items())]
        return [t for t in targets if t[1] > 0]

    def _jobs_for(self, cycle: int, labels: tuple[str, ...], quota: int,
                  report: dict[str, Any], first: int) -> list[Item]:
        per = self.gen.examples_per_request
        n_parts = math.ceil(quota / per)
        jobs = []
        for part in range(n_parts):
            n = min(per, quota - part * per)
            job = self._job(cycle, labels, n, part, n_parts, report)
            job["job_id"] = plan_name(cycle, first + part)
            jobs.append(job)
        return jobs

    def _job(self, cycle: int, labels: tuple[str, ...], n: int, part: int, n_parts: int,
             report: dict[str, Any]) -> Item:
        guided = self.gen.mode != "unguided"
        job: Item = {
            "mode": self.gen.mode, "target_labels": list(labels), "n_examples": n,
            "part": part, "n_parts": n_parts, "cycle": cycle,
            "fewshot": self._fewshot(labels, part, n_parts, cycle),
            "report": {}, "confusions": [], "target_confusions": [], "correct": [],
            "misclassified": [], "hard_negatives": [],
        }
        if guided and self.gen.use_report:
            job["report"] = self._report_for(labels, report)
            job["confusions"] = report.get("confusions", [])[:10]  # the cycle's, as shown
            job["target_confusions"] = self._confusions_for(labels, report)
        if guided:
            self._add_mined(job, labels, report, part)
        return job

    def _fewshot(self, labels: tuple[str, ...], part: int, n_parts: int,
                 cycle: int) -> list[Item]:
        """The examples shown for ``labels``: each part of a quota, and each cycle, gets the
        next window of the class's seed examples (the same few every cycle would steer every
        cycle's answers to the same texts)."""
        n = self.gen.n_fewshot
        if labels:
            pool = [x for c in labels for x in self.fewshot_by_class.get(c, [])]
            window = part + max(0, cycle - 1) * n_parts
        else:
            pool = [x for c in self.taxonomy for x in self.fewshot_by_class.get(c, [])]
            pool = random.Random(f"{self.seed}-{cycle}-{part}").sample(pool, min(len(pool), 4 * n))
            window = part
        return [{"text": x["text"], "label": x["label"]} for x in _slice(pool, n, window)]

    def _report_for(self, labels: tuple[str, ...], report: dict[str, Any]) -> dict[str, Any]:
        per_class = report.get("per_class", {})
        if not labels:
            chosen = dict(per_class)
        else:
            worst = sorted(per_class, key=lambda c: (per_class[c].get("f1", 0.0), c))
            worst = worst[:WORST_CLASSES]  # the report's cycle-wide part (prompts)
            chosen = {c: per_class[c] for c in (*labels, *worst) if c in per_class}
        head: dict[str, Any] = {k: report[k] for k in ("accuracy", "macro_f1", "weighted_f1")
                                if k in report}
        return {**head, "per_class": chosen}

    def _confusions_for(self, labels: tuple[str, ...], report: dict[str, Any]) -> list[Any]:
        if not labels:
            return []
        conf = report.get("confusions", [])
        return [c for c in conf if c[0] in labels or c[1] in labels][:10]

    def _add_mined(self, job: Item, labels: tuple[str, ...], report: dict[str, Any],
                   part: int) -> None:
        mined = report.get("mined", {})
        wanted = {
            "correct": self.gen.n_correct,
            "misclassified": self.gen.n_misclassified,
            "hard_negatives": self.gen.n_hard_negatives if self.gen.use_hard_negatives else 0,
        }
        shared = self.gen.shared_examples  # every job of the cycle shows the same ones
        for key, n in wanted.items():
            items = list(mined.get(key, []))
            if shared and key != "hard_negatives":  # hard negatives: most confident, any class
                items = _round_robin(items)
            elif labels and not shared:
                items = [x for x in items if _involves(x, set(labels))]
            job[key] = [_public(x) for x in _slice(items, n, 0 if shared else part)]


def _round_robin(items: list[Item]) -> list[Item]:
    """``items`` taken one label at a time, each label's in their order: the first n of a
    list mined class by class (``mining.mine`` with ``per_class``) then span the classes."""
    by_label: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_label[str(item.get("label"))].append(item)
    queues = list(by_label.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def _public(item: Item) -> Item:
    keep = ("text", "label", "pred", "confidence")
    return {k: item[k] for k in keep if k in item}
