"""Reading the teacher's answer: tolerant JSON extraction, strict validation of each example.

Extraction tolerates what LLMs wrap around JSON: code fences, a sentence before, prose after.
An answer with no usable ``{"examples": [...]}`` object (or bare list) is a
``MalformedOutputError`` (transient: the request is asked again). Each example is then checked
and, when it fails, rejected with a reason and counted, never stored:

``not_an_object``, ``empty``, ``too_short``, ``too_long`` (``GenerationSpec.min_chars`` /
``max_chars``), ``label_not_in_taxonomy``, ``copy_of_prompt`` (a prompt example, after
normalising case, spaces and punctuation), ``copy_of_seed`` (a text of the run's seed),
``duplicate`` (within the job), ``near_copy_of_prompt`` / ``near_copy_of_seed`` (a light edit
of one: ``near_copy``), ``injection`` (text that addresses the model instead of being an
example), ``surplus`` (more than were asked for).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from distillq.spec import GenerationSpec
from workers.teachers.errors import MalformedOutputError

FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
INJECTION = re.compile(
    r"ignore (all |any )?(the )?(previous|prior|above) (instructions|prompts?)|"
    r"disregard (all |the )?(previous|prior|above)|system prompt|you are now (a|an) (new )?(ai|assistant|model|chatbot)|"
    r"^\s*(system|assistant)\s*:|<\|im_(start|end)\|>|\[/?INST\]",
    re.IGNORECASE | re.MULTILINE,
)
MAX_CANDIDATES = 50


def normalise(text: str) -> str:
    """The key used to compare texts: NFKC, case-folded, words only, single spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.findall(r"\w+", text))


# A near copy of a text the prompt showed (bench/nearcopy measured these on Banking77 and
# 20 Newsgroups: docs/teachers.md, "Near copies"): the two normalised texts differ by at most
# NEAR_EDIT of the longer one's characters, or share at least NEAR_OVERLAP of their words
# (Jaccard, texts of NEAR_MIN_WORDS words or more).
NEAR_EDIT = 0.1
NEAR_OVERLAP = 0.8
NEAR_MIN_WORDS = 5


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``limit + 1`` once it exceeds ``limit``
    (a band of width ``2 * limit + 1``: cheap for the small limits it is asked about)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        lo, hi = max(1, i - limit), min(len(b), i + limit)
        current = [limit + 1] * (len(b) + 1)
        current[0] = i if i <= limit else limit + 1
        for j in range(lo, hi + 1):
            cost = 0 if ca == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        if min(current[lo - 1 : hi + 1]) > limit:
            return limit + 1
        previous = current
    return min(previous[len(b)], limit + 1)


@dataclass(frozen=True)
class Near:
    """A normalised text, ready to be compared (``near_copy``)."""

    key: str
    words: frozenset[str]

    @classmethod
    def of(cls, key: str) -> Near:
        return cls(key, frozenset(key.split()))


def near_copy(a: Near, b: Near, max_edit: float = NEAR_EDIT,
              min_overlap: float = NEAR_OVERLAP) -> bool:
    """Whether ``a`` is a light edit of ``b``: few characters changed, or nearly the same
    words (see NEAR_EDIT, NEAR_OVERLAP)."""
    shared, fewest = len(a.words & b.words), min(len(a.words), len(b.words))
    if shared * 2 < fewest:  # not even half the words in common: no light edit (and cheap)
        return False
    if fewest >= NEAR_MIN_WORDS and shared / len(a.words | b.words) >= min_overlap:
        return True
    limit = int(max_edit * max(len(a.key), len(b.key)))
    return limit > 0 and edit_distance(a.key, b.key, limit) <= limit


def _candidates(text: str) -> Iterable[str]:
    yield from (m.group(1) for m in FENCE.finditer(text))
    yield text


def _decode_from(text: str, key: str) -> Any:
    """The first JSON object or list that decodes, starting at any '{' or '['."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"[\[{]", text)][:MAX_CANDIDATES]
    for i in starts:
        try:
            value, _ = decoder.raw_decode(text, i)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get(key), list):
            return value[key]
        if isinstance(value, list) and all(isinstance(x, dict) for x in value) and value:
            return value
    return None


def extract_items(text: str, key: str = "examples") -> list[Any]:
    """The list of objects under ``key`` in an answer (``{"examples": [...]}``, or a bare
    list of objects); MalformedOutputError when there is none."""
    for candidate in _candidates(text):
        items = _decode_from(candidate, key)
        if items is not None:
            return list(items)
    raise MalformedOutputError(f"no JSON {key} object in {len(text)} characters of answer")


@dataclass
class Validator:
    """Checks examples against the taxonomy, the spec and what the job has already seen."""

    taxonomy: list[str]
    gen: GenerationSpec
    shown: Iterable[str] = ()
    seen: set[str] = field(default_factory=set)
    seed: Iterable[str] = ()  # the run's seed texts: the student has them already

    def __post_init__(self) -> None:
        self._labels = {label.casefold().strip(): label for label in self.taxonomy}
        shown = [(t, normalise(t)) for t in self.shown]  # read once: it may be an iterator
        self._shown = {key for _, key in shown}
        self._shown_near = [Near.of(key) for key in self._shown]
        self._seed = {normalise(t) for t in self.seed}
        self._seed_near = [Near.of(key) for key in self._seed]
        # texts the prompt showed cut short: a teacher copying what it saw writes their opening
        limit = self.gen.prompt_example_chars
        self._cut = [key for t, key in shown if len(" ".join(t.split())) > limit]
        self._min_copy = max(1, limit // 2)

    def check(self, item: Any) -> tuple[str, str] | str:
        """``(text, label)`` for a good example, else the reason it is rejected."""
        if not isinstance(item, dict):
            return "not_an_object"
        text = item.get("text")
        text = " ".join(text.split()) if isinstance(text, str) else ""
        label = self._labels.get(str(item.get("label", "")).casefold().strip())
        key = normalise(text)
        reason = self._reason(text, key, label)
        if reason:
            return reason
        self.seen.add(key)
        return text, str(label)

    def _reason(self, text: str, key: str, label: str | None) -> str | None:
        if not key:
            return "empty"
        if len(text) < self.gen.min_chars:
            return "too_short"
        if len(text) > self.gen.max_chars:
            return "too_long"
        if label is None:
            return "label_not_in_taxonomy"
        if INJECTION.search(text):
            return "injection"
        return self._copied(key)

    def _copied(self, key: str) -> str | None:
        """Why ``key`` is not new: a copy, exact or near, of what the prompt showed or of the
        seed, or a duplicate within the job."""
        if key in self._shown or (len(key) >= self._min_copy
                                  and any(cut.startswith(key) for cut in self._cut)):
            return "copy_of_prompt"
        if key in self._seed:
            return "copy_of_seed"
        if key in self.seen:
            return "duplicate"
        near = Near.of(key)
        if any(near_copy(near, other) for other in self._shown_near):
            return "near_copy_of_prompt"
        if any(near_copy(near, other) for other in self._seed_near):
            return "near_copy_of_seed"
        return None


@dataclass
class Parsed:
    examples: list[tuple[str, str]]
    rejects: Counter[str]


def validate_items(items: list[Any], validator: Validator, limit: int) -> Parsed:
    """Keep the first ``limit`` good examples; count every reject by reason."""
    kept: list[tuple[str, str]] = []
    rejects: Counter[str] = Counter()
    for item in items:
        if len(kept) >= limit:
            rejects["surplus"] += 1
            continue
        result = validator.check(item)
        if isinstance(result, str):
            rejects[result] += 1
        else:
            kept.append(result)
    return Parsed(kept, rejects)


def parse_answer(text: str, validator: Validator, limit: int) -> Parsed:
    """Extract and validate in one step (MalformedOutputError if nothing can be read)."""
    return validate_items(extract_items(text), validator, limit)
