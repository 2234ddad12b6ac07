"""Ranking metrics for search and recommendation, vectorised over queries.

Conventions shared by every function here:

* ``ranked`` is an int array ``(n_queries, K)`` of item ids, best first, padded on the right
  with -1 (what :func:`shoplm.recommend.base.top_k` and the retrievers return). Padding is
  never a hit, and an item may appear at most once per list (a repeat would be counted twice
  and push recall above 1, so it is rejected).
* ``qrels`` holds the judgements: a ``scipy.sparse`` CSR matrix ``(n_queries, n_items)`` of
  graded, non-negative gains (0 = not relevant), or a 1-D int array of one target item per
  query (gain 1; -1 = no target), see :func:`qrels_from_targets`.
* Every metric returns one float64 value per query, not a mean, so callers can bootstrap
  confidence intervals or run paired tests. Where a metric is undefined for a query with no
  relevant item (recall, NDCG, MRR, AP, AUC) the value is NaN; aggregate with ``np.nanmean``
  or use :func:`mean_metrics`, which evaluates every metric on the same set of queries.

Leave-one-out evaluation over the full catalogue skips ``ranked`` altogether: it scores every
item, takes the rank of the single held-out target with :func:`target_ranks`, and turns ranks
into metrics with the ``*_from_ranks`` functions, which is exact and cheaper than a top-k.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

Qrels = sp.csr_matrix | sp.csr_array | np.ndarray


def qrels_from_targets(targets: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Judgements for single-target protocols: item ``targets[q]`` has gain 1 for query ``q``.

    A target of -1 gives the query no relevant item, so it drops out of the NaN-aware means
    instead of silently scoring zero.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if targets.ndim != 1:
        raise ValueError(f"targets must be 1-D, got shape {targets.shape}")
    if np.any(targets < -1) or np.any(targets >= n_items):
        raise ValueError(f"targets must lie in [-1, {n_items})")
    rows = np.flatnonzero(targets >= 0)
    data = np.ones(rows.size, dtype=np.float64)
    return sp.csr_matrix((data, (rows, targets[rows])), shape=(targets.size, n_items))


def _as_ranked(ranked: np.ndarray) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must be a 2-D int array, got {ranked.dtype} {ranked.shape}")
    return ranked.astype(np.int64, copy=False)


def _as_qrels(qrels: Qrels, ranked: np.ndarray) -> sp.csr_matrix:
    """Canonical CSR judgements (sorted, no duplicate entries) without touching the caller's."""
    if not sp.issparse(qrels):
        targets = np.asarray(qrels)
        n_items = int(max(targets.max(initial=-1), ranked.max(initial=-1))) + 1
        qrels = qrels_from_targets(targets, n_items)
    qrels = sp.csr_matrix(qrels)
    if not qrels.has_canonical_format:
        qrels = qrels.copy()
        qrels.sum_duplicates()
    if qrels.shape[0] != ranked.shape[0]:
        raise ValueError(f"ranked has {ranked.shape[0]} queries but qrels {qrels.shape[0]}")
    if qrels.nnz and qrels.data.min() < 0:
        raise ValueError("qrels gains must be non-negative")
    if ranked.size and (ranked.min() < -1 or ranked.max() >= qrels.shape[1]):
        raise ValueError(f"ranked ids must lie in [-1, {qrels.shape[1]}), -1 being padding")
    return qrels


def _row_sums(qrels: sp.csr_matrix, values: np.ndarray) -> np.ndarray:
    """Sum ``values`` (one per stored entry of ``qrels``) within each row."""
    totals = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    return totals[qrels.indptr[1:]] - totals[qrels.indptr[:-1]]


def _entry_rows(qrels: sp.csr_matrix) -> np.ndarray:
    return np.repeat(np.arange(qrels.shape[0], dtype=np.int64), np.diff(qrels.indptr))


def gains_at_ranks(ranked: np.ndarray, qrels: Qrels) -> np.ndarray:
    """Gain of the item at each position of each list, float64 ``(n_queries, K)``.

    Looking every ranked item up in the sparse rows would cost ``n * K`` binary searches over
    the whole judgement table. Instead each list is sorted by item id, which makes the
    ``(query, item)`` keys of all lists one globally sorted array, and the (usually far fewer)
    judged entries are searched in it; the gains found are then written back at their rank.
    """
    ranked = _as_ranked(ranked)
    qrels = _as_qrels(qrels, ranked)
    n, width = ranked.shape
    order = np.argsort(ranked, axis=1)
    by_item = np.take_along_axis(ranked, order, axis=1)
    if np.any((by_item[:, 1:] == by_item[:, :-1]) & (by_item[:, 1:] >= 0)):
        raise ValueError("a ranked list repeats an item")
    # Keys offset by one so that padding (-1) maps to slot 0 of its own row, never to an item.
    stride = qrels.shape[1] + 1
    list_keys = (np.arange(n, dtype=np.int64)[:, None] * stride + (by_item + 1)).ravel()
    judged_keys = _entry_rows(qrels) * stride + qrels.indices.astype(np.int64) + 1
    gains = np.zeros(list_keys.size, dtype=np.float64)
    if list_keys.size:
        pos = np.minimum(np.searchsorted(list_keys, judged_keys), list_keys.size - 1)
        found = list_keys[pos] == judged_keys
        hit = pos[found]  # flat positions in the item-sorted lists
        gains[hit - hit % width + order.ravel()[hit]] = qrels.data[found]
    return gains.reshape(n, width)


def _check_k(k: int) -> int:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return int(k)


def _hits(
    ranked: np.ndarray, qrels: Qrels, k: int | None, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Binary relevance of the top ``k`` positions and the number of relevant items per query."""
    ranked = _as_ranked(ranked)
    qrels = _as_qrels(qrels, ranked)
    top = ranked if k is None else ranked[:, : _check_k(k)]
    hits = gains_at_ranks(top, qrels) > threshold
    n_relevant = _row_sums(qrels, qrels.data > threshold)
    return hits, n_relevant


def _nan_where_no_relevant(values: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return np.where(n_relevant > 0, values, np.nan)


def recall_at_k(ranked: np.ndarray, qrels: Qrels, k: int, threshold: float = 0.0) -> np.ndarray:
    """Share of a query's relevant items (gain > ``threshold``) found in the top ``k``.

    The denominator is all relevant items, not ``min(k, #relevant)``, so recall@k of a query
    with more relevant items than ``k`` cannot reach 1: the usual definition in recommender
    papers. NaN for queries with no relevant item.
    """
    hits, n_relevant = _hits(ranked, qrels, k, threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nan_where_no_relevant(hits.sum(axis=1) / n_relevant, n_relevant)


def hit_rate_at_k(ranked: np.ndarray, qrels: Qrels, k: int, threshold: float = 0.0) -> np.ndarray:
    """1 if any of the top ``k`` items is relevant, else 0 (also 0 with no relevant item)."""
    hits, _ = _hits(ranked, qrels, k, threshold)
    return hits.any(axis=1).astype(np.float64)


def precision_at_k(ranked: np.ndarray, qrels: Qrels, k: int, threshold: float = 0.0) -> np.ndarray:
    """Relevant items in the top ``k`` divided by ``k``.

    Always divided by ``k``, even when a list is shorter or padded: a ranker that returns
    fewer items is not rewarded for it (as in trec_eval).
    """
    hits, _ = _hits(ranked, qrels, k, threshold)
    return hits.sum(axis=1) / float(k)


def mrr(
    ranked: np.ndarray, qrels: Qrels, k: int | None = None, threshold: float = 0.0
) -> np.ndarray:
    """Reciprocal rank of the first relevant item in the top ``k`` (whole list if None).

    0 when none is retrieved, NaN when the query has no relevant item at all.
    """
    hits, n_relevant = _hits(ranked, qrels, k, threshold)
    first = hits.argmax(axis=1)
    reciprocal = np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return _nan_where_no_relevant(reciprocal, n_relevant)


def average_precision(
    ranked: np.ndarray, qrels: Qrels, k: int | None = None, threshold: float = 0.0
) -> np.ndarray:
    """Average of precision@i over the ranks i of relevant items in the top ``k``.

    The denominator is ``min(#relevant, k)`` when ``k`` is given, so a perfect top-k scores 1
    even when more relevant items exist; with ``k=None`` it is ``#relevant`` (trec_eval's
    MAP over the retrieved list). NaN when the query has no relevant item.
    """
    hits, n_relevant = _hits(ranked, qrels, k, threshold)
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    precision_at_hits = np.cumsum(hits, axis=1) / ranks * hits
    denominator = n_relevant if k is None else np.minimum(n_relevant, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nan_where_no_relevant(precision_at_hits.sum(axis=1) / denominator, n_relevant)


Gain = Literal["linear", "exponential"]


def _transform_gain(gains: np.ndarray, gain: Gain) -> np.ndarray:
    if gain == "linear":
        return gains.astype(np.float64, copy=False)
    if gain == "exponential":
        return np.exp2(gains) - 1.0
    raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")


def _discounts(length: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(length, dtype=np.float64) + 2.0)


def _ideal_dcg(qrels: sp.csr_matrix, k: int, gain: Gain) -> np.ndarray:
    """DCG of each query's own best ``k`` judged gains, whether retrieved or not."""
    rows = _entry_rows(qrels)
    gains = _transform_gain(qrels.data, gain)
    order = np.lexsort((-gains, rows))  # rows stay grouped, best gain first within a row
    position = np.arange(rows.size) - qrels.indptr[rows]
    keep = position < k
    weights = gains[order][keep] * _discounts(k)[position[keep]]
    return np.bincount(rows[keep], weights=weights, minlength=qrels.shape[0])


def ndcg_at_k(ranked: np.ndarray, qrels: Qrels, k: int, gain: Gain = "linear") -> np.ndarray:
    """Normalised DCG of the top ``k``, ``DCG = sum_i g_i / log2(i + 2)`` for 0-based ``i``.

    The ideal DCG comes from the query's best ``k`` gains in ``qrels``, not from the items the
    ranker happened to retrieve, so missing a highly relevant item is penalised.
    ``gain="exponential"`` uses ``2**g - 1`` to stress the top grades (Burges et al. 2005).
    NaN for queries with no positive gain.
    """
    ranked = _as_ranked(ranked)
    qrels = _as_qrels(qrels, ranked)
    top = ranked[:, : _check_k(k)]
    dcg = _transform_gain(gains_at_ranks(top, qrels), gain) @ _discounts(top.shape[1])
    ideal = _ideal_dcg(qrels, k, gain)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / ideal, np.nan)


def auc_per_query(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``scores`` against the binary ``labels`` (non-zero = positive).

    Computed from ranks (Mann-Whitney U) with tied scores given their average rank, i.e. a
    tied positive/negative pair counts one half. NaN for rows with only one class.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) != 0
    if scores.ndim != 2 or scores.shape != positive.shape:
        raise ValueError(f"scores {scores.shape} and labels {positive.shape} must be 2-D alike")
    ranks = rankdata(scores, method="average", axis=1)
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = scores.shape[1] - n_pos
    u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos * n_neg > 0, u / (n_pos * n_neg), np.nan)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of one score vector; see :func:`auc_per_query` for ties and degenerate input."""
    return float(auc_per_query(np.asarray(scores)[None, :], np.asarray(labels)[None, :])[0])


def target_ranks(
    scores: np.ndarray,
    targets: np.ndarray,
    ties: Literal["optimistic", "pessimistic"] = "optimistic",
) -> np.ndarray:
    """0-based rank of each query's target item among all items, int64 ``(n_queries,)``.

    The rank is the number of items scored strictly higher than the target, so ties go in the
    target's favour; ``ties="pessimistic"`` counts items scored at least as high (the target
    itself excepted), and the gap between the two shows how much a model leans on ties (a
    constant scorer is perfect when optimistic). Items that must not be recommended (already
    seen) should be set to ``-inf`` beforehand; NaN scores never outrank the target.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores {scores.shape} need one target per row, got {targets.shape}")
    if np.any(targets < 0) or np.any(targets >= scores.shape[1]):
        raise ValueError(f"targets must lie in [0, {scores.shape[1]})")
    target_scores = scores[np.arange(scores.shape[0]), targets][:, None]
    if np.isnan(target_scores).any():
        raise ValueError("a target has a NaN score")
    if ties == "optimistic":
        return np.count_nonzero(scores > target_scores, axis=1).astype(np.int64)
    if ties == "pessimistic":
        return np.count_nonzero(scores >= target_scores, axis=1).astype(np.int64) - 1
    raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")


def hit_rate_from_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 where the target's 0-based rank is inside the top ``k``, else 0."""
    return (np.asarray(ranks) < _check_k(k)).astype(np.float64)


def ndcg_from_ranks(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of a single target: ``1 / log2(rank + 2)`` inside the top ``k``, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < _check_k(k), 1.0 / np.log2(ranks + 2.0), 0.0)


def mrr_from_ranks(ranks: np.ndarray, k: int | None = None) -> np.ndarray:
    """Reciprocal rank ``1 / (rank + 1)`` of a single target, 0 outside the top ``k``."""
    ranks = np.asarray(ranks, dtype=np.float64)
    reciprocal = 1.0 / (ranks + 1.0)
    return reciprocal if k is None else np.where(ranks < _check_k(k), reciprocal, 0.0)


def catalog_coverage(ranked: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one list (one number, not per query)."""
    ranked = _as_ranked(ranked)
    shown = np.zeros(n_items, dtype=bool)
    shown[ranked[ranked >= 0]] = True
    return float(shown.mean())


def _mean_over_list(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    counts = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (values * valid).sum(axis=1) / counts, np.nan)


def novelty(ranked: np.ndarray, item_popularity: np.ndarray) -> np.ndarray:
    """Mean self-information ``-log2(p_i)`` of each list's items, in bits.

    ``p_i = popularity_i / sum(popularity)``: the chance that a random interaction in the log
    is with item ``i`` (pass interaction counts or user counts per item). Items with zero
    popularity are scored as novel as the rarest seen item instead of infinitely novel. NaN
    for empty lists.
    """
    ranked = _as_ranked(ranked)
    popularity = np.asarray(item_popularity, dtype=np.float64)
    if popularity.ndim != 1 or np.any(popularity < 0) or not np.any(popularity > 0):
        raise ValueError("item_popularity must be 1-D, non-negative and not all zero")
    floored = np.maximum(popularity, popularity[popularity > 0].min())
    information = -np.log2(floored / popularity.sum())
    valid = ranked >= 0
    return _mean_over_list(information[np.where(valid, ranked, 0)], valid)


def _pairwise_similarity_sums(
    ranked: np.ndarray, item_vectors: np.ndarray | None, item_categories: np.ndarray | None
) -> np.ndarray:
    """Per list, the sum over item pairs of cosine similarity or of [same category]."""
    if (item_vectors is None) == (item_categories is None):
        raise ValueError("give exactly one of item_vectors and item_categories")
    if item_vectors is not None:
        vectors = np.asarray(item_vectors, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        # A trailing zero row makes padding (-1) contribute nothing to the sums below.
        unit = np.vstack([unit, np.zeros((1, unit.shape[1]))])
        total = np.zeros((ranked.shape[0], unit.shape[1]))
        for column in ranked.T:  # over list positions, not items: K is small
            total += unit[column]
        self_similarity = (norms[:, 0] > 0).astype(np.float64)
        self_similarity = np.append(self_similarity, 0.0)[ranked].sum(axis=1)
        # sum_{i<j} u_i.u_j = (|sum_i u_i|^2 - sum_i |u_i|^2) / 2
        return ((total**2).sum(axis=1) - self_similarity) / 2
    # The trailing -1 is padding's category; it and unknown (negative) categories then get
    # a value that no other position of the list shares.
    labels = np.append(np.asarray(item_categories, dtype=np.int64), -1)[ranked]
    unique_negative = -1 - np.arange(ranked.shape[1])
    labels = np.sort(np.where(labels >= 0, labels, unique_negative), axis=1)
    # In a sorted row, position j shares a category with the (j - run start) positions before it.
    position = np.arange(ranked.shape[1])
    starts = np.ones_like(labels, dtype=bool)
    starts[:, 1:] = labels[:, 1:] != labels[:, :-1]
    run_start = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    return (position - run_start).sum(axis=1).astype(np.float64)


def intra_list_diversity(
    ranked: np.ndarray,
    item_vectors: np.ndarray | None = None,
    item_categories: np.ndarray | None = None,
) -> np.ndarray:
    """Mean pairwise dissimilarity within each list (Ziegler et al. 2005).

    Give ``item_vectors`` (dissimilarity ``1 - cosine``; zero vectors are at cosine 0 from
    everything) or ``item_categories`` (dissimilarity 1 unless both items share a category;
    a negative category means unknown and matches nothing). Uses the sum of unit vectors, so
    the cost is ``n * K * dim`` rather than ``n * K**2 * dim``. NaN for lists of fewer than
    two items.
    """
    ranked = _as_ranked(ranked)
    similarity = _pairwise_similarity_sums(ranked, item_vectors, item_categories)
    length = (ranked >= 0).sum(axis=1)
    pairs = length * (length - 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, 1.0 - similarity / pairs, np.nan)


def mean_metrics(
    ranked: np.ndarray, qrels: Qrels, ks: tuple[int, ...] = (10,), threshold: float = 0.0
) -> dict[str, float]:
    """Mean of every list metric at each cut-off, e.g. ``{"ndcg@10": ..., "recall@10": ...}``.

    Queries with no relevant item are left out of every mean (as trec_eval does), so all the
    numbers describe the same queries; hit rate and precision would otherwise count them as
    misses while recall and NDCG skip them.
    """
    ranked = _as_ranked(ranked)
    qrels = _as_qrels(qrels, ranked)
    judged = _row_sums(qrels, qrels.data > threshold) > 0
    if not judged.any():
        raise ValueError("no query has a relevant item")
    ranked, qrels = ranked[judged], qrels[judged]
    thresholded = {
        "recall": recall_at_k,
        "precision": precision_at_k,
        "hit_rate": hit_rate_at_k,
        "mrr": mrr,
        "map": average_precision,
    }
    means: dict[str, float] = {}
    for k in ks:
        means[f"ndcg@{k}"] = float(np.mean(ndcg_at_k(ranked, qrels, k)))
        for name, metric in thresholded.items():
            means[f"{name}@{k}"] = float(np.mean(metric(ranked, qrels, k, threshold=threshold)))
    return means
