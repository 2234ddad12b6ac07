"""The two shapes user behaviour takes inside shoplm: an event table and ragged sequences.

``Interactions`` is what models are fitted on (one row per event, contiguous int ids, any
monotone time key). ``Sequences`` is what they are queried with: a batch of item histories in
CSR layout, so a batch of 10,000 users is two flat arrays rather than 10,000 Python lists,
and slicing, truncating and padding are single numpy operations.
"""

from __future__ import annotations

from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, eq=False)
class Sequences:
    """A ragged batch of item sequences: row ``i`` is ``items[indptr[i]:indptr[i + 1]]``.

    Items within a row are in time order, oldest first. The arrays are treated as read-only:
    every method returns new arrays and never writes into these.
    """

    indptr: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        indptr = np.asarray(self.indptr, dtype=np.int64)
        items = np.asarray(self.items, dtype=np.int64)
        if indptr.ndim != 1 or indptr.size == 0 or indptr[0] != 0 or indptr[-1] != items.size:
            raise ValueError("indptr must be 1-D, start at 0 and end at len(items)")
        if np.any(np.diff(indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "items", items)

    @classmethod
    def from_lists(cls, rows: AbcSequence[AbcSequence[int] | np.ndarray]) -> Sequences:
        """Build from a list of per-row item arrays (the convenient, not the fast, way in)."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        items = (
            np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
            if lengths.sum()
            else np.zeros(0, dtype=np.int64)
        )
        return cls(_indptr_from_lengths(lengths), items)

    @property
    def lengths(self) -> np.ndarray:
        """Number of items in each row, int64 (n,)."""
        return np.diff(self.indptr)

    def __len__(self) -> int:
        return self.indptr.size - 1

    def row_ids(self) -> np.ndarray:
        """The row of every entry of ``items``: the COO row index of this CSR layout."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def positions(self) -> np.ndarray:
        """The position of every entry of ``items`` within its row (0 = oldest)."""
        return np.arange(self.items.size, dtype=np.int64) - np.repeat(
            self.indptr[:-1], self.lengths
        )

    def __getitem__(self, key: int | slice | np.ndarray | AbcSequence[int]) -> Sequences:
        """Select rows by slice, integer index array or boolean mask; an int gives one row.

        An ``int`` returns that row's items as a 1-D array (a single history); everything
        else returns a ``Sequences`` so batches stay batches.
        """
        if isinstance(key, int | np.integer):
            row = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} sequences")
            return self.items[self.indptr[row] : self.indptr[row + 1]]
        rows = np.arange(len(self))[key]
        lengths = self.lengths[rows]
        indptr = _indptr_from_lengths(lengths)
        src = np.repeat(self.indptr[rows] - indptr[:-1], lengths) + np.arange(indptr[-1])
        return Sequences(indptr, self.items[src])

    def drop_last(self, n: int | np.ndarray = 1) -> Sequences:
        """Each row without its last ``n`` items; rows shorter than ``n`` become empty.

        ``n`` may be an int array of one count per row, for splits that treat rows unequally.
        """
        if np.any(np.asarray(n) < 0):
            raise ValueError("n must be >= 0")
        lengths = self.lengths
        kept = np.maximum(lengths - n, 0)
        keep = self.positions() < np.repeat(kept, lengths)
        return Sequences(_indptr_from_lengths(kept), self.items[keep])

    def last(self) -> np.ndarray:
        """The last (most recent) item of every row; every row must be non-empty."""
        if np.any(self.lengths == 0):
            raise ValueError("last() needs non-empty rows")
        return self.items[self.indptr[1:] - 1]

    def to_padded(self, max_len: int, pad: int = -1) -> np.ndarray:
        """The most recent ``max_len`` items of each row, right-aligned, left-padded with ``pad``.

        Right alignment puts the newest item in the last column for every row, which is the
        layout causal sequence models (SASRec and kin) read their prediction from.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        out = np.full((len(self), max_len), pad, dtype=np.int64)
        lengths = self.lengths
        kept = np.minimum(lengths, max_len)
        from_end = np.repeat(self.indptr[1:], lengths) - np.arange(self.items.size)
        keep = from_end <= np.repeat(kept, lengths)
        out[self.row_ids()[keep], max_len - from_end[keep]] = self.items[keep]
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequences):
            return NotImplemented
        return np.array_equal(self.indptr, other.indptr) and np.array_equal(self.items, other.items)

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside: not hashable

    def __repr__(self) -> str:
        return f"Sequences(n={len(self)}, n_items_total={self.items.size})"


@dataclass(frozen=True, eq=False)
class Interactions:
    """One row per event: who (``users``), what (``items``), when (``times``), how much.

    ``times`` is any int64 key that orders a user's events (seconds, positions, ...); ties
    keep the order the events were given in. ``weights`` lets one table carry views and
    purchases with different strength; models that ignore it treat every event as 1.
    """

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    weights: np.ndarray
    n_users: int
    n_items: int

    def __post_init__(self) -> None:
        users = np.asarray(self.users, dtype=np.int64)
        items = np.asarray(self.items, dtype=np.int64)
        times = np.asarray(self.times, dtype=np.int64)
        weights = np.asarray(self.weights, dtype=np.float32)
        if not users.ndim == items.ndim == times.ndim == weights.ndim == 1:
            raise ValueError("users, items, times and weights must be 1-D")
        if not users.size == items.size == times.size == weights.size:
            raise ValueError("users, items, times and weights must have the same length")
        for name, ids, bound in (("users", users, self.n_users), ("items", items, self.n_items)):
            if ids.size and (ids.min() < 0 or ids.max() >= bound):
                raise ValueError(f"{name} ids must lie in [0, {bound})")
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "n_users", int(self.n_users))
        object.__setattr__(self, "n_items", int(self.n_items))

    def __len__(self) -> int:
        return self.users.size

    @classmethod
    def from_sequences(cls, seqs: Sequences, n_items: int) -> Interactions:
        """Events from sequences: user = row, time = position in the row, weight 1."""
        return cls(
            users=seqs.row_ids(),
            items=seqs.items,
            times=seqs.positions(),
            weights=np.ones(seqs.items.size, dtype=np.float32),
            n_users=len(seqs),
            n_items=n_items,
        )

    def to_csr(self) -> sp.csr_matrix:
        """User-item matrix (n_users, n_items) with repeated events' weights summed."""
        mat = sp.csr_matrix(
            (self.weights, (self.users, self.items)),
            shape=(self.n_users, self.n_items),
            dtype=np.float32,
        )
        mat.sum_duplicates()
        return mat

    def to_sequences(self) -> Sequences:
        """One row per user id 0..n_users-1 (empty for users without events), time-sorted.

        The sort is stable, so events with equal times keep their given order: baskets
        logged with one timestamp stay in the order they were written.
        """
        order = np.lexsort((self.times, self.users))
        counts = np.bincount(self.users, minlength=self.n_users)
        return Sequences(_indptr_from_lengths(counts), self.items[order])


def _indptr_from_lengths(lengths: np.ndarray) -> np.ndarray:
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return indptr
