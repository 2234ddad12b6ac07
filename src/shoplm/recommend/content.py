"""Content-based neighbours from item vectors (text embeddings): the cold-start source.

An item is recommendable as soon as it has a vector, before anyone has bought or viewed it,
and a visitor is recommendable as soon as their session holds one item. Interaction-based
sources (co-occurrence, ALS, sequential models) can do neither, so this source fills both
gaps; where interactions exist they usually rank better, and the recommend pipeline blends.

A history's profile is the recency-weighted mean of its items' unit vectors (weights as in
:func:`~shoplm.recommend.cooccurrence.history_matrix`), and items score by cosine with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Self

import numpy as np

from shoplm.data.interactions import Interactions, Sequences
from shoplm.recommend.base import Recommender
from shoplm.recommend.cooccurrence import history_matrix, similar_by_scoring

_PARAMS_FILE = "content.json"
_ARRAYS_FILE = "content.npz"


class ContentRecommender(Recommender):
    """Cosine between a history's recency-weighted mean vector and every item vector.

    Parameters
    ----------
    item_vectors:
        One row per item id (n_items, d), e.g. text-encoder embeddings of the titles. Rows
        are unit-normalised in ``fit``; an all-zero row (an item with no text) scores 0.
    recency_decay:
        Weight of a history item ``s`` steps before the latest one is ``recency_decay ** s``,
        in (0, 1]. 0.3 was best on the validation targets of Beauty and OR, 0.5 on
        Scientific: the profile should mostly be the last item or two.
    """

    def __init__(self, item_vectors: np.ndarray, recency_decay: float = 0.3) -> None:
        self.item_vectors = item_vectors
        self.recency_decay = recency_decay

    def fit(self, interactions: Interactions) -> Self:
        """Normalise the vectors; the interactions only fix the catalogue size.

        Nothing is learnt from behaviour, which is the point: an item nobody has touched is
        scored exactly like one everybody has.
        """
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError(f"recency_decay must lie in (0, 1], got {self.recency_decay}")
        vectors = np.asarray(self.item_vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != interactions.n_items:
            raise ValueError(
                f"item_vectors must have one row per item ({interactions.n_items}), "
                f"got shape {vectors.shape}"
            )
        self.item_vectors_ = _unit_rows(vectors)
        self.n_items = interactions.n_items
        return self

    def add_items(self, item_vectors: np.ndarray) -> np.ndarray:
        """Append new items (e.g. just added to the catalogue); returns their ids.

        They are recommendable at once; the ids continue the contiguous numbering.
        """
        vectors = _unit_rows(np.asarray(item_vectors, dtype=np.float32))
        ids = np.arange(self.n_items, self.n_items + vectors.shape[0], dtype=np.int64)
        self.item_vectors_ = np.vstack([self.item_vectors_, vectors])
        self.n_items = self.item_vectors_.shape[0]
        return ids

    def score(self, histories: Sequences) -> np.ndarray:
        """Cosine with each history's profile; an empty history scores every item 0."""
        weights = history_matrix(histories, self.n_items, self.recency_decay)
        profiles = _unit_rows(np.asarray(weights @ self.item_vectors_, dtype=np.float32))
        return profiles @ self.item_vectors_.T

    def similar_items(self, item_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items by cosine of their vectors, ``(ids, scores)`` of shape (n, k)."""
        return similar_by_scoring(self, item_ids, k)

    def save(self, path: Path) -> None:
        """Parameters as JSON; the normalised vectors, which ``load`` passes back in."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / _PARAMS_FILE).write_text(
            json.dumps({"recency_decay": self.recency_decay}, indent=2)
        )
        np.savez(path / _ARRAYS_FILE, item_vectors=self.item_vectors_)

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        with np.load(path / _ARRAYS_FILE) as arrays:
            vectors = arrays["item_vectors"]
        model = cls(item_vectors=vectors, **json.loads((path / _PARAMS_FILE).read_text()))
        model.item_vectors_ = vectors
        model.n_items = vectors.shape[0]
        return model


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows stay zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
