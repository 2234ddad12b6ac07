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


def test_a_collaborative_source_fills_in_with_its_own_reason() -> None:
    from shoplm.data.interactions import Interactions, Sequences
    from shoplm.recommend.als import ALSRecommender
    from shoplm.recommend.cooccurrence import CooccurrenceRecommender
    from shoplm.recommend.feed import POPULAR, SIMILAR_TASTE, PersonalFeed
    from shoplm.recommend.popularity import PopularityRecommender

    rng = np.random.default_rng(0)
    # two taste groups over items 0-9 and 10-19; nobody buys across groups
    rows = [rng.choice(10, 4, replace=False) + 10 * (u % 2) for u in range(200)]
    seqs = Sequences(np.arange(0, 801, 4), np.concatenate(rows))
    interactions = Interactions.from_sequences(seqs, 20)
    cooccurrence = CooccurrenceRecommender(window=1).fit(interactions)
    als = ALSRecommender(factors=4, regularization=0.1, iterations=10, num_threads=1)
    feed = PersonalFeed(
        cooccurrence,
        PopularityRecommender().fit(interactions),
        titles=np.array([f"item {i}" for i in range(20)], dtype=object),
        collaborative=als.fit(interactions),
        collaborative_weight=1.0,
    )
    ids, _, reasons = feed.recommend(Sequences(np.array([0, 1, 1]), np.array([3])), 9)
    assert set(ids[0].tolist()) <= set(range(10)) - {3}  # the same taste group first
    assert SIMILAR_TASTE in reasons[0] or any(r.startswith("bought together") for r in reasons[0])
    _, _, empty = feed.recommend(Sequences(np.array([0, 0]), np.zeros(0, dtype=np.int64)), 3)
    assert empty[0] == [POPULAR] * 3
