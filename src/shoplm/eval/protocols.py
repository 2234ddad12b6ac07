"""Fixed evaluation protocols, so that a number means the same thing wherever it is printed."""

from __future__ import annotations

from typing import Literal, overload

import numpy as np

from shoplm.data.interactions import Sequences
from shoplm.eval.metrics import (
    hit_rate_from_ranks,
    mrr_from_ranks,
    ndcg_from_ranks,
    target_ranks,
)
from shoplm.recommend.base import Scorer

Ties = Literal["optimistic", "pessimistic"]


@overload
def evaluate_next_item(
    model: Scorer,
    history: Sequences,
    targets: np.ndarray,
    ks: tuple[int, ...] = ...,
    mask_history: bool = ...,
    batch_size: int = ...,
    ties: Ties = ...,
    return_ranks: Literal[False] = ...,
) -> dict[str, float]: ...


@overload
def evaluate_next_item(
    model: Scorer,
    history: Sequences,
    targets: np.ndarray,
    ks: tuple[int, ...] = ...,
    mask_history: bool = ...,
    batch_size: int = ...,
    ties: Ties = ...,
    *,
    return_ranks: Literal[True],
) -> tuple[dict[str, float], np.ndarray]: ...


def evaluate_next_item(
    model: Scorer,
    history: Sequences,
    targets: np.ndarray,
    ks: tuple[int, ...] = (5, 10, 20),
    mask_history: bool = True,
    batch_size: int = 1024,
    ties: Ties = "pessimistic",
    return_ranks: bool = False,
) -> dict[str, float] | tuple[dict[str, float], np.ndarray]:
    """Next-item prediction with full ranking: the S3-Rec / SASRec full-ranking protocol.

    Each history's single target is ranked against every item of the catalogue (no sampled
    negatives, whose numbers are not comparable). With ``mask_history`` the items already in
    the history are set to ``-inf`` first, as the S3-Rec and SASRec code does, so a model is
    not rewarded for recommending back what the user has. Scores are computed
    ``batch_size`` histories at a time, which bounds memory at ``batch_size * n_items``
    floats.

    Ties default to pessimistic (the target ranks below every item scored the same) so that a
    model cannot gain from ties: a constant scorer would be perfect under optimistic ties.
    On Beauty the popularity baseline reproduces S3-Rec's published PopRec row under either
    rule (see ``tests/test_popularity.py``).

    Returns ``hr@k`` (hit rate; with one target it equals recall@k), ``ndcg@k`` for each k,
    ``mrr`` over the full ranking, and ``n_users``; with ``return_ranks`` also the 0-based
    rank of every target, for confidence intervals and paired tests.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if not len(history):
        raise ValueError("no histories to evaluate")
    if targets.shape != (len(history),):
        raise ValueError(f"need one target per history: {len(history)} vs {targets.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ranks = np.empty(len(history), dtype=np.int64)
    for start in range(0, len(history), batch_size):
        batch = history[start : start + batch_size]
        scores = model.score(batch)
        if mask_history:
            scores[batch.row_ids(), batch.items] = -np.inf
        ranks[start : start + len(batch)] = target_ranks(
            scores, targets[start : start + len(batch)], ties=ties
        )
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"hr@{k}"] = float(hit_rate_from_ranks(ranks, k).mean())
        metrics[f"ndcg@{k}"] = float(ndcg_from_ranks(ranks, k).mean())
    metrics["mrr"] = float(mrr_from_ranks(ranks).mean())
    metrics["n_users"] = len(history)
    return (metrics, ranks) if return_ranks else metrics
