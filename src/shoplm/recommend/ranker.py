"""A learned ranker for the personal feed: LightGBM over the feed's own source scores.

The feed's blend (co-occurrence and ALS at the build's share, popularity as tie-break)
chooses each history's top ``n_candidates``; the ranker re-orders them. Its features are
read from the score rows the feed has already computed for the request (co-occurrence, ALS,
the blend) plus small look-ups: each recent history item's co-occurrence with each
candidate, popularity, neighbour counts, categories, and one signal the blend lacks,
*order*: :class:`Transitions` counts which items came after which, whereas co-occurrence
counts pairs both ways. Everything is computed for a whole batch of (history, candidate)
pairs at once, so a request pays about a millisecond on top of the feed.

Training follows the build's own validation protocol (``recommend.tuning``): each sampled
user's last item is held out, the sources (and the transition counts) are refitted with the
parameters the build chose on the other events, and the held-out item is the one positive
among the candidates of that history; a second fold does the same one item earlier. A
seeded share of the users is kept out of training: LightGBM stops adding trees when their
NDCG@10 stops improving, and they give the validation NDCG of the ranker and of the plain
blend (full ranking: a target outside the candidates scores 0) by which the build decides
whether to keep the ranker. On Amazon Beauty this lifts the default build's NDCG@10 from
0.0554 to 0.0687 (docs/evaluation.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import scipy.sparse as sp

from shoplm.data.interactions import Interactions, Sequences
from shoplm.rank.ltr import OBJECTIVES, LambdaMARTRanker
from shoplm.recommend.base import top_k
from shoplm.recommend.tuning import last_item_split

if TYPE_CHECKING:
    from shoplm.recommend.feed import PersonalFeed

#: what the features are, in column order
FEATURE_NAMES: tuple[str, ...] = (
    "blend_score",  # the feed's score: 1 + relevance for personal items, < 0.001 for popular
    "blend_rank",  # 0 = the blend's best candidate
    "cooccurrence_score",
    "cooccurrence_share",  # of the row's best co-occurrence score (over every item)
    "cooccurrence_rank",  # among the candidates; n_candidates when it does not co-occur
    "als_score",
    "als_share",  # of the row's largest absolute ALS score
    "als_rank",
    "last_item_cooccurrence",  # co-occurrence with the latest history item alone
    "last_item_pairs",  # ... as the raw pair count
    "second_item_cooccurrence",  # with the one before it
    "strongest_link",  # the largest co-occurrence with any one recent history item
    "linked_history_items",  # recent history items that have the candidate as neighbour
    "linked_share",  # ... as a share of the recent history
    "nearest_link",  # steps back to the latest linked history item (window if none)
    "log_popularity",
    "popularity_rank",  # among the candidates
    "candidate_neighbours",  # the candidate's own number of kept co-occurrence neighbours
    "history_length",
    "cooccurring_items",  # items with any co-occurrence score in the row
    "category_share",  # of the recent history in the candidate's category (NaN: none)
    "next_after_last",  # share of the latest item's successors that were the candidate
    "next_after_recent",  # the same, summed over the recent history with recency decay
    "follows_share",  # of the pairs (latest item, candidate), those in that order (NaN: none)
)

_COLUMN = {name: column for column, name in enumerate(FEATURE_NAMES)}

#: re-ranked candidates score in [RERANKED, RERANKED + 1], above every blend score (<= 2.001)
RERANKED = 3.0

_MODEL_DIR = "model"
_PARAMS_FILE = "feed_ranker.json"
_TRANSITIONS_FILE = "transitions.npz"


class FeedRanker:
    """Re-orders the personal feed's top candidates with gradient-boosted trees.

    Parameters
    ----------
    n_candidates:
        How many of the blend's best items per history are re-ranked; the rest keep their
        blend order below them, so full-ranking evaluation stays valid.
    objective:
        ``"lambdarank"`` (LambdaMART, pairs within a history weighted by NDCG) or
        ``"binary"`` (cross-entropy on "was it the next item", one candidate at a time).
    history_window:
        Recent history events the link and category features look at.
    folds:
        Held-out items per sampled user to learn from: fold 2 holds out the item before
        the last, with the sources refitted once more (more queries, one more fit).
    max_users:
        Users sampled (seeded) per fold; None takes every user with 2+ items.
    valid_fraction:
        Share of the training histories held out for early stopping and validation NDCG.
    n_estimators, learning_rate, num_leaves, min_child_samples, early_stopping_rounds:
        LightGBM's (:class:`~shoplm.rank.ltr.LambdaMARTRanker`).
    seed:
        Seed of the validation split and of LightGBM.
    threads:
        Training threads (prediction uses one: see ``LambdaMARTRanker.predict``).
    """

    def __init__(
        self,
        n_candidates: int = 100,
        objective: str = "lambdarank",
        history_window: int = 10,
        folds: int = 2,
        max_users: int | None = 20_000,
        valid_fraction: float = 0.2,
        n_estimators: int = 300,
        learning_rate: float = 0.1,
        num_leaves: int = 15,
        min_child_samples: int = 100,
        early_stopping_rounds: int = 30,
        seed: int = 0,
        threads: int = 2,
    ) -> None:
        self.n_candidates = n_candidates
        self.objective = objective
        self.history_window = history_window
        self.folds = folds
        self.max_users = max_users
        self.valid_fraction = valid_fraction
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.threads = threads

    def get_params(self) -> dict[str, object]:
        return {
            "n_candidates": self.n_candidates,
            "objective": self.objective,
            "history_window": self.history_window,
            "folds": self.folds,
            "max_users": self.max_users,
            "valid_fraction": self.valid_fraction,
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "early_stopping_rounds": self.early_stopping_rounds,
            "seed": self.seed,
            "threads": self.threads,
        }

    def _check_params(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.n_candidates < 2:
            raise ValueError(f"n_candidates must be >= 2, got {self.n_candidates}")
        if self.history_window < 1:
            raise ValueError(f"history_window must be >= 1, got {self.history_window}")
        if self.folds < 1:
            raise ValueError(f"folds must be >= 1, got {self.folds}")
        if self.max_users is not None and self.max_users < 50:
            raise ValueError(f"max_users must be >= 50 or None, got {self.max_users}")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie in (0, 1), got {self.valid_fraction}")

    # ------------------------------------------------------------------ training
    def fit(
        self,
        interactions: Interactions,
        make_feed: Callable[[Interactions], PersonalFeed],
        batch_size: int = 1024,
    ) -> Self:
        """Learn on ``interactions``' own held-out items.

        ``make_feed(events)`` must return the feed the build serves (same parameters), its
        sources fitted on ``events``. Fold 1 holds out the last item of up to ``max_users``
        sampled users and refits the feed on the other events; fold 2 does the same to what
        fold 1 kept, and so on, so every fold's targets are unseen by its sources. Users
        drawn into the validation share (seeded) never train; their targets of every fold
        choose the number of trees and give ``report_`` its validation NDCG@10, of the
        ranker and of the blend, pooled and per fold (``beats_blend``: better pooled and no
        worse on any fold). The transition counts are then refitted on every event, as the
        sources are by the build.
        """
        self._check_params()
        start = time.perf_counter()
        validation_user = np.random.default_rng(self.seed).random(interactions.n_users)
        validation_user = validation_user < self.valid_fraction
        train_x, train_y, train_ok = [], [], []
        valid_x, valid_y, valid_ok, valid_fold = [], [], [], []
        events, n_folds = interactions, 0
        spent = {"sources": 0.0, "features": 0.0}
        for fold in range(self.folds):
            split = last_item_split(events, self.max_users, self.seed + fold, keep_weights=True)
            if split is None or split.users is None:
                break
            began = time.perf_counter()
            feed = make_feed(split.train)
            transitions = Transitions().fit(split.train)
            spent["sources"] += time.perf_counter() - began
            began = time.perf_counter()
            x, y, ok = self._examples(feed, transitions, split.history, split.targets, batch_size)
            spent["features"] += time.perf_counter() - began
            held_out = validation_user[split.users]
            # a history whose target is not among its candidates teaches nothing
            train = ~held_out & y.any(axis=1)
            train_x.append(x[train][ok[train]])
            train_y.append(y[train][ok[train]])
            train_ok.append(ok[train].sum(axis=1))
            valid_x.append(x[held_out])
            valid_y.append(y[held_out])
            valid_ok.append(ok[held_out])
            valid_fold.append(np.full(int(held_out.sum()), fold))
            events, n_folds = split.train, fold + 1
        if not n_folds:
            raise ValueError("too few users with 2+ items to train a ranker (fewer than 50)")
        x_valid, y_valid = np.concatenate(valid_x), np.concatenate(valid_y)
        ok_valid, folds = np.concatenate(valid_ok), np.concatenate(valid_fold)
        found = y_valid.any(axis=1)
        n_train = sum(len(group) for group in train_ok)
        if n_train < 5 or not found.any():
            raise ValueError(
                f"too few histories with their target among the top {self.n_candidates} "
                f"candidates to train a ranker ({n_train} for training, {int(found.sum())} "
                "for validation)"
            )
        began = time.perf_counter()
        self.model_ = LambdaMARTRanker(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            early_stopping_rounds=self.early_stopping_rounds,
            seed=self.seed,
            threads=self.threads,
            objective=self.objective,
        ).fit(
            np.concatenate(train_x),
            np.concatenate(train_y).astype(np.int32),
            np.concatenate(train_ok),
            valid=(
                x_valid[found][ok_valid[found]],
                y_valid[found][ok_valid[found]].astype(np.int32),
                ok_valid[found].sum(axis=1),
            ),
            feature_names=list(FEATURE_NAMES),
        )
        spent["trees"] = time.perf_counter() - began
        self.transitions_ = Transitions().fit(interactions)
        # validation NDCG@10 over every held-out history, full ranking (a miss scores 0)
        predicted = np.full(ok_valid.shape, -np.inf, dtype=np.float32)
        predicted[ok_valid] = self.model_.predict(x_valid[ok_valid])
        at_target = np.where(y_valid, predicted, np.inf).min(axis=1)
        ranker_rank = np.where(found, (predicted >= at_target[:, None]).sum(axis=1) - 1, -1)
        blend_rank = np.where(found, y_valid.argmax(axis=1), -1)
        by_fold = [
            {
                "queries": int((folds == fold).sum()),
                "ndcg@10": round(_ndcg10(ranker_rank[folds == fold]), 5),
                "blend_ndcg@10": round(_ndcg10(blend_rank[folds == fold]), 5),
            }
            for fold in range(n_folds)
        ]
        pooled, pooled_blend = _ndcg10(ranker_rank), _ndcg10(blend_rank)
        self.report_ = {
            "objective": self.objective,
            "n_candidates": self.n_candidates,
            "folds": n_folds,
            "training_queries": int(n_train),
            "validation_queries": len(y_valid),
            "validation_candidate_recall": round(float(found.mean()), 4),
            "trees": int(self.model_.booster_.best_iteration or self.model_.booster_.num_trees()),
            "validation_ndcg@10": round(pooled, 5),
            "blend_validation_ndcg@10": round(pooled_blend, 5),
            "validation_by_fold": by_fold,
            "beats_blend": bool(
                pooled > pooled_blend
                and all(fold["ndcg@10"] >= fold["blend_ndcg@10"] for fold in by_fold)
            ),
            "seconds": round(time.perf_counter() - start, 1),
            "seconds_by_step": {step: round(value, 1) for step, value in spent.items()},
        }
        return self

    def _examples(
        self,
        feed: PersonalFeed,
        transitions: Transitions,
        histories: Sequences,
        targets: np.ndarray,
        batch_size: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features (n, n_candidates, n_features), labels (target or not) and listed (not
        padding) of the blend's top candidates of each history."""
        features, labels, listed = [], [], []
        for begin in range(0, len(histories), batch_size):
            batch = histories[np.arange(begin, min(begin + batch_size, len(histories)))]
            together = feed.cooccurrence.score(batch)
            parts: dict[str, np.ndarray] = {}
            blend = feed._blend(batch, together, parts).astype(np.float32)
            _mask(feed, batch, blend)
            ids, _ = top_k(blend, self.n_candidates)
            x = self.features(feed, batch, ids, blend, together, parts.get("als"), transitions)
            features.append(x.reshape(*ids.shape, -1))
            labels.append(ids == targets[begin : begin + len(batch), None])
            listed.append(ids >= 0)
        return np.concatenate(features), np.concatenate(labels), np.concatenate(listed)

    # ------------------------------------------------------------------ queries
    def rerank(
        self,
        feed: PersonalFeed,
        histories: Sequences,
        scores: np.ndarray,
        together: np.ndarray,
        als: np.ndarray | None,
        masked: bool = False,
    ) -> np.ndarray:
        """``scores`` (the feed's blend) with the top candidates re-scored by the model.

        A new array: history and unavailable items -inf (already so in ``scores`` when
        ``masked``), the candidates in [RERANKED, RERANKED + 1] in the model's order,
        every other item as it was.
        """
        return self.rerank_top(feed, histories, scores, together, als, masked)[0]

    def rerank_top(
        self,
        feed: PersonalFeed,
        histories: Sequences,
        scores: np.ndarray,
        together: np.ndarray,
        als: np.ndarray | None,
        masked: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`rerank`'s array, and its top ``n_candidates`` per row as ``(ids, scores)``
        best first (ties by lower id, padded with -1 / -inf as ``top_k`` pads), so that a
        caller wanting at most that many need not search the catalogue again."""
        out = scores.astype(np.float32)  # a copy: the caller keeps the blend
        if not masked:
            _mask(feed, histories, out)
        ids, best = top_k(out, self.n_candidates)
        valid = ids >= 0
        if not valid.any():
            return out, ids, best
        x = self.features(feed, histories, ids, out, together, als, self.transitions_)
        raw = np.zeros(ids.shape, dtype=np.float32)
        raw[valid] = self.model_.predict(x[valid.ravel()])
        low = np.where(valid, raw, np.inf).min(axis=1, keepdims=True)
        high = np.where(valid, raw, -np.inf).max(axis=1, keepdims=True)
        new = np.where(valid, RERANKED + (raw - low) / np.maximum(high - low, 1e-6), -np.inf)
        new = new.astype(np.float32)
        rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
        out[rows[valid], ids[valid]] = new[valid]
        order = np.lexsort((ids, -new), axis=-1)
        return out, np.take_along_axis(ids, order, 1), np.take_along_axis(new, order, 1)

    def features(
        self,
        feed: PersonalFeed,
        histories: Sequences,
        ids: np.ndarray,
        blend: np.ndarray,
        together: np.ndarray,
        als: np.ndarray | None,
        transitions: Transitions,
    ) -> np.ndarray:
        """float32 (n * n_candidates, len(FEATURE_NAMES)) features of each row's ``ids``
        (-1: padding, whose features are meaningless), from the feed's score rows.

        Every step works on whole (n, n_candidates) or (n, window, n_candidates) arrays;
        gathers use flat indices, since one request's cost is mostly numpy's per-call
        overhead."""
        n, width = ids.shape
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        cooc = feed.cooccurrence
        out = np.empty((n, width, len(FEATURE_NAMES)), dtype=np.float32)

        def put(name: str, values: np.ndarray | float) -> None:
            out[:, :, _COLUMN[name]] = values

        flat = (np.arange(n)[:, None] * together.shape[1] + safe).ravel()
        put("blend_score", np.take(blend, flat).reshape(n, width))
        put("blend_rank", np.arange(width, dtype=np.float32))
        co = np.take(together, flat).reshape(n, width)
        put("cooccurrence_score", co)
        put("cooccurrence_share", co / np.maximum(together.max(axis=1, keepdims=True), 1e-12))
        put("cooccurrence_rank", np.where(co > 0, _ranks(co, valid), width))
        if als is not None:
            al = np.take(als, flat).reshape(n, width)
            put("als_score", al)
            put("als_share", al / np.maximum(np.abs(als).max(axis=1, keepdims=True), 1e-12))
            put("als_rank", _ranks(al, valid))
        else:
            for name in ("als_score", "als_share", "als_rank"):
                put(name, np.nan)

        # each recent history item's co-occurrence with each candidate: (n, window, width)
        lengths = histories.lengths
        window = max(1, min(self.history_window, int(lengths.max(initial=0))))
        steps = np.arange(window)
        known = steps[None, :] < lengths[:, None]
        # latest first, -1 padding
        recent = np.full((n, window), -1, dtype=np.int64)
        recent[known] = histories.items[(histories.indptr[1:, None] - 1 - steps[None, :])[known]]
        r, j, c = np.nonzero(known[:, :, None] & valid[:, None, :])
        source, candidate = recent[r, j], ids[r, c]
        # the recent items' rows, gathered once for the co-occurrence and transition look-ups
        slots = np.cumsum(known.ravel()) - 1
        sources = _Rows(recent[known], slots[r * window + j])
        pairs = sources.values(cooc.neighbours_, candidate)
        item_counts = cooc.item_counts_
        links = np.zeros((n, window, width), dtype=np.float32)
        links[r, j, c] = (
            pairs
            * np.maximum(item_counts[source], 1.0) ** -(1.0 - cooc.damping)
            * np.maximum(item_counts[candidate], 1.0) ** -cooc.damping
        )
        linked = links > 0
        n_linked = linked.sum(axis=1)
        n_recent = np.maximum(known.sum(axis=1), 1)[:, None]
        last = j == 0
        last_pairs = np.zeros((n, width), dtype=np.float32)
        last_pairs[r[last], c[last]] = pairs[last]
        put("last_item_cooccurrence", links[:, 0, :])
        put("last_item_pairs", last_pairs)
        put("second_item_cooccurrence", links[:, 1, :] if window > 1 else 0.0)
        put("strongest_link", links.max(axis=1))
        put("linked_history_items", n_linked)
        put("linked_share", n_linked / n_recent)
        put("nearest_link", np.where(n_linked > 0, linked.argmax(axis=1), window))

        popularity = feed.popularity.popularity_[safe]
        indptr = cooc.neighbours_.indptr
        put("log_popularity", np.log1p(np.maximum(popularity, 0.0)))
        put("popularity_rank", _ranks(popularity, valid))
        put("candidate_neighbours", indptr[safe + 1] - indptr[safe])
        put("history_length", lengths[:, None])
        put("cooccurring_items", np.count_nonzero(together > 0, axis=1)[:, None])
        categories = feed.categories
        if categories is not None and categories.size and categories.max() >= 0:
            history_cats = np.where(known, categories[np.maximum(recent, 0)], -2)
            candidate_cats = categories[safe]
            same = (history_cats[:, :, None] == candidate_cats[:, None, :]).sum(axis=1)
            put("category_share", np.where(candidate_cats >= 0, same / n_recent, np.nan))
        else:
            put("category_share", np.nan)

        after = sources.values(transitions.counts_, candidate)
        shares = np.zeros((n, window, width), dtype=np.float32)
        shares[r, j, c] = after / np.maximum(transitions.totals_[source], 1e-12)
        forward = np.zeros((n, width), dtype=np.float32)
        backward = np.zeros((n, width), dtype=np.float32)
        forward[r[last], c[last]] = after[last]
        latest = _Rows(recent[:, 0], r[last])  # rows without a history are never looked up
        backward[r[last], c[last]] = latest.values(transitions.reverse_, candidate[last])
        decay = 0.5 ** np.arange(window, dtype=np.float32)
        both = forward + backward
        put("next_after_last", shares[:, 0, :])
        put("next_after_recent", (shares * decay[None, :, None]).sum(axis=1))
        put("follows_share", np.where(both > 0, forward / np.maximum(both, 1e-12), np.nan))
        return out.reshape(n * width, len(FEATURE_NAMES))

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model_.save(path / _MODEL_DIR)
        self.transitions_.save(path / _TRANSITIONS_FILE)
        (path / _PARAMS_FILE).write_text(
            json.dumps(
                {
                    "params": self.get_params(),
                    "features": list(FEATURE_NAMES),
                    "report": getattr(self, "report_", {}),
                },
                indent=2,
            )
        )

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        stored = json.loads((path / _PARAMS_FILE).read_text())
        if stored.get("features") != list(FEATURE_NAMES):
            raise ValueError(
                f"{path}: the ranker was trained on other features than this shoplm computes; "
                "rebuild the engine"
            )
        ranker = cls(**stored["params"])
        ranker.model_ = LambdaMARTRanker.load(path / _MODEL_DIR)
        ranker.transitions_ = Transitions.load(path / _TRANSITIONS_FILE)
        ranker.report_ = stored.get("report", {})
        return ranker


class Transitions:
    """Directed successor counts: ``counts_[i, j]`` weighs each time ``j`` came at most
    ``window`` events after ``i`` in a user's time order (``0.5 ** (steps - 1)``).

    Co-occurrence counts pairs both ways; these keep the order, which next-item
    prediction cares about. Rows are normalised by each item's total at query time.
    """

    def __init__(self, window: int = 3) -> None:
        self.window = window

    def fit(self, interactions: Interactions) -> Self:
        seqs = interactions.to_sequences()
        rows, items, n = seqs.row_ids(), seqs.items, interactions.n_items
        sources, successors, weights = [], [], []
        for step in range(1, self.window + 1):
            same = (rows[step:] == rows[:-step]) & (items[step:] != items[:-step])
            sources.append(items[:-step][same])
            successors.append(items[step:][same])
            weights.append(np.full(int(same.sum()), 0.5 ** (step - 1), dtype=np.float32))
        counts = sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(sources), np.concatenate(successors))),
            shape=(n, n),
            dtype=np.float32,
        )
        counts.sum_duplicates()
        counts.sort_indices()
        self._set_counts(counts)
        return self

    def _set_counts(self, counts: sp.csr_matrix) -> None:
        self.counts_ = counts
        self.reverse_ = counts.T.tocsr()  # predecessors: reverse_[j, i] = counts_[i, j]
        self.reverse_.sort_indices()
        self.totals_ = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel()

    def save(self, path: Path) -> None:
        m = self.counts_
        np.savez(path, data=m.data, indices=m.indices, indptr=m.indptr, window=self.window)

    @classmethod
    def load(cls, path: Path) -> Self:
        with np.load(path) as arrays:
            model = cls(window=int(arrays["window"]))
            n = arrays["indptr"].size - 1
            model._set_counts(
                sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=(n, n))
            )
        return model


def _mask(feed: PersonalFeed, histories: Sequences, scores: np.ndarray) -> None:
    """History items and unavailable items to -inf, in place (the feed's business rules)."""
    rows = np.repeat(np.arange(len(histories)), histories.lengths)
    scores[rows, histories.items] = -np.inf
    if feed.available is not None:
        scores[:, ~feed.available] = -np.inf


def _ranks(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """0-based rank of each value within its row, best first; padding ranks last."""
    n, width = values.shape
    order = np.argsort(np.where(valid, -values, np.inf), axis=1, kind="stable")
    ranks = np.empty(n * width, dtype=np.float32)
    ranks[(order + width * np.arange(n)[:, None]).ravel()] = np.tile(
        np.arange(width, dtype=np.float32), n
    )
    return ranks.reshape(n, width)


class _Rows:
    """Look-ups ``matrix[rows[inverse[i]], cols[i]]`` (float32, 0 where not stored) in any
    CSR matrix of the catalogue (a row -1 is empty): the rows' entries are gathered, then
    (row, column) keys binary-searched. For a request's few thousand pairs that is a
    fraction of the cost of scipy's fancy indexing, most of which is argument checking.
    """

    def __init__(self, rows: np.ndarray, inverse: np.ndarray) -> None:
        self.size = inverse.size
        self.distinct = rows
        self.inverse = inverse.astype(np.int64)

    def values(self, matrix: sp.csr_matrix, cols: np.ndarray) -> np.ndarray:
        indptr, n_cols = matrix.indptr, matrix.shape[1]
        rows = np.maximum(self.distinct, 0)
        starts = indptr[rows]
        lengths = np.where(self.distinct >= 0, indptr[rows + 1] - starts, 0)
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(self.size, dtype=np.float32)
        entries = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
        keys = np.repeat(np.arange(self.distinct.size, dtype=np.int64), lengths) * n_cols
        keys += matrix.indices[entries]
        data = matrix.data[entries]
        if (keys[1:] < keys[:-1]).any():  # rows whose indices are not sorted
            order = np.argsort(keys, kind="stable")
            keys, data = keys[order], data[order]
        wanted = self.inverse * n_cols + cols
        at = np.minimum(np.searchsorted(keys, wanted), total - 1)
        return np.where(keys[at] == wanted, data[at], 0.0).astype(np.float32)


def _ndcg10(ranks: np.ndarray) -> float:
    """Mean NDCG@10 of single targets at 0-based ``ranks`` (-1: not ranked, scores 0)."""
    if ranks.size == 0:
        return float("nan")
    hit = (ranks >= 0) & (ranks < 10)
    return float(np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0).mean())
