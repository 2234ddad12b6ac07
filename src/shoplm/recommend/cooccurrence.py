"""Item-to-item co-occurrence: "bought together", "viewed together" and item-based next-item recs.

Two items co-occur when they sit in the same session (``window=None``, a basket: each pair
counts once per session) or within ``window`` positions of each other in a user's time-ordered
events. Fitted on purchases this is "bought together", on views "viewed together"; the caller
chooses by filtering the events it passes in (event weights are ignored: an event is an event).

Why this normalisation: raw counts rank the best sellers next to everything, so a pair's count
``c_ij`` is divided by the two items' own counts,

    score(i -> j) = c_ij / (c_i ** (1 - damping) * c_j ** damping),

one family that holds the usual choices: ``damping=0`` is the conditional probability
``P(j | i)`` (popular candidates win), ``0.5`` is the cosine of the items' session vectors, and
``1`` is ``P(i | j)`` (rare candidates win). On the validation targets of Beauty, Scientific
and OR (``bench/eval_sources.py``, NDCG@10) 0.25 was the best, or within 0.004 of the best, at
every window on all three (OR leans to 0 at short windows and to 0.5 with whole-basket pairs);
cosine (0.5) trailed it by 3-12% except on OR's baskets, and 1 was far behind everywhere:
hence the default.

The normalisation factors into a scale per source item and a scale per candidate, so the
stored matrices hold raw counts and the division happens at query time: new counts never leave
a stale normalised entry behind.

Counts are kept twice: ``counts_`` (every pair, what :meth:`partial_fit` adds to) and
``neighbours_`` (each item's ``max_neighbours`` best candidates, what queries read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import scipy.sparse as sp

from shoplm.arrays import row_entries
from shoplm.data.interactions import Interactions, Sequences
from shoplm.recommend.base import Recommender, top_k

_PARAMS_FILE = "cooccurrence.json"
_ARRAYS_FILE = "cooccurrence.npz"
#: up to this many histories :meth:`CooccurrenceRecommender.score` sums gathered neighbour
#: rows with numpy; larger batches go through one sparse product (a live request's single
#: history costs ~0.1 ms the first way and ~0.5 ms in scipy's sparse set-up the second)
_GATHER_MAX_ROWS = 64


@dataclass(frozen=True, eq=False)
class Contributions:
    """Every term of a batch's co-occurrence scores: history ``rows[t]``'s item
    ``sources[t]`` adds ``values[t]`` to candidate ``candidates[t]``'s score.

    The terms say both what each candidate scores and which history item brought it, which
    is what a "bought together with X" reason names.
    """

    n_rows: int
    n_items: int
    rows: np.ndarray
    sources: np.ndarray
    candidates: np.ndarray
    values: np.ndarray

    def dense(self) -> np.ndarray:
        """The scores as a float32 (n_rows, n_items) array: the terms summed per candidate."""
        summed = np.bincount(
            self.rows * self.n_items + self.candidates,
            weights=self.values,
            minlength=self.n_rows * self.n_items,
        )
        return summed.astype(np.float32).reshape(self.n_rows, self.n_items)

    def strongest_sources(self, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """For each ``(rows[i], candidates[i])``, the history item adding most to that
        candidate's score, or -1 where no history item co-occurs with it."""
        wanted = rows * self.n_items + candidates
        keys = self.rows * self.n_items + self.candidates
        # a mask over the batch's (row, item) grid, not np.isin, which sorts every term
        asked = np.zeros(self.n_rows * self.n_items, dtype=bool)
        asked[wanted] = True
        kept = asked[keys]
        keys, values, sources = keys[kept], self.values[kept], self.sources[kept]
        order = np.lexsort((-values, keys))  # per candidate, the largest term first
        keys, sources = keys[order], sources[order]
        first = np.ones(keys.size, dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        keys, sources = np.append(keys[first], -1), np.append(sources[first], -1)
        at = np.searchsorted(keys[:-1], wanted)  # == len: not found, lands on the -1 pad
        return np.where(keys[at] == wanted, sources[at], -1)


class CooccurrenceRecommender(Recommender):
    """Item-item co-occurrence counts, normalised at query time, with incremental updates.

    Parameters
    ----------
    window:
        Pairs are events at most ``window`` positions apart in a user's time order (a
        sequence-aware "viewed together"), counted once per occurrence. ``None`` pairs every
        two distinct items of a session, counted once per session (a basket).
    damping:
        Exponent of the candidate's own count in the denominator, in [0, 1] (see the module
        docstring): higher demotes popular candidates more; 0.5 is cosine.
    max_neighbours:
        Candidates kept per item in ``neighbours_``, best normalised score first; ``None``
        keeps all. Bounds query cost and memory on large catalogues.
    recency_decay:
        Weight of a history item ``s`` steps before the latest one is ``recency_decay ** s``,
        in (0, 1]: the last items say most about what comes next.
    session_gap:
        A user's events more than ``session_gap`` time units apart (``Interactions.times``)
        start a new session, and no pair spans two sessions. ``None``: one session per user,
        as for data whose users already are sessions or baskets.
    """

    def __init__(
        self,
        window: int | None = None,
        damping: float = 0.25,
        max_neighbours: int | None = 200,
        recency_decay: float = 0.5,
        session_gap: int | None = None,
    ) -> None:
        self.window = window
        self.damping = damping
        self.max_neighbours = max_neighbours
        self.recency_decay = recency_decay
        self.session_gap = session_gap

    def _check_params(self) -> None:
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or None, got {self.window}")
        if not 0.0 <= self.damping <= 1.0:
            raise ValueError(f"damping must lie in [0, 1], got {self.damping}")
        if self.max_neighbours is not None and self.max_neighbours < 1:
            raise ValueError(f"max_neighbours must be >= 1 or None, got {self.max_neighbours}")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError(f"recency_decay must lie in (0, 1], got {self.recency_decay}")
        if self.session_gap is not None and self.session_gap < 0:
            raise ValueError(f"session_gap must be >= 0 or None, got {self.session_gap}")

    def fit(self, interactions: Interactions) -> Self:
        """Count from scratch: :meth:`partial_fit` on an empty model."""
        self._reset()
        return self.partial_fit(interactions)

    def _reset(self) -> None:
        self._check_params()
        self.n_items = 0
        self.counts_ = sp.csr_matrix((0, 0), dtype=np.float64)
        self.neighbours_ = sp.csr_matrix((0, 0), dtype=np.float32)
        self.item_counts_ = np.zeros(0, dtype=np.float64)
        self._scale_cache = None
        self.tails_ = Sequences(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64))
        self.last_times_ = np.zeros(0, dtype=np.int64)

    def partial_fit(self, interactions: Interactions) -> Self:
        """Add the counts of new events; afterwards the model equals a refit on all events.

        The events must be newer than those already fitted (they are appended to each user's
        time order). New user and item ids (up to ``interactions.n_users`` / ``n_items``) are
        welcome. To pair new events with old ones the model keeps each user's open session
        (``tails_``: its last ``window`` events, or its distinct items when ``window`` is
        None, which with ``session_gap=None`` means every item the user ever had), so the
        result is exact, with one exception: items that gained no pair keep their
        ``max_neighbours`` selection until the next :meth:`fit`, although their candidates'
        counts, and so the order of the candidates outside the kept ones, may have moved.
        Scores of the kept neighbours are always current.

        Cost: counting is ``O(sum over touched users of (open session + new events) x
        window)`` (or squared session size with ``window=None``); merging is one pass over
        ``counts_``, ``neighbours_`` and ``tails_`` (``O(nnz)``). Call it on batches of
        events (every second or so), not on every single event. On a model never fitted it
        is :meth:`fit`.
        """
        if not hasattr(self, "counts_"):
            self._reset()
        self._grow(interactions.n_items, interactions.n_users)
        if not len(interactions):
            return self
        order = np.lexsort((interactions.times, interactions.users))
        users, items = interactions.users[order], interactions.items[order]
        times = interactions.times[order]
        touched_users = np.unique(users)
        tail = self.tails_[touched_users]
        tail_users = touched_users[tail.row_ids()]
        # Each touched user's open session, then the new events in time order.
        joined = np.argsort(np.concatenate([tail_users, users]), kind="stable")
        all_users = np.concatenate([tail_users, users])[joined]
        all_items = np.concatenate([tail.items, items])[joined]
        all_times = np.concatenate([self.last_times_[tail_users], times])[joined]
        sessions = self._sessions(all_users, all_times)

        pairs_after, counts_after = self._pair_counts(sessions, all_items)
        pairs_before, counts_before = self._pair_counts(tail.row_ids(), tail.items)
        delta = (pairs_after - pairs_before).tocsr()
        delta.eliminate_zeros()
        self.counts_ = (self.counts_ + delta).tocsr()
        self.item_counts_ += counts_after - counts_before
        self._scale_cache = None
        self._reselect(np.unique(delta.indices))

        self._update_tails(touched_users, all_users, all_items, sessions)
        user_ends = np.flatnonzero(np.append(users[1:] != users[:-1], True))
        self.last_times_[users[user_ends]] = times[user_ends]
        return self

    def _grow(self, n_items: int, n_users: int) -> None:
        """Make room for new item and user ids."""
        if n_items > self.n_items:
            self.counts_.resize((n_items, n_items))
            self.neighbours_.resize((n_items, n_items))
            self.item_counts_ = np.pad(self.item_counts_, (0, n_items - self.n_items))
            self._scale_cache = None
            self.n_items = n_items
        n_known = len(self.tails_)
        if n_users > n_known:
            indptr = np.pad(self.tails_.indptr, (0, n_users - n_known), mode="edge")
            self.tails_ = Sequences(indptr, self.tails_.items)
            self.last_times_ = np.pad(self.last_times_, (0, n_users - n_known))

    def _sessions(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Session id of each event of user-grouped, time-ordered events."""
        starts = np.ones(users.size, dtype=bool)
        starts[1:] = users[1:] != users[:-1]
        if self.session_gap is not None:
            starts[1:] |= np.diff(times) > self.session_gap
        return np.cumsum(starts) - 1

    def _pair_counts(
        self, sessions: np.ndarray, items: np.ndarray
    ) -> tuple[sp.csr_matrix, np.ndarray]:
        """Symmetric pair counts (n_items, n_items) without the diagonal, and item counts.

        ``sessions`` is sorted. An item's count is the number of sessions holding it (basket
        mode) or its number of events (window mode), matching how its pairs are counted.
        """
        n = self.n_items
        if self.window is None:
            n_sessions = int(sessions[-1]) + 1 if sessions.size else 0
            baskets = sp.csr_matrix((np.ones(items.size), (sessions, items)), shape=(n_sessions, n))
            baskets.sum_duplicates()
            baskets.data[:] = 1.0
            pairs = (baskets.T @ baskets).tocsr()
            item_counts = np.bincount(baskets.indices, minlength=n).astype(np.float64)
        else:
            firsts, seconds = [], []
            for offset in range(1, min(self.window, max(items.size - 1, 0)) + 1):
                same = (sessions[offset:] == sessions[:-offset]) & (
                    items[offset:] != items[:-offset]
                )
                firsts.append(items[:-offset][same])
                seconds.append(items[offset:][same])
            rows = np.concatenate([*firsts, *seconds, np.zeros(0, dtype=np.int64)])
            cols = np.concatenate([*seconds, *firsts, np.zeros(0, dtype=np.int64)])
            pairs = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
            item_counts = np.bincount(items, minlength=n).astype(np.float64)
        pairs.setdiag(0.0)
        pairs.eliminate_zeros()
        return pairs, item_counts

    def _scales(self) -> tuple[np.ndarray, np.ndarray]:
        """(source scale, candidate scale): 1 / c ** (1 - damping) and 1 / c ** damping.

        Items without events get count 1: they have no pairs, so the value never matters.
        """
        cached = getattr(self, "_scale_cache", None)
        if cached is None or cached[0] != self.damping:
            counts = np.maximum(self.item_counts_, 1.0)
            scales = (
                (counts ** -(1.0 - self.damping)).astype(np.float32),
                (counts**-self.damping).astype(np.float32),
            )
            # two powers over the catalogue cost more than a live request's whole gather
            cached = self._scale_cache = (self.damping, scales)
        return cached[1]

    def _reselect(self, rows: np.ndarray) -> None:
        """Recompute the kept neighbours of ``rows`` (sorted ids) from ``counts_``."""
        sub = self.counts_[rows]
        sub_rows = np.repeat(np.arange(rows.size), np.diff(sub.indptr))
        kept = np.arange(sub.nnz)
        if self.max_neighbours is not None:
            _, candidate_scale = self._scales()
            order = np.lexsort((sub.indices, -sub.data * candidate_scale[sub.indices], sub_rows))
            rank = np.arange(order.size) - sub.indptr[sub_rows[order]]
            kept = np.sort(order[rank < self.max_neighbours])  # back to row-major order
        self.neighbours_ = _replace_rows(
            self.neighbours_, rows, sub_rows[kept], sub.indices[kept], sub.data[kept]
        )

    def _update_tails(
        self,
        touched_users: np.ndarray,
        users: np.ndarray,
        items: np.ndarray,
        sessions: np.ndarray,
    ) -> None:
        """Keep each touched user's open session: what later events can still pair with."""
        ends = np.flatnonzero(np.append(users[1:] != users[:-1], True))
        counts = np.diff(np.concatenate([[-1], ends]))
        open_session = np.repeat(sessions[ends], counts)
        keep = sessions == open_session
        if self.window is not None:
            keep &= np.repeat(ends, counts) - np.arange(users.size) < self.window
        users, items = users[keep], items[keep]
        if self.window is None:
            _, first = np.unique(users * self.n_items + items, return_index=True)
            users, items = users[first], items[first]
        old_users = self.tails_.row_ids()
        stays = ~np.isin(old_users, touched_users)
        all_users = np.concatenate([old_users[stays], users])
        order = np.argsort(all_users, kind="stable")
        lengths = np.bincount(all_users, minlength=len(self.tails_))
        self.tails_ = Sequences(
            np.concatenate([[0], np.cumsum(lengths)]),
            np.concatenate([self.tails_.items[stays], items])[order],
        )

    def score(self, histories: Sequences) -> np.ndarray:
        """Recency-weighted sum over the history of each item's normalised neighbour row."""
        if len(histories) <= _GATHER_MAX_ROWS:
            return self.contributions(histories).dense()
        source_scale, candidate_scale = self._scales()
        weights = history_matrix(histories, self.n_items, self.recency_decay)
        weights = weights @ sp.diags(source_scale)
        return (weights @ self.neighbours_).toarray() * candidate_scale

    def contributions(self, histories: Sequences) -> Contributions:
        """The terms of :meth:`score`, one per (history item, kept neighbour), gathered
        from the neighbour rows of each history's distinct items."""
        rows, sources, weights = history_weights(histories, self.n_items, self.recency_decay)
        source_scale, candidate_scale = self._scales()
        neighbours = self.neighbours_  # once: partial_fit may swap in a new matrix meanwhile
        entries, lengths = row_entries(neighbours.indptr, sources)
        candidates = neighbours.indices[entries].astype(np.int64)
        values = (
            np.repeat(weights * source_scale[sources], lengths)
            * neighbours.data[entries]
            * candidate_scale[candidates]
        )
        return Contributions(
            len(histories),
            self.n_items,
            np.repeat(rows, lengths),
            np.repeat(sources, lengths),
            candidates,
            values,
        )

    def similar_items(self, item_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` co-occurring items of each item, ``(ids, scores)`` of shape (n, k).

        Only items that co-occurred at all are returned: the rest of a row is padded with id
        -1 and score -inf, so "bought together" never shows an arbitrary product.
        """
        return similar_by_scoring(self, item_ids, k, min_score=0.0)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        params = {
            "window": self.window,
            "damping": self.damping,
            "max_neighbours": self.max_neighbours,
            "recency_decay": self.recency_decay,
            "session_gap": self.session_gap,
        }
        (path / _PARAMS_FILE).write_text(json.dumps(params, indent=2))
        np.savez(
            path / _ARRAYS_FILE,
            item_counts=self.item_counts_,
            tails_indptr=self.tails_.indptr,
            tails_items=self.tails_.items,
            last_times=self.last_times_,
            **_csr_arrays("counts", self.counts_),
            **_csr_arrays("neighbours", self.neighbours_),
        )

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        model = cls(**json.loads((path / _PARAMS_FILE).read_text()))
        with np.load(path / _ARRAYS_FILE) as arrays:
            model.item_counts_ = arrays["item_counts"]
            model.n_items = model.item_counts_.size
            model.tails_ = Sequences(arrays["tails_indptr"], arrays["tails_items"])
            model.last_times_ = arrays["last_times"]
            model.counts_ = _csr_from(arrays, "counts", model.n_items)
            model.neighbours_ = _csr_from(arrays, "neighbours", model.n_items)
        return model


def history_matrix(histories: Sequences, n_items: int, recency_decay: float = 1.0) -> sp.csr_matrix:
    """(n_histories, n_items) float32 weights of each history's items, repeats summed.

    The latest item weighs 1, the one ``s`` steps before it ``recency_decay ** s``; with the
    default 1.0 the weight is the item's count in the history.
    """
    matrix = sp.csr_matrix(
        (_recency_weights(histories, n_items, recency_decay), histories.items, histories.indptr),
        shape=(len(histories), n_items),
    )
    matrix.sum_duplicates()
    return matrix


def history_weights(
    histories: Sequences, n_items: int, recency_decay: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of :func:`history_matrix` as ``(rows, items, weights)`` arrays, sorted by
    row then item, without building a sparse matrix (what a single live request wants).

    Items whose float32 weight underflowed to 0 (at decay 0.3, those more than ~85 steps
    back) add nothing to any score and are left out, so a long history costs no more than
    its recent part."""
    weights = _recency_weights(histories, n_items, recency_decay)
    counted = weights > 0
    keys, where = np.unique(
        (histories.row_ids() * n_items + histories.items)[counted], return_inverse=True
    )
    summed = np.bincount(where, weights=weights[counted], minlength=keys.size).astype(np.float32)
    return keys // n_items, keys % n_items, summed


def _recency_weights(histories: Sequences, n_items: int, recency_decay: float) -> np.ndarray:
    if histories.items.size and (histories.items.min() < 0 or histories.items.max() >= n_items):
        raise ValueError(f"history item ids must lie in [0, {n_items})")
    steps_back = (
        np.repeat(histories.indptr[1:], histories.lengths) - 1 - np.arange(histories.items.size)
    )
    return np.power(recency_decay, steps_back, dtype=np.float32)


def similar_by_scoring(
    model: Recommender, item_ids: np.ndarray, k: int, min_score: float = -np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Items similar to each of ``item_ids``: the model's scores for a one-item history.

    The item itself is never returned, nor items scoring ``<= min_score`` (padded with id
    -1 and score -inf, as :func:`~shoplm.recommend.base.top_k` pads).
    """
    item_ids = np.asarray(item_ids, dtype=np.int64)
    singles = Sequences(np.arange(item_ids.size + 1, dtype=np.int64), item_ids)
    scores = model.score(singles)
    scores[scores <= min_score] = -np.inf
    scores[np.arange(item_ids.size), item_ids] = -np.inf
    return top_k(scores, k)


def _replace_rows(
    matrix: sp.csr_matrix,
    rows: np.ndarray,
    entry_rows: np.ndarray,
    entry_cols: np.ndarray,
    entry_data: np.ndarray,
) -> sp.csr_matrix:
    """``matrix`` with ``rows`` (sorted ids) replaced by new entries, in one pass without a sort.

    The new entries are given in row-major order, ``entry_rows`` indexing into ``rows``.
    Every entry's destination is computed from the new row lengths, so the cost is
    ``O(nnz)`` copies rather than the ``O(nnz log nnz)`` of rebuilding from coordinates.
    """
    old_lengths = np.diff(matrix.indptr)
    new_lengths = np.bincount(entry_rows, minlength=rows.size)
    lengths = old_lengths.copy()
    lengths[rows] = new_lengths
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    stays = np.ones(matrix.shape[0], dtype=bool)
    stays[rows] = False
    entry_stays = np.repeat(stays, old_lengths)
    shift = np.repeat(indptr[:-1] - matrix.indptr[:-1], old_lengths)
    old_dest = np.flatnonzero(entry_stays) + shift[entry_stays]
    new_starts = np.concatenate([[0], np.cumsum(new_lengths)[:-1]])
    new_dest = indptr[rows][entry_rows] + np.arange(entry_rows.size) - new_starts[entry_rows]
    indices = np.empty(indptr[-1], dtype=matrix.indices.dtype)
    data = np.empty(indptr[-1], dtype=matrix.dtype)
    indices[old_dest], data[old_dest] = matrix.indices[entry_stays], matrix.data[entry_stays]
    indices[new_dest], data[new_dest] = entry_cols, entry_data
    return sp.csr_matrix((data, indices, indptr), shape=matrix.shape)


def _csr_arrays(name: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {
        f"{name}_data": matrix.data,
        f"{name}_indices": matrix.indices,
        f"{name}_indptr": matrix.indptr,
    }


def _csr_from(arrays: np.lib.npyio.NpzFile, name: str, n_items: int) -> sp.csr_matrix:
    return sp.csr_matrix(
        (arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]),
        shape=(n_items, n_items),
    )
