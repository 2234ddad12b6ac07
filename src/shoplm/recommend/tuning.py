"""Choosing a recommender's parameters on the shop's own log, inside a build.

Every shop's log has its own rhythm (baskets of 3 items or browsing sessions of 40), so one
fixed co-occurrence window cannot suit them all: on Online Retail the defaults score Recall@10
0.237 where the tuned window scores 0.314. The build therefore holds out each user's last
item, grid-searches on those validation targets with the full-ranking protocol, and refits
the best parameters on every event. The search is staged (each stage's values are crossed;
the best point is carried into the next stage) and stops at a time budget.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shoplm.data.interactions import Interactions, Sequences
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.base import Recommender
from shoplm.recommend.cooccurrence import CooccurrenceRecommender
from shoplm.recommend.feed import PersonalFeed
from shoplm.recommend.popularity import PopularityRecommender

Stage = dict[str, list[Any]]

#: Shares of the collaborative source in the feed tried at build time (0: co-occurrence only).
COLLABORATIVE_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)

#: Co-occurrence grid: session window and popularity damping first, then recency decay.
COOCCURRENCE_STAGES: list[Stage] = [
    {"window": [1, 2, 3, 5, 10, None], "damping": [0.0, 0.25, 0.5]},
    {"recency_decay": [0.3, 0.5, 0.8, 1.0]},
]


@dataclass
class GridResult:
    params: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    n_validation_users: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


@dataclass(frozen=True, eq=False)
class ValidationSplit:
    """Training events without each evaluated user's last item, and those held-out items."""

    train: Interactions
    history: Sequences
    targets: np.ndarray
    #: the user id of each held-out target
    users: np.ndarray | None = None


def last_item_split(
    interactions: Interactions,
    max_users: int | None = 5_000,
    seed: int = 0,
    keep_weights: bool = False,
) -> ValidationSplit | None:
    """Hold out the last item of (a seeded sample of) users with at least 2 items.

    Returns None when fewer than 50 users qualify: too few targets to choose anything by.
    The training events are rebuilt from sequences (weight 1, time = position) unless
    ``keep_weights``, which keeps the other events as they are (weights and times), so
    that sources refitted on them score on the same scale as those fitted on every event.
    """
    seqs = interactions.to_sequences()
    eligible = np.flatnonzero(seqs.lengths >= 2)
    if eligible.size < 50:
        return None
    if max_users is not None and eligible.size > max_users:
        rng = np.random.default_rng(seed)
        eligible = np.sort(rng.choice(eligible, max_users, replace=False))
    drop = np.zeros(len(seqs), dtype=np.int64)
    drop[eligible] = 1
    train = seqs.drop_last(drop)
    evaluated = seqs[eligible]
    if keep_weights:  # the events in to_sequences' order, minus each sampled user's last
        order = np.lexsort((interactions.times, interactions.users))
        kept = np.ones(order.size, dtype=bool)
        kept[seqs.indptr[eligible + 1] - 1] = False
        picked = order[kept]
        train_events = Interactions(
            interactions.users[picked],
            interactions.items[picked],
            interactions.times[picked],
            interactions.weights[picked],
            interactions.n_users,
            interactions.n_items,
        )
    else:
        train_events = Interactions.from_sequences(train, interactions.n_items)
    return ValidationSplit(
        train=train_events,
        history=evaluated.drop_last(1),
        targets=evaluated.last(),
        users=eligible,
    )


def grid_search(
    make: Callable[[dict[str, Any]], Recommender],
    stages: list[Stage],
    split: ValidationSplit,
    metric: str = "ndcg@10",
    max_seconds: float | None = None,
) -> GridResult:
    """Stage-wise grid search of ``make(params)`` on the validation targets."""
    start = time.perf_counter()
    result = GridResult(params={}, n_validation_users=len(split.targets))
    for stage in stages:  # an empty stage evaluates the fixed parameters once
        scored: list[tuple[float, dict[str, Any]]] = []
        for values in itertools.product(*stage.values()):
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                result.stopped_early = True
                break
            params = {**result.params, **dict(zip(stage, values, strict=True))}
            model = make(params).fit(split.train)
            score = evaluate_next_item(model, split.history, split.targets, ks=(10,))[metric]
            result.trials.append({"params": params, metric: score})
            scored.append((score, params))
        if scored:
            result.params = max(scored, key=lambda pair: pair[0])[1]
        if result.stopped_early:
            break
    result.seconds = time.perf_counter() - start
    return result


def tune_collaborative_weight(
    split: ValidationSplit,
    cooccurrence: CooccurrenceRecommender,
    collaborative: Recommender,
    weights: tuple[float, ...] = COLLABORATIVE_WEIGHTS,
    metric: str = "ndcg@10",
    max_seconds: float | None = None,
) -> GridResult:
    """The collaborative source's share in the feed, by ``metric`` on the validation targets.

    Both sources are fitted once on the validation training events; only the blend varies.
    """
    start = time.perf_counter()
    cooccurrence.fit(split.train)
    collaborative.fit(split.train)
    popularity = PopularityRecommender().fit(split.train)
    result = GridResult(params={"collaborative_weight": 0.0}, n_validation_users=len(split.targets))
    best = -np.inf
    for weight in weights:
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            result.stopped_early = True
            break
        feed = PersonalFeed(
            cooccurrence,
            popularity,
            titles=np.zeros(0, dtype=object),
            collaborative=collaborative,
            collaborative_weight=weight,
        )
        score = evaluate_next_item(feed, split.history, split.targets, ks=(10,))[metric]
        result.trials.append({"params": {"collaborative_weight": weight}, metric: score})
        if score > best:
            best, result.params = score, {"collaborative_weight": weight}
    result.seconds = time.perf_counter() - start
    return result
