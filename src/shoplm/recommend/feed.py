"""The personal feed: items bought with the user's recent items first, popular items after,
each with the reason it is there.

Co-occurrence is the strongest source measured so far on all three benchmarks
(docs/benchmarks.md); popularity fills the rest of the list and answers users with no
history, so every request gets a full, explained list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from shoplm.data.interactions import Sequences
from shoplm.recommend.base import Recommender, top_k
from shoplm.recommend.cooccurrence import Contributions, CooccurrenceRecommender
from shoplm.recommend.popularity import PopularityRecommender

if TYPE_CHECKING:
    from shoplm.recommend.ranker import FeedRanker

POPULAR = "popular in the shop"
SIMILAR_TASTE = "liked by shoppers with similar taste"
BOUGHT_TOGETHER = "bought together"
SIMILAR = "similar product"
_TIE_BREAK = 1e-3


class PersonalFeed:
    """Ranks co-occurring items above popular ones; explains each recommendation.

    A collaborative source (ALS) can join co-occurrence: each source's scores are scaled
    by their row maximum and summed with ``collaborative_weight`` (chosen at build time on
    held-out items; on Beauty's validation items weight 0.5 lifted Recall@10 by 6%).

    Business rules and diversity apply on top: items marked unavailable (``available``
    False) are never recommended, and with ``diversity`` > 0 the list is re-ranked by
    maximal marginal relevance so that it does not fill up with one category.

    A learned ``ranker`` (:class:`~shoplm.recommend.ranker.FeedRanker`), when given,
    re-orders the blend's top candidates from the score rows computed here; every other
    item keeps its lower blend score, and reasons still come from the sources.
    """

    def __init__(
        self,
        cooccurrence: CooccurrenceRecommender,
        popularity: PopularityRecommender,
        titles: np.ndarray,
        available: np.ndarray | None = None,
        categories: np.ndarray | None = None,
        diversity: float = 0.0,
        collaborative: Recommender | None = None,
        collaborative_weight: float = 0.0,
        ranker: FeedRanker | None = None,
    ) -> None:
        self.cooccurrence = cooccurrence
        self.popularity = popularity
        self.titles = titles
        self.collaborative = collaborative
        self.collaborative_weight = collaborative_weight
        self.available = available
        self.categories = categories
        self.diversity = diversity
        self.ranker = ranker

    def recommend(
        self, histories: Sequences, k: int
    ) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """Top ``k`` unseen items per history, their scores and one reason per item."""
        terms = self.cooccurrence.contributions(histories)
        together = terms.dense()
        parts: dict[str, np.ndarray] = {}
        scores = blend = self._blend(histories, together, parts)
        rows = np.repeat(np.arange(len(histories)), histories.lengths)
        scores[rows, histories.items] = -np.inf
        if self.available is not None:
            scores[:, ~self.available] = -np.inf
        top: tuple[np.ndarray, np.ndarray] | None = None
        if self.ranker:
            scores, top_ids, top_scores = self.ranker.rerank_top(
                self, histories, blend, together, parts.get("als"), masked=True
            )
            if k <= top_ids.shape[1]:
                top = (top_ids[:, :k], top_scores[:, :k])
        if self.diversity > 0 and self.categories is not None:
            ids, best = diversify(scores.astype(np.float32), self.categories, k, self.diversity)
        elif top is not None:  # the top of the re-ranked scores: no second search
            ids, best = top
        else:
            ids, best = top_k(scores.astype(np.float32), k)
        # the reason is the source's: re-ranked items are explained by their blend score
        sources = best if scores is blend else _scores_at(blend, ids)
        return ids, best, self._reasons(ids, sources, terms)

    def score(self, histories: Sequences) -> np.ndarray:
        """The feed's score of every item (history not yet removed), for evaluation.

        With a ranker, history and unavailable items are -inf and the re-ranked candidates
        score above every other item, as in :meth:`recommend`.
        """
        together = self.cooccurrence.score(histories)
        parts: dict[str, np.ndarray] = {}
        scores = self._blend(histories, together, parts).astype(np.float32)
        if self.ranker:
            scores = self.ranker.rerank(self, histories, scores, together, parts.get("als"))
        return scores

    def _blend(
        self,
        histories: Sequences,
        together: np.ndarray,
        parts: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        # recommended items land in [1, 2], popular-only ones in [0, 0.001]: popularity
        # never outranks the personal sources and only breaks near-ties (a larger share
        # reorders co-occurring items: 0.5 cost 0.021 Recall@10 on Online Retail)
        relevance = together / _row_max(together)
        weight = self.collaborative_weight if self.collaborative is not None else 0.0
        if weight > 0:
            extra = self.collaborative.score(histories)  # type: ignore[union-attr]
            if parts is not None:  # kept for the ranker's features
                parts["als"] = extra
            relevance = (relevance + weight * extra / _row_max(np.abs(extra))) / (1.0 + weight)
        scores = np.where(relevance > 0, 1.0 + relevance, 0.0)
        popular = self.popularity.score(histories)
        return scores + _TIE_BREAK * popular / _row_max(popular)

    def _reasons(self, ids: np.ndarray, best: np.ndarray, terms: Contributions) -> list[list[str]]:
        # a co-occurring item names the history item that brings the largest share of its
        # score; the rest were placed by the collaborative source (score >= 1) or popularity
        rows = np.repeat(np.arange(len(ids)), ids.shape[1])
        sources = terms.strongest_sources(rows, np.maximum(ids, 0).ravel()).reshape(ids.shape)
        other = np.where(best >= 1.0, SIMILAR_TASTE, POPULAR)
        reasons = []
        for row_ids, row_sources, row_other in zip(ids, sources, other, strict=True):
            listed = row_ids >= 0
            reasons.append(
                [
                    f"bought together with {self.titles[s] or 'an earlier item'}"
                    if s >= 0
                    else str(o)
                    for s, o in zip(row_sources[listed], row_other[listed], strict=True)
                ]
            )
        return reasons


def diversify(
    scores: np.ndarray, categories: np.ndarray, k: int, diversity: float, pool: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` by maximal marginal relevance over each row's best ``pool`` items.

    Each step takes the candidate maximising ``(1 - diversity) * relevance - diversity *
    redundancy``, where relevance is the score scaled to [0, 1] within the pool and
    redundancy is 1 when a chosen item already has the candidate's category (code < 0: no
    category, never redundant). Vectorised over rows: ``k`` steps of (rows x pool) arrays.
    """
    ids, best = top_k(scores, max(pool, k))
    finite = np.isfinite(best)
    low = np.where(finite, best, np.inf).min(axis=1, keepdims=True)
    high = np.where(finite, best, -np.inf).max(axis=1, keepdims=True)
    relevance = np.where(finite, (best - low) / np.maximum(high - low, 1e-12), -np.inf)
    cats = np.where(ids >= 0, categories[np.maximum(ids, 0)], -1)
    redundancy = np.zeros(ids.shape, dtype=np.float32)
    rows = np.arange(len(ids))
    picks = np.zeros((len(ids), k), dtype=np.int64)
    valid = np.zeros((len(ids), k), dtype=bool)
    for step in range(k):
        value = (1.0 - diversity) * relevance - diversity * redundancy
        pick = np.argmax(value, axis=1)
        picks[:, step] = pick
        valid[:, step] = np.isfinite(value[rows, pick])  # else every candidate is used up
        relevance[rows, pick] = -np.inf  # taken
        chosen = cats[rows, pick]
        redundancy = np.maximum(redundancy, (cats == chosen[:, None]) & (chosen[:, None] >= 0))
    chosen_ids = np.take_along_axis(ids, picks, axis=1)
    chosen_scores = np.take_along_axis(best, picks, axis=1)
    return np.where(valid, chosen_ids, -1), np.where(valid, chosen_scores, -np.inf)


def _scores_at(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``scores`` of each row's ``ids``; -inf where the id is -1 (padding)."""
    found = np.take_along_axis(scores, np.maximum(ids, 0), axis=1)
    return np.where(ids >= 0, found, -np.inf).astype(np.float32)


def _row_max(scores: np.ndarray) -> np.ndarray:
    return np.maximum(scores.max(axis=1, keepdims=True), 1e-12)


def similar_items(
    cooccurrence: CooccurrenceRecommender,
    popularity: PopularityRecommender,
    item_vectors: np.ndarray | None,
    item_ids: np.ndarray,
    k: int,
    available: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Items to show next to each item: bought together first, then the nearest products
    by text embedding, then popular ones; -1 in ``item_ids`` (an unknown item) gets popular.
    Items marked unavailable are never shown.
    """
    known = item_ids >= 0
    anchors = np.where(known, item_ids, 0)
    together, _ = cooccurrence.similar_items(anchors, k)
    together[~known] = -1
    n_items = cooccurrence.n_items
    scores = np.zeros((len(item_ids), n_items), dtype=np.float32)
    rows = np.repeat(np.arange(len(item_ids)), k)
    listed = together.ravel() >= 0
    # bands as in the feed: bought together in [2, 3), similar text in [1, 2), popular below
    scores[rows[listed], together.ravel()[listed]] = (
        3.0 - np.tile(np.arange(k), len(item_ids))[listed] / k
    )
    if item_vectors is not None:
        cosine = item_vectors[anchors] @ item_vectors.T
        similar = np.where(known[:, None], 1.0 + np.clip(cosine, 0.0, 1.0) * 0.999, 0.0)
        scores = np.maximum(scores, similar.astype(np.float32))
    popular = popularity.popularity_ / max(float(popularity.popularity_.max()), 1e-12)
    scores = np.maximum(scores, 0.5 * popular[None, :])
    scores[np.flatnonzero(known), item_ids[known]] = -np.inf
    if available is not None:
        scores[:, ~available] = -np.inf
    ids, best = top_k(scores, k)
    names = np.select([best >= 2.0, best >= 1.0], [BOUGHT_TOGETHER, SIMILAR], POPULAR)
    reasons = [names[r][ids[r] >= 0].tolist() for r in range(len(ids))]
    return ids, best, reasons
