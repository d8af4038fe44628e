"""Words, not word pieces: sum piece scores per word, pick rationales.

The words are ``distillq.words.split_words``'s (shared with the student's rationale-aware
training), never a tokenizer's pre-tokeniser, so a classifier teacher and a causal-LM teacher
give the same words for the same text. A word piece belongs to the word its character span
overlaps most; pieces outside every word (special tokens, punctuation, prompt tokens) are
dropped. A word's score is the sum of its pieces' scores (for integrated gradients that keeps
completeness: word scores still add up to the score change).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from distillq.words import Word

# Function words only. Negations and particles that carry meaning ("not", "no", "up", "out",
# "off", "down", "over") are deliberately absent: "top up" and "cash out" are what a banking
# intent is about.
STOPWORDS = frozenset("""
a an the and or but if then else so than that this these those there here
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his
himself she her hers herself it its itself they them their theirs themselves
what which who whom whose when where why how
am is are was were be been being have has had having do does did doing
will would shall should can could may might must
of at by for with about against between into through during before after above below to from
in on under again further once all any both each few more most other some such only own same
too very just also as until while because
i'm i've i'd i'll you're you've you'd you'll he's she's it's we're we've they're they've
that's there's what's let's
""".split())


def is_stopword(word: str) -> bool:
    return word.lower().replace("’", "'") in STOPWORDS


def piece_words(offsets: Sequence[tuple[int, int]], words: Sequence[Word]) -> list[int]:
    """For each piece (character span in the text), the index of its word, or -1 for none."""
    starts = [w.start for w in words]
    out = []
    for s, e in offsets:
        best, best_overlap = -1, 0
        if e > s:
            i = max(bisect_right(starts, s) - 1, 0)
            while i < len(words) and words[i].start < e:
                overlap = min(e, words[i].end) - max(s, words[i].start)
                if overlap > best_overlap:
                    best, best_overlap = i, overlap
                i += 1
        out.append(best)
    return out


def word_scores(
    piece_scores: Sequence[float], piece_word: Sequence[int], n_words: int
) -> tuple[list[int], list[float]]:
    """Sum piece scores per word; returns the indices of words that have pieces and their scores.

    Words without pieces are those cut off by truncation: they are left out.
    """
    totals = [0.0] * n_words
    seen = [False] * n_words
    for score, w in zip(piece_scores, piece_word, strict=True):
        if w >= 0:
            totals[w] += float(score)
            seen[w] = True
    kept = [i for i in range(n_words) if seen[i]]
    return kept, [totals[i] for i in kept]


@dataclass(frozen=True)
class RationaleRule:
    """Which words become the rationale.

    Candidates are the words with a positive score (a negative input×gradient or IG score is
    evidence *against* the label), minus stop words when ``drop_stopwords``. The ``top_k`` best
    are kept; with ``mass_fraction``, the fewest best words holding that fraction of the
    candidates' score mass are kept, at most ``top_k``. The rationale is in text order.
    """

    top_k: int = 5
    mass_fraction: float | None = None
    drop_stopwords: bool = True

    def candidates(self, words: Sequence[str], scores: Sequence[float]) -> list[int]:
        return [
            i for i, (w, s) in enumerate(zip(words, scores, strict=True))
            if s > 0 and not (self.drop_stopwords and is_stopword(w))
        ]

    def select(self, words: Sequence[str], scores: Sequence[float]) -> list[int]:
        """Indices into ``words`` of the rationale, in text order."""
        ranked = sorted(self.candidates(words, scores), key=lambda i: (-scores[i], i))
        if self.mass_fraction is not None and ranked:
            goal = self.mass_fraction * sum(scores[i] for i in ranked)
            mass, n = 0.0, 0
            while n < len(ranked) and mass < goal:
                mass += scores[ranked[n]]
                n += 1
            ranked = ranked[:n]
        return sorted(ranked[: self.top_k])
