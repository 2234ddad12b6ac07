"""Catalogue edits made while the service runs, on top of an engine's fixed catalogue.

An engine's items are fixed at build time; a shop adds and withdraws products all day. The
live catalogue extends the engine's id space: engine items keep ids ``0..n-1`` and items
added since get ``n, n+1, ...`` in the order they first arrived. Added and changed items
are searchable at once through a small lexical index over the items added since the build (a first
cut: the next build indexes them properly); deleted items are masked out of every answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shoplm.search.pipeline import SearchFilters

_WORD = re.compile(r"\w+")
#: Catalogue fields an edit may set (``item_id`` comes from the URL).
EDITABLE_FIELDS = ("title", "description", "category", "brand", "price")
_TEXT_FIELDS = ("title", "description", "category", "brand")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class _FreshIndex:
    """The added items and their words, swapped in whole so a reader never sees half."""

    ids: np.ndarray
    vocabulary: dict[str, int]
    terms: sp.csr_matrix  # binary (len(ids), len(vocabulary))
    category: np.ndarray
    brand: np.ndarray  # lower case
    price: np.ndarray

    @classmethod
    def build(cls, ids: np.ndarray, rows: pd.DataFrame) -> _FreshIndex:
        # one string per row (``agg(" ".join, axis=1)`` on no rows yields one per *column*,
        # which made the field names searchable before any item was added)
        fields = rows[list(_TEXT_FIELDS)].fillna("").astype(str)
        words = [sorted(set(_words(" ".join(row)))) for row in fields.itertuples(index=False)]
        vocabulary = {w: i for i, w in enumerate(sorted({w for row in words for w in row}))}
        lengths = np.fromiter((len(r) for r in words), dtype=np.int64, count=len(words))
        columns = np.fromiter(
            (vocabulary[w] for row in words for w in row), dtype=np.int64, count=lengths.sum()
        )
        terms = sp.csr_matrix(
            (np.ones(columns.size, dtype=np.float32), columns, np.append(0, np.cumsum(lengths))),
            shape=(len(words), len(vocabulary)),
        )
        return cls(
            ids=ids,
            vocabulary=vocabulary,
            terms=terms,
            category=rows["category"].fillna("").astype(str).to_numpy(dtype=object),
            brand=rows["brand"].fillna("").astype(str).str.lower().to_numpy(dtype=object),
            price=rows["price"].to_numpy(dtype=float),
        )

    def passes(self, filters: SearchFilters) -> np.ndarray:
        """Which added items pass the caller's filters."""
        keep = np.ones(self.ids.size, dtype=bool)
        if filters.category:
            keep &= np.char.startswith(self.category.astype(str), filters.category)
        if filters.brand:
            keep &= self.brand == filters.brand.lower()
        if filters.price_min is not None:
            keep &= self.price >= filters.price_min
        if filters.price_max is not None:
            keep &= self.price <= filters.price_max
        return keep


class LiveCatalog:
    """The engine's items plus the edits in the event log's side table.

    Writers must be serialised by the caller; readers may run alongside them, since every
    array a reader uses is replaced whole (or grown before anything refers to new rows).
    """

    def __init__(self, items: pd.DataFrame) -> None:
        self.n_base = len(items)
        frame = items.reindex(columns=["item_id", *EDITABLE_FIELDS]).reset_index(drop=True)
        # object text and float prices, so that edits of any shape can be written in
        self._frame = frame.astype({**dict.fromkeys(_TEXT_FIELDS, object), "price": float})
        self.ids = pd.Index(self._frame["item_id"])
        #: the same ids as a plain array, read per response (an Arrow-backed index converts
        #: its whole column on each ``to_numpy``)
        self.id_array = self.ids.to_numpy(dtype=object)
        self.deleted = np.zeros(self.n_base, dtype=bool)
        self.titles = self._titles()
        self._fresh = _FreshIndex.build(np.zeros(0, dtype=np.int64), self._frame.iloc[:0])

    def apply(self, edits: pd.DataFrame) -> None:
        """Apply side-table rows (``item_id``, ``deleted``, fields), latest last."""
        if edits.empty:
            return
        edits = edits.drop_duplicates("item_id", keep="last").reset_index(drop=True)
        new = edits.loc[self.ids.get_indexer(edits["item_id"]) < 0, ["item_id"]]
        if len(new):
            self._frame = pd.concat([self._frame, new], ignore_index=True)
            self.deleted = np.append(self.deleted, np.ones(len(new), dtype=bool))
            self.ids = pd.Index(self._frame["item_id"])
            self.id_array = self.ids.to_numpy(dtype=object)
        rows = self.ids.get_indexer(edits["item_id"])
        live = ~edits["deleted"].to_numpy(dtype=bool)
        # an edit replaces the whole item: a field it leaves out becomes empty
        fields = edits.reindex(columns=list(EDITABLE_FIELDS))[live]
        fields["price"] = pd.to_numeric(fields["price"])
        for column in EDITABLE_FIELDS:
            self._frame.loc[rows[live], column] = fields[column].to_numpy(
                dtype=self._frame[column].dtype
            )
        self.titles = self._titles()
        fresh = np.union1d(self._fresh.ids, rows[live & (rows >= self.n_base)])
        self._fresh = _FreshIndex.build(fresh, self._frame.iloc[fresh])
        self.deleted[rows] = ~live

    def put(self, item_id: str, fields: Mapping[str, object]) -> bool:
        """Add or change one item; returns whether it is new to the catalogue."""
        is_new = item_id not in self.ids
        self.apply(pd.DataFrame([{"item_id": item_id, "deleted": False, **fields}]))
        return is_new

    def delete(self, item_id: str) -> bool:
        """Withdraw one item; returns False when it is unknown or already withdrawn."""
        row = self.ids.get_indexer([item_id])[0]
        if row < 0 or self.deleted[row]:
            return False
        self.deleted[row] = True
        return True

    def search(self, query: str, k: int, filters: SearchFilters) -> tuple[np.ndarray, np.ndarray]:
        """Added, live items matching the query's words: ids and the share of words matched."""
        index = self._fresh
        words = set(_words(query))
        columns = [index.vocabulary[w] for w in words if w in index.vocabulary]
        if not columns:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        share = np.asarray(index.terms[:, columns].sum(axis=1)).ravel() / len(words)
        keep = (share > 0) & ~self.deleted[index.ids] & index.passes(filters)
        ids, share = index.ids[keep], share[keep].astype(np.float32)
        order = np.lexsort((ids, -share))[:k]
        return ids[order], share[order]

    def _titles(self) -> np.ndarray:
        """Every item's title by id, read per response, so kept as one array."""
        return self._frame["title"].fillna("").astype(str).to_numpy(dtype=object)
