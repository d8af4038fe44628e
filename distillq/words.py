"""The words of a text, as training and attribution both see them.

Words come from the text itself (``WORD_RE``: runs of letters/digits joined by ``-`` or an
apostrophe, so "top-up" and "don't" are one word each), never from a tokenizer's pre-tokeniser,
so a classifier teacher and a causal-LM teacher give the same words for the same text, and the
student's rationale-aware training finds in a text the very words the teacher marked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WORD_RE = re.compile(r"\w+(?:[-'’]\w+)*")


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    end: int


def split_words(text: str) -> list[Word]:
    """The words of ``text`` with their character spans, in order."""
    return [Word(m.group(), m.start(), m.end()) for m in WORD_RE.finditer(text)]
