"""Most-popular items: the baseline every recommender must beat, and the cold-start fallback.

With ``half_life_days`` the counts decay with age ("trending"), so last season's best seller
gives way to what sells this week; without it this is the plain PopRec baseline of the
sequential-recommendation papers (S3-Rec's PopRec row on Beauty is reproduced exactly by
``bench/eval_popularity.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np

from shoplm.data.interactions import Interactions, Sequences
from shoplm.recommend.base import Recommender

_SECONDS_PER_DAY = 86_400.0


class PopularityRecommender(Recommender):
    """Score every item by its (optionally time-decayed) summed event weight.

    Parameters
    ----------
    half_life_days:
        ``None`` counts every event fully. Otherwise an event's weight halves every
        ``half_life_days`` before the latest event seen in ``fit``; ``Interactions.times``
        must then be in seconds.
    """

    def __init__(self, half_life_days: float | None = None) -> None:
        self.half_life_days = half_life_days

    def fit(self, interactions: Interactions) -> Self:
        if self.half_life_days is not None and self.half_life_days <= 0:
            raise ValueError(f"half_life_days must be > 0, got {self.half_life_days}")
        weights = interactions.weights.astype(np.float64)
        if self.half_life_days is not None and len(interactions):
            age_days = (interactions.times.max() - interactions.times) / _SECONDS_PER_DAY
            weights = weights * np.exp2(-age_days / self.half_life_days)
        self.n_items = interactions.n_items
        self.popularity_ = np.bincount(
            interactions.items, weights=weights, minlength=self.n_items
        ).astype(np.float32)
        return self

    def score(self, histories: Sequences) -> np.ndarray:
        """The same popularity row for every history, as a writable (n, n_items) copy.

        A copy rather than a broadcast view because callers mask seen items in place.
        """
        return np.tile(self.popularity_, (len(histories), 1))

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        half_life = np.nan if self.half_life_days is None else self.half_life_days
        np.savez(path / "popularity.npz", popularity=self.popularity_, half_life_days=half_life)

    @classmethod
    def load(cls, path: Path) -> Self:
        with np.load(Path(path) / "popularity.npz") as data:
            half_life = float(data["half_life_days"])
            model = cls(half_life_days=None if np.isnan(half_life) else half_life)
            model.popularity_ = data["popularity"]
        model.n_items = model.popularity_.size
        return model
