"""Near copies vs real paraphrases: where to put the teacher's near-copy threshold.

A teacher that copies a prompt example with a light edit ("show" -> "shows", a word dropped)
adds nothing; a real text that merely resembles another (a different user asking the same
thing) is what distillation needs. This measures ``workers.teachers.parsing.near_copy`` on
both, on a labelled CSV (``text``, ``category``):

- copies: each of N sampled texts edited lightly, one edit of each kind: a word's plural
  ``s`` added or dropped, a word dropped, a filler word added, case and punctuation changed,
  one word replaced by a word of another text, and two of these at once;
- real texts: for each sampled text, the nearest other text of its class (most shared words,
  same normalised text excluded), and a random other text of its class.

For each threshold pair it prints the share of copies caught and of real texts wrongly
rejected. Seeded: the same data and seed give the same table.

    python -m bench.nearcopy.run [--data ../shared/data/banking77/train.csv] [--n 500]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from workers.teachers.parsing import NEAR_EDIT, NEAR_OVERLAP, Near, near_copy, normalise

ROOT = Path(__file__).resolve().parents[2]
BANKING77 = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"
FILLERS = ("please", "just", "really", "actually", "now")
EDITS = ("plural", "drop_word", "add_filler", "case_punct", "swap_word", "two_edits")
GRID_EDIT = (0.05, 0.1, 0.15, 0.2)
GRID_OVERLAP = (0.6, 0.7, 0.8, 0.9, None)  # None: no word-overlap rule


def edit(text: str, kind: str, rng: random.Random, vocabulary: list[str]) -> str:
    words = text.split()
    i = rng.randrange(len(words))
    if kind == "plural":
        w = words[i]
        words[i] = w[:-1] if w.endswith("s") and len(w) > 3 else w + "s"
    elif kind == "drop_word" and len(words) > 1:
        del words[i]
    elif kind == "add_filler":
        words.insert(i, rng.choice(FILLERS))
    elif kind == "case_punct":
        text = text.lower().rstrip("?.!") + rng.choice(["!", ".", "??", ""])
        return text[0].upper() + text[1:] if text else text
    elif kind == "swap_word":
        words[i] = rng.choice(vocabulary)
    elif kind == "two_edits":
        first, second = rng.sample(EDITS[:-1], 2)
        return edit(edit(text, first, rng, vocabulary), second, rng, vocabulary)
    return " ".join(words)


def load(path: Path) -> dict[str, list[str]]:
    by_class: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            text = " ".join(str(row["text"]).split())
            if len(text.split()) >= 3:
                by_class[row["category"]].append(text)
    return by_class


def pairs(by_class: dict[str, list[str]], n: int, seed: int) -> dict[str, list[tuple[Near, Near]]]:
    rng = random.Random(seed)
    vocabulary = sorted({w for texts in by_class.values() for t in texts for w in t.split()})
    anchors = rng.sample([(c, t) for c, texts in by_class.items() for t in texts], n)
    near = {c: [Near.of(normalise(t)) for t in texts] for c, texts in by_class.items()}
    out: dict[str, list[tuple[Near, Near]]] = defaultdict(list)
    for label, text in anchors:
        a = Near.of(normalise(text))
        for kind in EDITS:
            copy = Near.of(normalise(edit(text, kind, rng, vocabulary)))
            if copy.key != a.key:  # an edit normalising away is caught exactly anyway
                out[f"copy: {kind}"].append((copy, a))
        others = [b for b in near[label] if b.key != a.key]
        if others:
            nearest = max(others, key=lambda b: (len(a.words & b.words)
                                                 / max(1, len(a.words | b.words)), b.key))
            out["real: nearest of its class"].append((nearest, a))
            out["real: random of its class"].append((rng.choice(others), a))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nearcopy.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=BANKING77)
    p.add_argument("--n", type=int, default=500, help="texts sampled (default 500)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.data.is_file():
        print(f"error: no data file {args.data}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    groups = pairs(load(args.data), args.n, args.seed)
    print(f"data: {args.data.name} ({args.data}), {args.n} texts, seed {args.seed}; "
          f"in use: NEAR_EDIT={NEAR_EDIT}, NEAR_OVERLAP={NEAR_OVERLAP}\n")
    print("| max edit | min word overlap | " + " | ".join(groups) + " |")
    print("|---|---|" + "---|" * len(groups))
    for max_edit in GRID_EDIT:
        for overlap in GRID_OVERLAP:
            cells = []
            for items in groups.values():
                hit = sum(near_copy(a, b, max_edit, overlap if overlap is not None else 2.0)
                          for a, b in items)
                cells.append(f"{hit / len(items):.1%}")
            print(f"| {max_edit} | {overlap if overlap is not None else 'off'} | "
                  + " | ".join(cells) + " |")
    print(f"\n({sum(len(v) for v in groups.values())} pairs, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
