"""Maximal marginal relevance in the personal feed."""

from __future__ import annotations

import numpy as np

from shoplm.recommend.feed import diversify


def test_diversity_zero_keeps_the_relevance_order() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1, -np.inf]], dtype=np.float32)
    ids, best = diversify(scores, np.array([0, 0, 0, 1, 1]), k=3, diversity=0.0)
    assert ids.tolist() == [[0, 1, 2]]
    assert np.allclose(best, [[0.9, 0.8, 0.7]])


def test_diversity_brings_in_another_category_without_unavailable_items() -> None:
    scores = np.array(
        [[0.9, 0.85, 0.8, 0.6, -np.inf], [0.5, 0.4, -np.inf, -np.inf, -np.inf]], dtype=np.float32
    )
    categories = np.array([0, 0, 0, 1, 2])
    ids, best = diversify(scores, categories, k=3, diversity=0.5)
    assert ids[0].tolist() == [0, 3, 1]  # category 1 moves up; category 2 item is excluded
    # a row with two candidates is padded, never filled with excluded items
    assert ids[1].tolist() == [0, 1, -1] and np.isneginf(best[1, 2])


def test_items_without_a_category_are_never_redundant() -> None:
    scores = np.array([[0.9, 0.8, 0.7]], dtype=np.float32)
    ids, _ = diversify(scores, np.array([-1, -1, 0]), k=3, diversity=0.9)
    assert ids.tolist() == [[0, 1, 2]]
