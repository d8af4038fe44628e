"""Is a rationale any good? Two checks for the run report.

- **Deletion test** (faithfulness): delete the rationale's words from the text and measure how
  much the teacher's target score falls; do the same with as many words drawn at random from
  the text (``draws`` times) — the textbook "k random words" baseline: any word but stop words
  (when the rule drops them), whatever its score, the rationale's own words included. A
  faithful rationale makes the score fall more.
- **Label-word overlap** (plausibility): how often the rationale holds one of the label's own
  words ("card_arrival" → {card, arrival}), among texts that contain one at all. Words match on
  a shared prefix of 5 letters (or the whole shorter word), so "arrived" matches "arrival".
  Ballout et al. report 68% of attributed tokens within human rationales on their data; this is
  a cheaper proxy that needs no human rationales.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from statistics import fmean
from typing import Any

from workers.attribution.attributor import Attribution
from workers.attribution.teachers import Teacher
from workers.attribution.words import RationaleRule, is_stopword

_PART = re.compile(r"[^\W_]+")


def delete_words(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` without the given word spans (whitespace left behind is collapsed)."""
    pieces, at = [], 0
    for s, e in sorted(spans):
        pieces.append(text[at:s])
        at = e
    pieces.append(text[at:])
    return " ".join("".join(pieces).split())


def _random_spans(a: Attribution, rule: RationaleRule, rng: random.Random) -> list[tuple[int, int]]:
    pool = [i for i, w in enumerate(a.words) if not (rule.drop_stopwords and is_stopword(w))]
    picked = rng.sample(pool, min(len(a.rationale), len(pool)))
    return [a.spans[i] for i in picked]


def deletion_test(teacher: Teacher, attributions: Sequence[Attribution], *,
                  rule: RationaleRule | None = None, draws: int = 3, seed: int = 0,
                  max_length: int = 128, batch_size: int = 32) -> dict[str, Any]:
    """Mean drop of the target score when the rationale vs k random words are deleted."""
    rule = rule or RationaleRule()
    rng = random.Random(seed)
    used = [a for a in attributions if a.rationale]
    texts, labels = [], []
    for a in used:
        variants = [a.text, delete_words(a.text, [a.spans[i] for i in a.rationale])]
        variants += [delete_words(a.text, _random_spans(a, rule, rng)) for _ in range(draws)]
        texts += variants
        labels += [a.label] * len(variants)
    scores = teacher.score(texts, labels, max_length=max_length, batch_size=batch_size)
    top, rand, wins = [], [], 0
    step = 2 + draws
    for j in range(len(used)):
        full, cut, *randoms = scores[j * step : (j + 1) * step]
        top.append(full - cut)
        rand.append(fmean(full - r for r in randoms))
        wins += top[-1] > rand[-1]
    return {
        "n": len(used),
        "k_mean": fmean(len(a.rationale) for a in used) if used else 0.0,
        "topk_drop": fmean(top) if top else 0.0,
        "random_drop": fmean(rand) if rand else 0.0,
        "topk_wins": wins / len(used) if used else 0.0,
    }


def label_words(label: str) -> set[str]:
    """The label's own content words: "card_arrival" → {"card", "arrival"}."""
    parts = {p.lower() for p in _PART.findall(label)}
    return {p for p in parts if len(p) >= 3 and not is_stopword(p)}


def words_match(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    n = min(5, len(a), len(b))
    return len(a) >= 3 and len(b) >= 3 and a[:n] == b[:n]


def _hits(words: Sequence[str], targets: set[str]) -> bool:
    return any(words_match(p, t) for w in words for p in _PART.findall(w) for t in targets)


def label_overlap(attributions: Sequence[Attribution]) -> dict[str, Any]:
    """Share of rationales holding a label word, among texts that contain a label word."""
    eligible = hits = 0
    for a in attributions:
        targets = label_words(a.label)
        if targets and _hits(a.words, targets):
            eligible += 1
            hits += _hits(a.rationale_words, targets)
    return {
        "n": len(attributions),
        "eligible": eligible,
        "hit_rate": hits / eligible if eligible else 0.0,
    }


def rationale_quality(teacher: Teacher, attributions: Sequence[Attribution], *,
                      rule: RationaleRule | None = None, draws: int = 3, seed: int = 0,
                      max_length: int = 128, batch_size: int = 32) -> dict[str, Any]:
    """Both checks in one JSON-ready dict for the run report."""
    methods = sorted({a.method for a in attributions})
    return {
        "method": methods[0] if len(methods) == 1 else methods,
        "teacher": teacher.kind,
        "examples": len(attributions),
        "rationale_words_mean": (fmean(len(a.rationale) for a in attributions)
                                 if attributions else 0.0),
        "deletion": deletion_test(teacher, attributions, rule=rule, draws=draws, seed=seed,
                                  max_length=max_length, batch_size=batch_size),
        "label_overlap": label_overlap(attributions),
    }
