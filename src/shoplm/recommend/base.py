"""The contract every recommendation source keeps.

A recommender is fitted on :class:`~shoplm.data.interactions.Interactions` (contiguous int
ids) and is then queried with user *histories*, not user ids: a user is what they did. That
keeps every source stateless at query time, so a session that is seconds old, a user the
model never saw, and a user whose data was erased are all answered the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol, Self

import numpy as np

from shoplm.data.interactions import Interactions, Sequences


class Scorer(Protocol):
    """Anything that scores every item for a batch of histories (what evaluation needs)."""

    def score(self, histories: Sequences) -> np.ndarray: ...


class Recommender(ABC):
    """Base class: parameters in ``__init__`` (no work there), ``fit`` learns."""

    n_items: int

    @abstractmethod
    def fit(self, interactions: Interactions) -> Self:
        """Learn from the interactions; returns ``self``."""

    @abstractmethod
    def score(self, histories: Sequences) -> np.ndarray:
        """Score every item for every history: float32 array of shape (n_histories, n_items)."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the fitted model into the folder ``path`` (created if missing)."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> Self:
        """Read a model written by :meth:`save`."""

    def recommend(
        self, histories: Sequences, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per history as ``(item_ids, scores)``, both of shape (n, k).

        With ``exclude_seen`` the items already in a history are not recommended back.
        Rows with fewer than ``k`` candidates are padded with id -1 and score -inf.
        """
        scores = self.score(histories)
        if exclude_seen:
            rows = np.repeat(np.arange(len(histories)), histories.lengths)
            scores[rows, histories.items] = -np.inf
        return top_k(scores, k)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top ``k`` of a score matrix, best first, ties broken by lower item id."""
    n_cols = scores.shape[1]
    k_eff = min(k, n_cols)
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    ids = np.take_along_axis(part, order, axis=1)
    best = np.take_along_axis(part_scores, order, axis=1)
    ids = np.where(np.isneginf(best), -1, ids)
    if k_eff < k:
        ids = np.pad(ids, ((0, 0), (0, k - k_eff)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
    return ids.astype(np.int64), best.astype(np.float32)
