"""Hybrid fusion: the union of two candidate lists re-ranked by RRF or a learnt blend."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from shoplm.recommend.base import top_k
from shoplm.search.dense import DenseRetriever
from shoplm.search.fusion import (
    HybridRetriever,
    normalize_scores,
    reciprocal_rank_fusion,
    union_candidates,
)
from shoplm.search.lexical import LexicalRetriever, ScoreRows, gather_scores


class FixedLexical:
    """Stands in for the lexical retriever: a given (queries x items) score table."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores.astype(np.float32)

    def scorers(self, queries: Sequence[str]) -> Iterator[tuple[slice, ScoreRows]]:
        yield slice(0, len(queries)), ScoreRows(self.scores[: len(queries)])


class FixedDense(FixedLexical):
    """Stands in for the dense retriever: a query's "vector" is its row in the table."""

    def encode_queries(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(queries), dtype=np.int64), np.arange(len(queries))[:, None]

    def search(
        self, route: np.ndarray, vectors: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return top_k(self.scores[vectors[:, 0]], k)

    def score_vectors(self, route: np.ndarray, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return gather_scores(self.scores[vectors[:, 0]], ids)


def hybrid_of(lexical: np.ndarray, dense: np.ndarray, **params: object) -> HybridRetriever:
    stand_ins = FixedLexical(lexical), FixedDense(dense)
    return HybridRetriever.from_fitted(*stand_ins, **params)  # type: ignore[arg-type]


def test_union_keeps_each_candidate_once() -> None:
    union = union_candidates(np.array([[3, 1, -1], [0, 2, 4]]), np.array([[1, 5], [4, 4]]))
    assert [sorted(row[row >= 0].tolist()) for row in union] == [[1, 3, 5], [0, 2, 4]]


def test_rrf_matches_definition() -> None:
    rng = np.random.default_rng(0)
    lists = [
        np.stack([rng.permutation(50)[:10] for _ in range(20)]),
        np.stack([rng.permutation(50)[:15] for _ in range(20)]),
    ]
    lists[0][3, 7:] = -1  # a short list
    candidates = union_candidates(*lists)
    fused = reciprocal_rank_fusion(candidates, lists, rrf_k=60)
    for q in range(20):
        for j, item in enumerate(candidates[q]):
            if item < 0:
                assert np.isneginf(fused[q, j])
                continue
            expected = sum(
                1.0 / (60 + np.flatnonzero(ids[q] == item)[0] + 1)
                for ids in lists
                if item in ids[q]
            )
            assert fused[q, j] == pytest.approx(expected, rel=1e-6)


def test_normalisation_ignores_invalid_cells_and_flat_rows() -> None:
    scores = np.array([[2.0, 4.0, 99.0], [5.0, 5.0, 5.0]])
    valid = np.array([[True, True, False], [True, True, True]])
    np.testing.assert_allclose(normalize_scores(scores, valid, "minmax"), [[0, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(normalize_scores(scores, valid, "zscore"), [[-1, 1, 0], [0, 0, 0]])


def test_fit_weights_leans_on_the_retriever_that_is_right() -> None:
    rng = np.random.default_rng(1)
    n_queries, n_items = 40, 30
    relevant = rng.integers(0, n_items, n_queries)
    qrels = sp.csr_matrix(
        (np.full(n_queries, 2.0), (np.arange(n_queries), relevant)), shape=(n_queries, n_items)
    )
    good = rng.random((n_queries, n_items))
    good[np.arange(n_queries), relevant] += 1.0  # the relevant item on top
    noise = rng.random((n_queries, n_items))
    queries = [f"q{i}" for i in range(n_queries)]

    dense_right = hybrid_of(noise, good).fit_weights(queries, qrels)
    lexical_right = hybrid_of(good, noise).fit_weights(queries, qrels)
    assert dense_right.weight > 0.5 > lexical_right.weight
    ids, _ = dense_right.retrieve(queries, 1)
    assert (ids[:, 0] == relevant).all()
    assert len(dense_right.weight_search_) == 2 * len(dense_right.weight_grid)


def test_fusion_scores_items_found_by_one_side_only() -> None:
    # Item 2 is the lexical favourite but beyond the dense list's depth; its dense score
    # must be the real one, not a "missing" default, for the convex blend to be honest.
    lexical = np.array([[0.0, 1.0, 9.0, -np.inf]])
    dense = np.array([[0.9, 0.8, 0.7, 0.1]])
    model = hybrid_of(lexical, dense, depth=1, weight=0.5)
    found = model.candidates(["q"])
    assert sorted(found["ids"][0][found["ids"][0] >= 0].tolist()) == [0, 2]
    column = found["ids"][0].tolist().index(2)
    assert found["dense"][0, column] == pytest.approx(0.7)


def test_rrf_and_convex_rank_union_of_lists() -> None:
    lexical = np.array([[3.0, -np.inf, 1.0, -np.inf]])
    dense = np.array([[0.1, 0.9, 0.2, 0.0]])
    for method in ("rrf", "convex"):
        ids, scores = hybrid_of(lexical, dense, method=method, depth=2).retrieve(["q"], 4)
        assert sorted(ids[0][ids[0] >= 0].tolist()) == [0, 1, 2]
        assert ids[0, 3] == -1 and (np.diff(scores[0][:3]) <= 0).all()


def test_real_hybrid_save_load_round_trip(tmp_path: Path) -> None:
    items = pd.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["Cordless drill", "Garden hose", "Kitchen sink", "Bathroom ceiling light"],
            "brand": ["Makita", "Gardena", "", "Philips"],
        }
    )
    # USE keeps this test free of torch; the MiniLM save path is covered in test_search_dense.
    dense = DenseRetriever(encoder="use", show_progress=False)
    model = HybridRetriever(LexicalRetriever(), dense, method="convex", weight=0.7).fit(items)
    queries = ["drill", "something to water plants", "makita", ""]
    model.save(tmp_path / "hybrid")
    loaded = HybridRetriever.load(tmp_path / "hybrid")
    for got, expected in zip(loaded.retrieve(queries, 3), model.retrieve(queries, 3), strict=True):
        np.testing.assert_array_equal(got, expected)
    ids, _ = loaded.retrieve(queries, 3)
    assert ids[0, 0] == 0 and ids[1, 0] == 1 and ids[2, 0] == 0
    assert (ids[3] == -1).all()
