"""Active-learning selection (workers/labelling/selection.py)."""

from __future__ import annotations

import numpy as np
import pytest

from workers.labelling.selection import Candidates, kmeans, select, uncertainty


def _cands(margins: list[float], preds: list[str] | None = None,
           embeddings: np.ndarray | None = None) -> Candidates:
    m = np.array(margins)
    return Candidates([f"p{i}" for i in range(len(m))], preds or ["a"] * len(m), m, 1 - m,
                      embeddings)


def test_uncertainty_is_margin_and_entropy() -> None:
    margin, entropy = uncertainty(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.7, 0.2, 0.1]]))
    assert margin == pytest.approx([0.0, 1.0, 0.5])
    assert entropy[0] == pytest.approx(np.log(2)) and entropy[1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="classes >= 2"):
        uncertainty(np.array([0.2, 0.8]))


def test_margin_and_entropy_take_the_most_uncertain_first() -> None:
    cands = _cands([0.9, 0.1, 0.5, 0.05, 0.7])
    assert select(cands, 3, "margin") == [3, 1, 2]
    assert select(cands, 2, "entropy") == [3, 1]
    assert select(cands, 99, "margin") == [3, 1, 2, 4, 0], "never more than there are"
    assert select(cands, 0, "margin") == []


def test_random_is_seeded_and_spreads_over_the_pool() -> None:
    cands = _cands([0.5] * 1000)
    a, b = select(cands, 100, "random", seed=3), select(cands, 100, "random", seed=3)
    assert a == b != select(cands, 100, "random", seed=4)
    assert len(set(a)) == 100 and 300 < np.mean(a) < 700


def test_quotas_balance_over_predicted_classes_and_the_rest_spills_over() -> None:
    preds = ["a"] * 6 + ["b"] * 2 + ["c"] * 2
    margins = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.5, 0.6, 0.7, 0.8]
    cands = _cands(margins, preds)
    assert select(cands, 4, "margin") == [0, 1, 2, 3], "unbalanced: all of a"
    got = select(cands, 6, "margin", quotas={"a": 2, "b": 2, "c": 2})
    assert sorted(preds[i] for i in got) == ["a", "a", "b", "b", "c", "c"]
    short = select(cands, 6, "margin", quotas={"a": 1, "b": 1, "c": 1})
    assert short[:3] == [0, 6, 8] and short[3:] == [1, 2, 3], "unfilled budget: most uncertain"


def test_diverse_takes_one_per_cluster_before_a_second_from_any() -> None:
    """Five tight clusters; the 40 most uncertain texts all sit in cluster 0: margin spends
    the whole budget there, diverse takes the most uncertain text of every cluster."""
    rng = np.random.default_rng(0)
    centres = np.eye(5) * 10
    cluster = np.repeat(np.arange(5), 40)
    x = centres[cluster] + rng.normal(scale=0.1, size=(200, 5))
    margins = np.where(cluster == 0, 0.01, 0.2) + np.arange(200) / 10_000
    cands = Candidates([f"p{i}" for i in range(200)], ["a"] * 200, margins, 1 - margins, x)
    assert {cluster[i] for i in select(cands, 5, "margin")} == {0}
    got = select(cands, 5, "diverse", factor=40)
    assert sorted(cluster[i] for i in got) == [0, 1, 2, 3, 4]
    assert all(i == 40 * cluster[i] for i in got), "each cluster's most uncertain text"
    with pytest.raises(ValueError, match="embeddings"):
        select(_cands([0.1, 0.2]), 1, "diverse")


def test_kmeans_separates_clear_clusters() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))])
    assign = kmeans(x, 2, rng)
    assert len(set(assign[:30])) == len(set(assign[30:])) == 1 and assign[0] != assign[30]


def test_an_unknown_strategy_is_named() -> None:
    with pytest.raises(ValueError, match="unknown selection strategy 'badge'"):
        select(_cands([0.1]), 1, "badge")
