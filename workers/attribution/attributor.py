"""One call shape for every method: ``Attributor(teacher, method).attribute(texts, targets)``.

Texts are tokenised once, sorted by token length and cut into batches of ``batch_size`` (so a
batch holds texts of similar length and padding stays small); each batch goes through the
method on the teacher's device; piece scores are summed into word scores and the rationale is
picked by a ``RationaleRule``. Results come back in input order, one ``Attribution`` per text.
Memory is bounded by ``batch_size`` × ``max_length`` (× ``internal_batch_size`` rows for
integrated gradients).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from distillq.words import split_words
from workers.attribution.methods import AttentionMode, Method, MethodOptions, get_method
from workers.attribution.teachers import Encoding, Target, Teacher, length_batches
from workers.attribution.words import RationaleRule, piece_words, word_scores


@dataclass(frozen=True)
class Attribution:
    """Word-level attribution of one text toward one label."""

    text: str
    label: str
    method: str
    words: tuple[str, ...]  # every word the teacher saw, in order (no punctuation)
    spans: tuple[tuple[int, int], ...]  # character span of each word in ``text``
    scores: tuple[float, ...]  # one per word
    rationale: tuple[int, ...]  # indices into ``words``, in text order
    target_score: float  # the teacher's target score on the whole text
    truncated: bool = False  # the text was longer than max_length tokens

    @property
    def rationale_words(self) -> list[str]:
        return [self.words[i] for i in self.rationale]

    @property
    def rationale_scores(self) -> list[float]:
        return [self.scores[i] for i in self.rationale]

    def as_row(self) -> dict[str, Any]:
        return {"label": self.label, "method": self.method, "words": list(self.words),
                "scores": list(self.scores), "rationale": self.rationale_words}


class Attributor:
    """A teacher, a method and its options; ``attribute`` may be called many times."""

    def __init__(self, teacher: Teacher, method: Method = "saliency", *,
                 batch_size: int = 32, max_length: int = 128, ig_steps: int = 16,
                 internal_batch_size: int = 256, attention: AttentionMode = "last_layer",
                 rule: RationaleRule | None = None):
        self.teacher = teacher
        self.method = method
        self._fn = get_method(method)
        self.batch_size = batch_size
        self.max_length = max_length
        self.options = MethodOptions(ig_steps, internal_batch_size, attention)
        self.rule = rule or RationaleRule()

    def attribute(self, texts: Sequence[str], targets: Sequence[Target]) -> list[Attribution]:
        """Attribute each text toward its target label (a label name or index)."""
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        if not texts:
            return []
        encodings = self.teacher.encode(texts, targets, self.max_length)
        out: list[Attribution | None] = [None] * len(texts)
        for idx in length_batches([len(e.input_ids) for e in encodings], self.batch_size):
            batch = self.teacher.collate([encodings[i] for i in idx])
            token_scores, target_scores = self._fn(self.teacher, batch, self.options)
            rows = token_scores.detach().cpu().tolist()
            targets_row = target_scores.detach().float().cpu().tolist()
            for r, i in enumerate(idx):
                out[i] = self._words(texts[i], encodings[i], rows[r], targets_row[r])
        return [a for a in out if a is not None]

    def _words(self, text: str, enc: Encoding, piece_scores: list[float],
               target_score: float) -> Attribution:
        words = split_words(text)
        n = len(enc.input_ids)
        owner = [w if m else -1 for w, m in
                 zip(piece_words(enc.offsets, words), enc.text_mask, strict=True)]
        kept, scores = word_scores(piece_scores[:n], owner, len(words))
        names = [words[i].text for i in kept]
        return Attribution(
            text=text, label=self.teacher.labels[enc.label], method=self.method,
            words=tuple(names), spans=tuple((words[i].start, words[i].end) for i in kept),
            scores=tuple(scores), rationale=tuple(self.rule.select(names, scores)),
            target_score=target_score, truncated=enc.truncated,
        )


def attribute(teacher: Teacher, texts: Sequence[str], targets: Sequence[Target], *,
              method: Method = "saliency", batch_size: int = 32, max_length: int = 128,
              ig_steps: int = 16, internal_batch_size: int = 256,
              attention: AttentionMode = "last_layer", top_k: int = 5,
              mass_fraction: float | None = None,
              drop_stopwords: bool = True) -> list[Attribution]:
    """The functional form of ``Attributor(...).attribute(texts, targets)``."""
    rule = RationaleRule(top_k, mass_fraction, drop_stopwords)
    attributor = Attributor(teacher, method, batch_size=batch_size, max_length=max_length,
                            ig_steps=ig_steps, internal_batch_size=internal_batch_size,
                            attention=attention, rule=rule)
    return attributor.attribute(texts, targets)

