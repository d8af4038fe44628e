"""Which unlabelled texts the teacher labels next: active-learning selection.

The current student scores every pool text it has not seen labelled (``Candidates``: its
predicted class, the margin between its two most probable classes, the entropy of its
distribution, and for the most uncertain an embedding). ``select`` then picks ``budget`` of
them by ``strategy``:

- ``random``: a seeded uniform sample (the baseline every study compares against);
- ``margin``: the smallest margins first (Scheffer et al. 2001), the texts the student is
  torn between two classes on;
- ``entropy``: the highest entropies first;
- ``diverse``: uncertainty with diversity: the ``factor × budget`` smallest margins are
  clustered (k-means on the L2-normalised embeddings, k-means++ seeding, ``budget`` clusters)
  and each cluster gives its most uncertain text, so a batch does not spend its budget on
  near-duplicates of one confusing text (the clustering idea of Zhdanov 2019, "Diverse
  mini-batch active learning"). Its cost grows as ``factor × budget² × dims`` per k-means
  iteration: a second or so for a budget of 400 at factor 10 on a CPU, minutes for budgets
  of thousands.

``quotas`` (optional) balance the picks over predicted classes and steer them: a predicted
class gets at most its quota (the planner gives weak and confused classes more, as PGKD
generation's quotas do); what a class cannot fill goes to the most uncertain of the rest.
Without quotas the ranking alone decides. Ties break by position, so a selection is
deterministic given its inputs and seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("random", "margin", "entropy", "diverse")
KMEANS_ITERATIONS = 25


@dataclass(frozen=True)
class Candidates:
    """The pool texts a selection may pick, as parallel arrays (row i: one text)."""

    ids: Sequence[str]
    preds: Sequence[str]
    margin: np.ndarray  # top-1 minus top-2 probability, in [0, 1]
    entropy: np.ndarray  # of the predicted distribution, in nats
    embeddings: np.ndarray | None = None  # (n, d) where ``diverse`` needs them, else None

    def __len__(self) -> int:
        return len(self.ids)


def uncertainty(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(margin, entropy) of each row of class probabilities."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (texts, classes >= 2), got shape {p.shape}")
    top = np.sort(p, axis=1)[:, ::-1]
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)
    return top[:, 0] - top[:, 1], entropy


def select(cands: Candidates, budget: int, strategy: str, *, seed: int = 0,
           quotas: Mapping[str, int] | None = None, factor: int = 10) -> list[int]:
    """Row indices of ``cands`` to label, at most ``budget``, in the order picked."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; known: {list(STRATEGIES)}")
    budget = min(max(0, budget), len(cands))
    if budget == 0:
        return []
    rng = np.random.default_rng(seed)
    if strategy == "random":
        order = rng.permutation(len(cands))
    elif strategy == "entropy":
        order = np.argsort(-cands.entropy, kind="stable")
    else:
        order = np.argsort(cands.margin, kind="stable")
    if strategy == "diverse":
        order = _diverse(cands, order, budget, factor, rng)
    return _fill(order, cands.preds, budget, quotas)


def _fill(order: np.ndarray, preds: Sequence[str], budget: int,
          quotas: Mapping[str, int] | None) -> list[int]:
    """The first ``budget`` of ``order``, each predicted class within its quota; the rest of
    the budget from the remaining order, whatever their class."""
    ranked = [int(i) for i in order]
    if quotas is None:
        return ranked[:budget]
    left = dict(quotas)
    chosen: list[int] = []
    skipped: list[int] = []
    for i in ranked:
        if len(chosen) == budget:
            break
        if left.get(preds[i], 0) > 0:
            left[preds[i]] -= 1
            chosen.append(i)
        else:
            skipped.append(i)
    return chosen + skipped[: budget - len(chosen)]


def _diverse(cands: Candidates, by_margin: np.ndarray, budget: int, factor: int,
             rng: np.random.Generator) -> np.ndarray:
    """The ``factor × budget`` most uncertain texts, one per k-means cluster first (each
    cluster's most uncertain, clusters in order of that text's margin), then the others."""
    if cands.embeddings is None:
        raise ValueError("the diverse strategy needs the candidates' embeddings")
    pool = by_margin[: max(budget, factor * budget)]
    x = np.asarray(cands.embeddings[pool], dtype=np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    assign = kmeans(x, min(budget, len(pool)), rng)
    firsts: dict[int, int] = {}
    for rank, cluster in enumerate(assign):  # pool is ordered by margin: first = most uncertain
        firsts.setdefault(int(cluster), rank)
    heads = sorted(firsts.values())
    taken = set(heads)
    rest = [r for r in range(len(pool)) if r not in taken]
    tail = by_margin[len(pool):]
    return np.concatenate([pool[heads], pool[rest], tail]).astype(np.int64)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator,
           iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """Cluster of each row of ``x`` (Lloyd's algorithm from k-means++ seeds)."""
    n = len(x)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    dist = ((x - centres[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = dist.sum()
        pick = rng.choice(n, p=dist / total) if total > 0 else rng.integers(n)
        centres[j] = x[pick]
        dist = np.minimum(dist, ((x - centres[j]) ** 2).sum(axis=1))
    assign = np.zeros(n, dtype=np.int64)
    for step in range(iterations):
        new = _nearest(x, centres)
        if step and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(axis=0)
    return assign


def _nearest(x: np.ndarray, centres: np.ndarray, rows: int = 4096) -> np.ndarray:
    """Each row's nearest centre, ``rows`` rows at a time (a bounded distance matrix)."""
    sq = (centres * centres).sum(1)[None, :]
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), rows):
        part = x[start:start + rows]
        out[start:start + rows] = (sq - 2 * part @ centres.T).argmin(axis=1)
    return out
