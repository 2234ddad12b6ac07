"""Hybrid retrieval: lexical and dense candidates fused into one ranking.

Lexical search is precise on exact words (model numbers, brands) and blind to paraphrase;
dense search is the opposite, so their union beats either. Two fusions are offered:

- reciprocal rank fusion (Cormack et al. 2009), ``sum 1 / (rrf_k + rank)``: needs neither
  comparable scores nor training, and weighs both lists equally;
- a convex combination ``w * dense + (1 - w) * lexical`` of per-query normalised scores,
  whose weight (and normalisation) :meth:`HybridRetriever.fit_weights` learns from judged
  queries. Items found by one retriever only are scored exactly by the other, not imputed.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from shoplm.eval.metrics import Qrels, ndcg_at_k
from shoplm.recommend.base import top_k
from shoplm.search.base import Retriever
from shoplm.search.dense import DenseRetriever
from shoplm.search.lexical import LexicalRetriever

NORMALIZATIONS = ("minmax", "zscore")
METHODS = ("rrf", "convex")


def union_candidates(*id_lists: np.ndarray) -> np.ndarray:
    """Row-wise union of several ``(n, k_i)`` id lists, each id once, -1 padded.

    Order inside a row is by id; fusion re-ranks anyway.
    """
    stacked = np.sort(np.concatenate(id_lists, axis=1), axis=1)
    repeated = np.zeros_like(stacked, dtype=bool)
    repeated[:, 1:] = stacked[:, 1:] == stacked[:, :-1]
    return np.where(repeated, -1, stacked)


def reciprocal_rank_fusion(
    candidates: np.ndarray, id_lists: Sequence[np.ndarray], rrf_k: float = 60.0
) -> np.ndarray:
    """RRF score of every candidate: sum over the lists that hold it of ``1 / (rrf_k + rank)``.

    ``rank`` is 1-based; -1 candidates score -inf.
    """
    scores = np.zeros(candidates.shape, dtype=np.float64)
    for ids in id_lists:
        # Per row, find each candidate in the list by sorting the list once.
        order = np.argsort(ids, axis=1, kind="stable")
        sorted_ids = np.take_along_axis(ids, order, axis=1)
        pos = np.minimum(_rowwise_searchsorted(sorted_ids, candidates), ids.shape[1] - 1)
        found = (np.take_along_axis(sorted_ids, pos, axis=1) == candidates) & (candidates >= 0)
        rank = np.take_along_axis(order, pos, axis=1) + 1
        scores += np.where(found, 1.0 / (rrf_k + rank), 0.0)
    return np.where(candidates >= 0, scores, -np.inf).astype(np.float32)


def _rowwise_searchsorted(sorted_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted`` per row, vectorised by offsetting each row into its own range."""
    low = min(int(sorted_rows.min(initial=0)), int(values.min(initial=0)))
    span = max(int(sorted_rows.max(initial=0)), int(values.max(initial=0))) - low + 1
    offsets = np.arange(sorted_rows.shape[0], dtype=np.int64)[:, None] * span
    flat = np.searchsorted((sorted_rows - low + offsets).ravel(), (values - low + offsets).ravel())
    return flat.reshape(values.shape) - np.arange(values.shape[0])[:, None] * sorted_rows.shape[1]


def normalize_scores(scores: np.ndarray, valid: np.ndarray, how: str) -> np.ndarray:
    """Per-row ``minmax`` (to [0, 1]) or ``zscore`` normalisation over the ``valid`` cells.

    A row whose valid scores are all equal carries no preference and normalises to 0.
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {how!r}")
    masked = np.where(valid, scores.astype(np.float64), np.nan)
    # All-NaN rows (queries with no candidate) are expected; numpy would warn about each.
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if how == "minmax":
            low = np.nanmin(masked, axis=1, keepdims=True)
            spread = np.nanmax(masked, axis=1, keepdims=True) - low
            centred = masked - low
        else:
            spread = np.nanstd(masked, axis=1, keepdims=True)
            centred = masked - np.nanmean(masked, axis=1, keepdims=True)
        normalised = np.where(spread > 0, centred / spread, 0.0)
    return np.where(valid, normalised, 0.0)


class HybridRetriever(Retriever):
    """Lexical + dense candidates (``depth`` from each), fused by RRF or a learnt blend.

    ``weight`` is the dense share of the convex blend; :meth:`fit_weights` sets it (and the
    normalisation) from judged queries. ``fit`` fits both retrievers in place, like a
    scikit-learn pipeline fits its steps.
    """

    def __init__(
        self,
        lexical: LexicalRetriever | None = None,
        dense: DenseRetriever | None = None,
        method: str = "convex",
        weight: float = 0.5,
        normalization: str = "minmax",
        rrf_k: float = 60.0,
        depth: int = 100,
        weight_grid: Sequence[float] = tuple(np.round(np.linspace(0.0, 1.0, 21), 2)),
    ) -> None:
        self.lexical = lexical
        self.dense = dense
        self.method = method
        self.weight = weight
        self.normalization = normalization
        self.rrf_k = rrf_k
        self.depth = depth
        self.weight_grid = weight_grid

    def get_params(self) -> dict[str, object]:
        return {
            "method": self.method,
            "weight": self.weight,
            "normalization": self.normalization,
            "rrf_k": self.rrf_k,
            "depth": self.depth,
            "weight_grid": [float(w) for w in self.weight_grid],
        }

    def fit(self, items: pd.DataFrame) -> Self:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        self.lexical_ = (self.lexical or LexicalRetriever()).fit(items)
        self.dense_ = (self.dense or DenseRetriever()).fit(items)
        return self

    @classmethod
    def from_fitted(
        cls, lexical: LexicalRetriever, dense: DenseRetriever, **params: object
    ) -> HybridRetriever:
        """A hybrid over retrievers that are already fitted (no second indexing pass)."""
        model = cls(lexical, dense, **params)  # type: ignore[arg-type]
        model.lexical_, model.dense_ = lexical, dense
        return model

    def candidates(self, queries: Sequence[str], depth: int | None = None) -> dict[str, np.ndarray]:
        """Everything fusion needs for a batch: the union of both top-``depth`` lists, each
        list, and both retrievers' exact scores on every candidate (``depth`` defaults to
        the fitted one; a filtered search asks for more).

        Each query is analysed and encoded once: the lexical scores of the whole catalogue
        give its top list and the scores of the dense-only candidates, and the query vector
        gives the dense top list and the scores of the lexical-only candidates.
        """
        queries = list(queries)
        depth = depth or self.depth
        n = len(queries)
        lexical_ids = np.full((n, depth), -1, dtype=np.int64)
        dense_ids = np.full((n, depth), -1, dtype=np.int64)
        union = np.full((n, 2 * depth), -1, dtype=np.int64)
        lexical = np.zeros(union.shape, dtype=np.float32)
        dense = np.zeros(union.shape, dtype=np.float32)
        for rows, lexical_scores in self.lexical_.scorers(queries):
            route, vectors = self.dense_.encode_queries(queries[rows])
            lexical_ids[rows], _ = lexical_scores.top(depth)
            dense_ids[rows], _ = self.dense_.search(route, vectors, depth)
            union[rows] = union_candidates(lexical_ids[rows], dense_ids[rows])
            lexical[rows] = lexical_scores.at(union[rows])
            dense[rows] = self.dense_.score_vectors(route, vectors, union[rows])
        return {
            "ids": union,
            "lexical_ids": lexical_ids,
            "dense_ids": dense_ids,
            "lexical": lexical,
            "dense": dense,
        }

    def _fuse(
        self, found: dict[str, np.ndarray], method: str, weight: float, normalization: str
    ) -> np.ndarray:
        ids = found["ids"]
        if method == "rrf":
            return reciprocal_rank_fusion(
                ids, [found["lexical_ids"], found["dense_ids"]], self.rrf_k
            )
        valid = ids >= 0
        blended = weight * normalize_scores(found["dense"], valid, normalization) + (
            1.0 - weight
        ) * normalize_scores(found["lexical"], valid, normalization)
        return np.where(valid, blended, -np.inf).astype(np.float32)

    def fuse(self, found: dict[str, np.ndarray]) -> np.ndarray:
        """Fused scores of :meth:`candidates` output with the fitted method and weight."""
        return self._fuse(found, self.method, self.weight, self.normalization)

    def _rank(
        self, found: dict[str, np.ndarray], scores: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        order, best = top_k(scores, k)
        ids = np.where(
            order >= 0, np.take_along_axis(found["ids"], np.maximum(order, 0), axis=1), -1
        )
        return ids, best

    def retrieve(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.candidates(queries)
        return self._rank(found, self.fuse(found), k)

    def fit_weights(self, queries: Sequence[str], qrels: Qrels, k: int = 10) -> Self:
        """Learn the convex blend (weight and normalisation) maximising mean NDCG@``k``.

        ``qrels`` is a CSR ``(len(queries), n_items)`` of graded gains. Candidates and scores
        are computed once; each grid point is then a cheap re-ranking. Ties on NDCG go to the
        weight nearest 0.5, so that a flat optimum does not lean on one retriever by accident.
        """
        found = self.candidates(queries)
        results = []
        for normalization, weight in itertools.product(NORMALIZATIONS, self.weight_grid):
            ids, _ = self._rank(found, self._fuse(found, "convex", weight, normalization), k)
            quality = float(np.nanmean(ndcg_at_k(ids, qrels, k)))
            results.append((quality, -abs(weight - 0.5), normalization, float(weight)))
        best = max(results)
        self.method, self.normalization, self.weight = "convex", best[2], best[3]
        self.weight_search_ = [
            {"normalization": n, "weight": w, f"ndcg@{k}": q} for q, _, n, w in results
        ]
        return self

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.lexical_.save(path / "lexical")
        self.dense_.save(path / "dense")
        (path / "hybrid.json").write_text(json.dumps({"params": self.get_params()}, indent=1))

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        params = json.loads((path / "hybrid.json").read_text())["params"]
        model = cls(**params)
        model.lexical_ = LexicalRetriever.load(path / "lexical")
        model.dense_ = DenseRetriever.load(path / "dense")
        return model
