"""Exact top-k over a term x item impact matrix without reading every posting (MaxScore).

A query's score of an item is the sum, over the query's terms, of ``count * weight`` from
the term's row of a CSR (terms x items) matrix. Scoring every posting of every term costs
as much as the terms' posting lists are long, and the lists grow with the catalogue: at
546,670 items a median Home Depot query's terms hold 308,000 postings (up to 1.4 million),
most of them from common character n-grams and numbers whose weights are small.

MaxScore (Turtle and Flood, 1995) skips most of that work and stays exact. Each term's
largest possible contribution (its *bound*) is known in advance. Terms are read in order of
decreasing bound per posting, accumulating scores; once the bounds of the terms not yet read
sum to less than the k-th best score seen so far, no item outside the lists already read
can reach the top k, so the remaining terms are only looked up (binary search in their
sorted rows) for the items that still can. The answer is the same top k that scoring
everything gives.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def term_bounds(term_weights: sp.csr_matrix) -> np.ndarray:
    """Each row's largest weight (0 for an empty row): the most a term can add per count."""
    lengths = np.diff(term_weights.indptr)
    bounds = np.zeros(term_weights.shape[0], dtype=np.float64)
    filled = lengths > 0
    if filled.any():
        starts = term_weights.indptr[:-1][filled]
        bounds[filled] = np.maximum.reduceat(term_weights.data, starts)
    return bounds


def lookup_scores(
    term_weights: sp.csr_matrix, terms: np.ndarray, counts: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """Summed ``count * weight`` of ``terms`` for each of ``items`` (0 where none matches);
    rows of ``term_weights`` must have sorted indices."""
    scores = np.zeros(items.size, dtype=np.float64)
    indptr, indices, data = term_weights.indptr, term_weights.indices, term_weights.data
    # in the rows' own dtype: searchsorted would otherwise convert the whole row per call
    items = items.astype(indices.dtype, copy=False)
    for term, count in zip(terms.tolist(), counts.tolist(), strict=True):
        start, stop = indptr[term], indptr[term + 1]
        if start == stop:
            continue
        row = indices[start:stop]
        at = np.minimum(np.searchsorted(row, items), row.size - 1)
        scores += np.where(row[at] == items, count * data[start + at], 0.0)
    return scores


def maxscore_top_k(
    term_weights: sp.csr_matrix,
    bounds: np.ndarray,
    terms: np.ndarray,
    counts: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best items for one query, best first (ties to the lower id), and their
    exact scores: ``(ids, scores)`` of length <= ``k``, only items matching some term."""
    weights = counts * bounds[terms]
    # Strong terms with short rows first: they lift the k-th best score for little reading,
    # and what is left unread is the long rows of weak terms (numbers, common n-grams).
    # On Home Depot x10 this read order cut the mean time by ~10% against plain bound order.
    indptr, indices, data = term_weights.indptr, term_weights.indices, term_weights.data
    lengths = indptr[terms + 1] - indptr[terms]
    order = np.argsort(-weights / np.maximum(lengths, 1), kind="stable")
    # totals[i]: item i's score over the terms read so far (the whole row of each term in
    # the first phase; in the second, kept exact only for the surviving candidates)
    totals = np.zeros(term_weights.shape[1], dtype=np.float64)
    total_bound = float(weights.sum())
    unread, threshold, n_read = total_bound, 0.0, 0
    reference: np.ndarray | None = None  # the items of one row read, to bound the k-th best
    for position in order:
        start, stop = indptr[terms[position]], indptr[terms[position] + 1]
        row = indices[start:stop]
        totals[row] += counts[position] * data[start:stop]  # a row holds each item once
        n_read += 1
        unread -= float(weights[position])
        if reference is None and row.size >= k:
            reference = row
        # The k-th best total never exceeds what the terms read can add up to, so looking
        # for it is pointless until the unread bounds drop beneath that.
        if unread <= 0 or unread >= total_bound - unread or reference is None:
            continue
        # the k-th best among any k distinct items bounds the final k-th best from below
        threshold = max(threshold, _kth_largest(totals[reference], k))
        if unread < threshold:
            break
    floor = threshold - unread  # an item below it cannot reach the k-th best any more
    candidates = np.flatnonzero(totals >= floor) if floor > 0 else np.flatnonzero(totals > 0)
    candidates = candidates.astype(indices.dtype)
    scores = totals[candidates]
    for position in order[n_read:]:
        alive = scores + unread >= threshold
        candidates, scores = candidates[alive], scores[alive]
        start, stop = indptr[terms[position]], indptr[terms[position] + 1]
        if candidates.size * _SEARCH_COST < stop - start:
            extra = lookup_scores(
                term_weights,
                terms[position : position + 1],
                counts[position : position + 1],
                candidates,
            )
            scores = scores + extra
        else:  # reading the whole row is cheaper than searching it for every candidate
            totals[candidates] = scores
            totals[indices[start:stop]] += counts[position] * data[start:stop]
            scores = totals[candidates]
        unread -= float(weights[position])
        threshold = max(threshold, _kth_largest(scores, k))
    take = min(k, candidates.size)
    if take == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    # ranked in float32, as full score rows are, so that ties fall the same way
    scores32 = scores.astype(np.float32)
    best = np.argpartition(-scores32, take - 1)[:take]
    ranked = best[np.lexsort((candidates[best], -scores32[best]))]
    return candidates[ranked].astype(np.int64), scores32[ranked]


#: a binary search for one candidate costs about as much as reading this many postings
_SEARCH_COST = 16


def _kth_largest(values: np.ndarray, k: int) -> float:
    """The ``k``-th largest value, or 0 when there are fewer: a lower bound of the k-th
    best final score, since scores only grow as terms are added."""
    if values.size < k:
        return 0.0
    return float(np.partition(values, values.size - k)[values.size - k])
