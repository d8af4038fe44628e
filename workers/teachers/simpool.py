"""The simulated teacher's knowledge: a pool of real labelled texts, and reading our prompts.

``Pool`` indexes the texts per label with TF-IDF (an inverted index, so scoring a class
costs only the postings of the prompt's words). ``read_prompt`` recovers from the very
prompt a real LLM gets (``prompts.build_prompt``) what the sim needs: the target labels, the
number of examples, the taxonomy, the report's per-class F1, the mined examples and every
text the prompt shows. ``compose`` picks the answer: for each target label, pool examples
of that label closest to the prompt's hard negatives and misclassified examples, never one
the prompt shows, never the same one twice.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workers.teachers import labelprompts as L
from workers.teachers import prompts as P
from workers.teachers.parsing import normalise

WORD = re.compile(r"\w+")
# Pick n examples among the closest max(3n, a quarter of the label's texts): guidance steers
# the answer to the neighbourhood of the examples it shows, and the same prompt sent again
# (another cycle, another seed) still gets mostly new texts, as an LLM writing new ones would.
WINDOW = 3
WINDOW_SHARE = 0.25
BATCH_RE = re.compile(r"^(\d+) of (\d+)$")
REPORT_ROW = re.compile(r"^\|\s*(.+?)\s*\|\s*[\d.]+\s*\|\s*[\d.]+\s*\|\s*([\d.]+)\s*\|")


def tokens(text: str) -> list[str]:
    return WORD.findall(text.casefold())


class Pool:
    """Labelled texts with a per-label TF-IDF inverted index."""

    def __init__(self, texts: Sequence[str], labels: Sequence[str]) -> None:
        self.texts = [str(t) for t in texts]
        self.labels = [str(lab) for lab in labels]
        self.keys = [normalise(t) for t in self.texts]
        self.label_by_key = {k: lab for k, lab in zip(self.keys, self.labels, strict=True) if k}
        self.sorted_keys = sorted(self.label_by_key)
        self.by_label: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(self.labels):
            if self.keys[i]:
                self.by_label[label].append(i)
        docs = [Counter(tokens(t)) for t in self.texts]
        df = Counter(tok for d in docs for tok in d)
        self.idf = {tok: math.log((1 + len(docs)) / (1 + n)) + 1 for tok, n in df.items()}
        self.postings: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(
            lambda: defaultdict(list))
        for i, d in enumerate(docs):
            vec = self.vector(d)
            for tok, w in vec.items():
                self.postings[self.labels[i]][tok].append((i, w))

    def label_of(self, text: str) -> str | None:
        """The pool's label of ``text`` (normalised), None where the pool lacks it. A text a
        prompt showed cut short ("…") is found by its beginning."""
        key = normalise(text.rstrip("…"))
        if not text.endswith("…") or key in self.label_by_key:
            return self.label_by_key.get(key)
        at = bisect.bisect_left(self.sorted_keys, key)
        if at < len(self.sorted_keys) and self.sorted_keys[at].startswith(key) and key:
            return self.label_by_key[self.sorted_keys[at]]
        return None

    def nearest_labels(self, text: str, taxonomy: Sequence[str]) -> list[str]:
        """``taxonomy`` ordered by how close ``text`` is to each label's closest texts (the
        sum of its three best cosines), closest first; ties in taxonomy order."""
        query = self.vector(Counter(tokens(text)))

        def closeness(label: str) -> float:
            return sum(sorted(self.scores(label, query).values(), reverse=True)[:3])

        return sorted(taxonomy, key=lambda label: -closeness(label))

    def vector(self, counts: Counter[str]) -> dict[str, float]:
        vec = {t: c * self.idf.get(t, 0.0) for t, c in counts.items()}
        norm = math.sqrt(sum(w * w for w in vec.values())) or 1.0
        return {t: w / norm for t, w in vec.items() if w}

    def centroid(self, texts: Iterable[str]) -> dict[str, float]:
        q: dict[str, float] = defaultdict(float)
        for text in texts:
            for tok, w in self.vector(Counter(tokens(text))).items():
                q[tok] += w
        return q

    def scores(self, label: str, query: dict[str, float]) -> dict[int, float]:
        """Cosine (up to a constant) of each of ``label``'s texts with the query vector."""
        out: dict[int, float] = defaultdict(float)
        index = self.postings.get(label, {})
        for tok, qw in query.items():
            for i, w in index.get(tok, ()):
                out[i] += qw * w
        return out

    def pick(self, label: str, n: int, guides: Sequence[str], exclude: set[str],
             rng: random.Random, batch: tuple[int, int] = (0, 1),
             exclude_prefixes: tuple[str, ...] = ()) -> list[int]:
        """``n`` distinct texts of ``label``, drawn from those closest to ``guides`` (see
        ``WINDOW``).

        ``exclude``: normalised texts never to return; ``exclude_prefixes``: nor texts that
        start with one (a prompt shows long examples cut short). ``batch`` = (k, K): request k
        of a job cut into K draws from its own K-th of the texts, so the requests of one job
        do not return the same ones.
        """
        scores = self.scores(label, self.centroid(guides)) if guides else {}
        k, parts = batch
        cands = [i for j, i in enumerate(self.by_label.get(label, []))
                 if j % parts == k and self.keys[i] not in exclude
                 and not (exclude_prefixes and self.keys[i].startswith(exclude_prefixes))]
        keyed = sorted(cands, key=lambda i: (-scores.get(i, 0.0), rng.random()))
        window = max(n, WINDOW * n, math.ceil(WINDOW_SHARE * len(keyed)))
        chosen = rng.sample(keyed[:window], min(n, len(keyed)))
        return sorted(chosen, key=lambda i: -scores.get(i, 0.0))


@dataclass
class PromptFacts:
    targets: list[str] = field(default_factory=list)
    n: int = 10
    taxonomy: list[str] = field(default_factory=list)
    f1: dict[str, float] = field(default_factory=dict)
    fewshot: list[dict[str, Any]] = field(default_factory=list)
    mined: list[dict[str, Any]] = field(default_factory=list)   # misclassified + hard negatives
    shown: set[str] = field(default_factory=set)
    shown_cut: set[str] = field(default_factory=set)  # examples the prompt showed cut short
    batch: tuple[int, int] = (0, 1)
    max_chars: int | None = None
    to_label: list[tuple[str, str]] = field(default_factory=list)  # (key, text): a labelling
    #                                                                 request's texts


def _json_after(line: str, prefix: str) -> Any:
    try:
        return json.JSONDecoder().raw_decode(line[len(prefix):].strip())[0]
    except ValueError:
        return None


def _read_line(facts: PromptFacts, section: str, line: str) -> None:
    if line.startswith(P.TARGETS):
        value = _json_after(line, P.TARGETS)
        facts.targets = [str(x) for x in value] if isinstance(value, list) else []
    elif line.startswith((P.COUNT, L.COUNT)) and line.split(": ", 1)[-1].strip().isdigit():
        facts.n = int(line.split(": ", 1)[-1].strip())
    elif line.startswith(P.BATCH) and (m := BATCH_RE.match(line[len(P.BATCH):].strip())):
        k, parts = int(m.group(1)), int(m.group(2))
        facts.batch = (k - 1, parts) if 1 <= k <= parts else (0, 1)
    elif line.startswith(P.MAX_CHARS) and line[len(P.MAX_CHARS):].strip().isdigit():
        facts.max_chars = int(line[len(P.MAX_CHARS):].strip())
    elif section == P.H_TAXONOMY and line.startswith("- "):
        label = _json_after(line, "- ")
        if isinstance(label, str):
            facts.taxonomy.append(label)
    elif section in (P.H_REPORT, P.H_TARGET_REPORT) and (m := REPORT_ROW.match(line)):
        facts.f1[m.group(1)] = float(m.group(2))
    elif line.startswith("- {"):
        _read_example(facts, section, _json_after(line, "- "))


def _read_example(facts: PromptFacts, section: str, item: Any) -> None:
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        return
    text = item["text"]
    if section == L.H_TEXTS:
        facts.to_label.append((str(item.get("id", "")), text))
        return
    facts.shown.add(normalise(text.rstrip("…")))
    if text.endswith("…") and normalise(text.rstrip("…")):
        facts.shown_cut.add(normalise(text.rstrip("…")))
    if section == P.H_FEWSHOT:
        facts.fewshot.append(item)
    elif section in (P.H_MISCLASSIFIED, P.H_HARD):
        facts.mined.append(item)


def read_prompt(messages: Sequence[dict[str, Any]]) -> PromptFacts:
    """What a distillq prompt asks for; a foreign prompt reads as "10 examples, any label"."""
    facts, section = PromptFacts(), ""
    for message in messages:
        for raw in str(message.get("content", "")).splitlines():
            line = raw.strip()
            if line.startswith("## "):
                section = line
                continue
            _read_line(facts, section, line)
    return facts


def guides_for(facts: PromptFacts, label: str) -> list[str]:
    """The prompt's misclassified / hard-negative texts that involve ``label``."""
    own = [x["text"] for x in facts.mined if label in (x.get("label"), x.get("predicted"))]
    if own:
        return own
    return [x["text"] for x in facts.fewshot if x.get("label") == label]


def label_counts(facts: PromptFacts, known: Iterable[str], rng: random.Random) -> Counter[str]:
    """How many examples of each label: targets evenly, else weighted by weakness (1 - F1)."""
    if facts.targets:
        labels = [t for t in facts.targets if t in set(known)] or list(facts.targets)
        return Counter(labels[i % len(labels)] for i in range(facts.n))
    labels = [t for t in (facts.taxonomy or sorted(known)) if t in set(known)]
    if not labels:
        return Counter()
    mean = 1 - sum(facts.f1.values()) / len(facts.f1) if facts.f1 else 1.0
    weights = [(1 - facts.f1[t] if t in facts.f1 else mean) + 0.05 for t in labels]
    return Counter(rng.choices(labels, weights=weights, k=facts.n))


def compose(pool: Pool, facts: PromptFacts, rng: random.Random,
            label_noise: float) -> list[dict[str, str]]:
    """The examples the simulated teacher returns for a prompt (deterministic given ``rng``)."""
    out: list[dict[str, str]] = []
    taxonomy = facts.taxonomy or sorted(pool.by_label)
    for label, k in sorted(label_counts(facts, pool.by_label, rng).items()):
        for i in pool.pick(label, k, guides_for(facts, label), facts.shown, rng, facts.batch,
                           tuple(sorted(facts.shown_cut))):
            out.append({"text": clip(pool.texts[i], facts.max_chars),
                        "label": _noisy(label, taxonomy, label_noise, rng)})
    rng.shuffle(out)
    return out


def answer(pool: Pool, facts: PromptFacts, rng: random.Random, label_noise: float,
           noise_kind: str = "uniform") -> dict[str, Any]:
    """The answer object: the labels of a labelling request's texts, else new examples."""
    if facts.to_label:
        return {L.ANSWER_KEY: label_texts(pool, facts, rng, label_noise, noise_kind)}
    return {"examples": compose(pool, facts, rng, label_noise)}


def label_texts(pool: Pool, facts: PromptFacts, rng: random.Random, label_noise: float,
                noise_kind: str = "uniform") -> list[dict[str, str]]:
    """Each text's label: its own where the pool holds the text (an oracle: the pool is real
    labelled data), else the label whose texts are closest to it (TF-IDF: a guess). With
    ``label_noise`` a label is replaced by another: any other (``uniform``), or the other
    label whose texts are closest to the text (``confusion``: the mistake a teacher would
    make)."""
    taxonomy = facts.taxonomy or sorted(pool.by_label)
    out = []
    for key, text in facts.to_label:
        ranked = pool.nearest_labels(text, taxonomy)
        label = pool.label_of(text) or ranked[0]
        if rng.random() < label_noise and len(taxonomy) > 1:
            others = [x for x in (ranked if noise_kind == "confusion" else taxonomy)
                      if x != label]
            label = others[0] if noise_kind == "confusion" else rng.choice(others)
        out.append({"id": key, "label": label})
    return out


def clip(text: str, limit: int | None) -> str:
    """``text`` cut to at most ``limit`` characters, at a word boundary where there is one (an
    LLM asked for texts of at most that length writes shorter ones)."""
    if limit is None or len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip()


def _noisy(label: str, taxonomy: list[str], noise: float, rng: random.Random) -> str:
    others = [t for t in taxonomy if t != label]
    if others and rng.random() < noise:
        return rng.choice(others)
    return label


def load_pool(source: str | Path | pa.Table | Sequence[tuple[str, str]]) -> Pool:
    """A Pool from a Parquet file, an Arrow table, or (text, label) pairs."""
    if isinstance(source, str | Path):
        source = pq.read_table(source, columns=["text", "label"])
    if isinstance(source, pa.Table):
        return Pool(source.column("text").to_pylist(), source.column("label").to_pylist())
    return Pool([t for t, _ in source], [lab for _, lab in source])
