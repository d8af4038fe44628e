"""The validation split's two parts: the examples that steer generation (their report and
errors go into the teacher's prompts) and those that select the kept cycle. Computed when a run
is created and again by the train job, so both must agree: one definition, here."""

from __future__ import annotations

import random
from collections.abc import Sequence

from distillq.errors import InvalidInputError


def steer_count(n_val: int, fraction: float) -> int:
    """How many of ``n_val`` validation examples steer generation (``dataset.steer_fraction``)."""
    return round(n_val * fraction) if fraction > 0 else 0


def check_steer_split(n_val: int, fraction: float) -> None:
    """InvalidInputError if ``fraction`` > 0 leaves one part of ``n_val`` validation examples
    empty (checked when a run is created, and again by the train job)."""
    n_steer = steer_count(n_val, fraction)
    if fraction > 0 and not 0 < n_steer < n_val:
        raise InvalidInputError(
            f"dataset.steer_fraction={fraction} of the {n_val} validation examples leaves "
            f"{'none to steer' if n_steer == 0 else 'none to select'} with; give the "
            "validation split more examples or another steer_fraction"
        )


def steer_mask(ids: Sequence[str], labels: Sequence[str], fraction: float,
               seed: int = 0) -> list[bool]:
    """Which validation examples steer generation (True) and which select (False).

    ``steer_count(len(ids), fraction)`` of them steer, drawn label by label so each label
    gives about ``fraction`` of its examples: every label first gets the whole part of its
    share, then the examples left over go to the labels with the largest fractional parts
    (ties in a seeded random order). Within a label the examples are drawn in a seeded random
    order of their ids, so the split does not depend on the order of the rows.
    """
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    total = steer_count(len(ids), fraction)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    rng = random.Random(f"{seed}-steer")
    share = {label: len(rows) * fraction for label, rows in by_label.items()}
    take = {label: int(share[label]) for label in by_label}
    tie = {label: rng.random() for label in sorted(by_label)}
    left = total - sum(take.values())
    for label in sorted(by_label, key=lambda c: (-(share[c] - take[c]), tie[c]))[:left]:
        take[label] += 1
    mask = [False] * len(ids)
    for label in sorted(by_label):
        rows = sorted(by_label[label], key=lambda i: ids[i])
        random.Random(f"{seed}-steer-{label}").shuffle(rows)
        for i in rows[:take[label]]:
            mask[i] = True
    return mask
