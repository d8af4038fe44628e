"""Quotas: how a number of examples is shared out over classes (planning, selection)."""

from __future__ import annotations

import math
from typing import Any, TypeVar

from distillq.spec import GenerationSpec, LabellingSpec

K = TypeVar("K", str, tuple[str, str])


def largest_remainder(weights: dict[K, float], total: int) -> dict[K, int]:
    """Split ``total`` integer units in proportion to ``weights`` (ties broken by name)."""
    if total <= 0 or not weights:
        return {k: 0 for k in weights}
    s = sum(weights.values())
    if s <= 0:
        weights, s = {k: 1.0 for k in weights}, float(len(weights))
    raw = {k: total * w / s for k, w in weights.items()}
    out = {k: int(math.floor(v)) for k, v in raw.items()}
    left = total - sum(out.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


def class_quotas(report: dict[str, Any], taxonomy: list[str], class_floor: int,
                 total: int) -> dict[str, int]:
    """Every class gets the floor; the rest in proportion to 1 - F1 (weak classes get more).
    A class the report does not cover gets the mean weakness of those it does (all the same
    when it covers none)."""
    per_class = report.get("per_class", {})
    floor = min(class_floor, total // max(1, len(taxonomy)))
    known = {c: max(0.0, 1.0 - float(per_class[c].get("f1", 0.0)))
             for c in taxonomy if c in per_class}
    unknown = sum(known.values()) / len(known) if known else 1.0
    weakness = {c: known.get(c, unknown) for c in taxonomy}
    extra = largest_remainder(weakness, total - floor * len(taxonomy))
    return {c: floor + extra[c] for c in taxonomy}


def label_budget(gen: GenerationSpec, labelling: LabellingSpec) -> int:
    """How many texts a cycle has labelled: ``labelling.share`` of ``examples_per_cycle``
    (the rest is PGKD generation's)."""
    return round(gen.examples_per_cycle * labelling.share)


def steering(report: dict[str, Any]) -> dict[str, Any]:
    """The report that steers a cycle: with ``dataset.steer_fraction`` the report's metrics
    are those of the validation examples that select; generation (and the choice of texts
    to label) is steered by the others' (``steer``) alone. A label the split left without
    steering examples is not known to be weak: it is left out (mean weakness in the quotas,
    not among the worst classes shown)."""
    if "steer" not in report:
        return report
    steer = report["steer"]
    known = {c: v for c, v in steer.get("per_class", {}).items() if v.get("support", 1) > 0}
    return {**report, **steer, "per_class": known}
