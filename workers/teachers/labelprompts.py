"""Labelling prompts: the teacher labels a batch of the user's own texts (active labelling).

A request shows the taxonomy (with ``dataset.label_descriptions``), the output rules, then the
texts, each under a short key (``t01``, ``t02``, … — never the pool's own ids, which may be
long or say something), and last the task with the count. Shared parts first, as in
generation prompts (``prompts``, layout 2), so a provider's prompt cache serves the taxonomy
and the rules. The answer is strict JSON: ``{"labels": [{"id": "t01", "label": "..."}]}``.

``read_labels`` checks an answer: every key must be one the prompt showed, once, and its label
one of the taxonomy (matched as generation matches them: case and surrounding spaces
ignored). What fails is rejected with a reason and counted — ``not_an_object``,
``unknown_id``, ``duplicate_id``, ``label_not_in_taxonomy`` — and a text the answer does not
label is counted ``unlabelled``. ``majority`` merges k answers to the same texts
(self-consistency): the most frequent label of each text, ties broken by the first answer's,
with the share of answers that agreed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workers.teachers import prompts as P

SYSTEM = (
    "You label texts for a text classifier: for each text, the one label of the taxonomy "
    "that fits it best. You answer with a single JSON object and nothing else."
)
H_TEXTS = "## Texts to label"
COUNT = "Number of texts: "
ANSWER = "Answer: "  # k of K, when K answers are asked for the same texts
ANSWER_KEY = "labels"


@dataclass(frozen=True)
class LabelPrompt:
    """One labelling request: its messages, and which pool text each key stands for."""

    messages: list[dict[str, str]]
    keys: tuple[str, ...]  # t01, t02, … in the order shown
    texts: tuple[tuple[str, str], ...]  # (pool id, text), as asked, in the same order
    answer: tuple[int, int] = (0, 1)  # the k-th of K answers asked for these texts

    @property
    def ids(self) -> tuple[str, ...]:
        """The pool ids, in the keys' order."""
        return tuple(pool_id for pool_id, _ in self.texts)

    @property
    def n(self) -> int:
        """How many texts it asks to label."""
        return len(self.texts)


def key_of(i: int, n: int) -> str:
    """The key of the ``i``-th text of a request of ``n`` (its width: ``n``'s digits, 2 at
    least)."""
    return f"t{i + 1:0{max(2, len(str(n)))}d}"


def build_label_prompt(texts: Sequence[tuple[str, str]], taxonomy: list[str], *,
                       descriptions: Mapping[str, str] | None = None,
                       text_chars: int = 2000, first: int = 0, of: int | None = None,
                       answer: tuple[int, int] = (0, 1)) -> LabelPrompt:
    """The request labelling ``texts`` (``(pool id, text)`` pairs), each cut to
    ``text_chars``. ``first`` / ``of``: where they sit in a larger request (a half of one cut
    short keeps its keys); ``answer`` = (k, K): the k-th of K answers asked for the same texts
    (self-consistency), said in the task so that no two requests are alike."""
    if not texts:
        raise ValueError("a labelling request needs at least one text")
    keys = tuple(key_of(first + i, of or len(texts)) for i in range(len(texts)))
    lines = [*P._taxonomy_lines(taxonomy, descriptions or {}), "", P.H_OUTPUT,
             "Return one JSON object and nothing else:",
             '{"labels": [{"id": "t01", "label": "..."}]}',
             "One entry for each text, its id as shown. Each label must be one of the "
             "taxonomy's labels, spelled exactly; pick the closest one even when none fits "
             "well.", "", H_TEXTS]
    lines += ["- " + json.dumps({"id": k, "text": P._clip(t, text_chars)}, ensure_ascii=False)
              for k, (_, t) in zip(keys, texts, strict=True)]
    lines += ["", P.H_TASK, f"Label each of the {len(texts)} texts above.",
              COUNT + str(len(texts))]
    if answer[1] > 1:
        lines.append(f"{ANSWER}{answer[0] + 1} of {answer[1]}")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]
    return LabelPrompt(messages, keys, tuple(texts), answer)


def halves(prompt: LabelPrompt, taxonomy: list[str], *,
           descriptions: Mapping[str, str] | None = None,
           text_chars: int = 2000) -> tuple[LabelPrompt, LabelPrompt]:
    """``prompt`` as two requests for half its texts each, keeping their keys and which
    answer they are (an answer cut short is asked again this way)."""
    h = prompt.n // 2
    width = 10 ** (len(prompt.keys[0]) - 2)  # a count with the keys' digits: same width
    first = int(prompt.keys[0][1:]) - 1

    def part(texts: tuple[tuple[str, str], ...], start: int) -> LabelPrompt:
        return build_label_prompt(texts, taxonomy, descriptions=descriptions,
                                  text_chars=text_chars, first=start, of=width,
                                  answer=prompt.answer)

    return part(prompt.texts[:h], first), part(prompt.texts[h:], first + h)


@dataclass
class ReadLabels:
    labels: dict[str, str]  # pool id -> label
    rejects: Counter[str]


def read_labels(items: Sequence[Any], prompt: LabelPrompt, taxonomy: list[str]) -> ReadLabels:
    """The answer's labels by pool id; every reject counted by reason (module docstring)."""
    names = {label.casefold().strip(): label for label in taxonomy}
    by_key = dict(zip(prompt.keys, prompt.ids, strict=True))
    labels: dict[str, str] = {}
    rejects: Counter[str] = Counter()
    for item in items:
        if not isinstance(item, dict):
            rejects["not_an_object"] += 1
            continue
        pool_id = by_key.get(str(item.get("id", "")).strip())
        label = names.get(str(item.get("label", "")).casefold().strip())
        if pool_id is None:
            rejects["unknown_id"] += 1
        elif pool_id in labels:
            rejects["duplicate_id"] += 1
        elif label is None:
            rejects["label_not_in_taxonomy"] += 1
        else:
            labels[pool_id] = label
    answered = set(labels)
    missing = sum(1 for i in prompt.ids if i not in answered)
    if missing:
        rejects["unlabelled"] += missing
    return ReadLabels(labels, rejects)


def majority(answers: Sequence[Mapping[str, str]]) -> dict[str, tuple[str, float]]:
    """pool id -> (the most frequent label over ``answers``, the share that gave it); a tie
    goes to the label the earliest answer gave."""
    out: dict[str, tuple[str, float]] = {}
    ids = dict.fromkeys(i for answer in answers for i in answer)
    for pool_id in ids:
        given = [a[pool_id] for a in answers if pool_id in a]
        counts = Counter(given)
        best = max(counts.values())
        label = next(x for x in given if counts[x] == best)
        out[pool_id] = (label, best / len(answers))
    return out
