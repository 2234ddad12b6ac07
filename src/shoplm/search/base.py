"""The contract every search retriever keeps.

A retriever is fitted on the catalogue table (one row per item; the row position is the
internal item id) and answers a batch of query strings with the top ``k`` item ids and
scores. Rows with fewer than ``k`` hits are padded with id -1 and score -inf.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd


class Retriever(ABC):
    """Base class: parameters in ``__init__`` (no work there), ``fit`` indexes."""

    @abstractmethod
    def fit(self, items: pd.DataFrame) -> Self:
        """Index the catalogue; columns are those of :mod:`shoplm.data.schema`."""

    @abstractmethod
    def retrieve(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per query as ``(item_ids int64 (n, k), scores float32 (n, k))``."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the fitted index into the folder ``path`` (created if missing)."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> Self:
        """Read an index written by :meth:`save`."""
