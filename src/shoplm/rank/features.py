"""Features of (query, candidate item) pairs for the learned search ranker.

All features are computed for a whole batch of candidate lists at once with sparse
products, never per pair in Python: the query and title token sets are binary sparse rows,
and the overlap of a query with each of its candidates is the row-wise sum of an elementwise
product of gathered rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shoplm.search.text import TextAnalyzer, Tokenized

FEATURE_NAMES: tuple[str, ...] = (
    "lexical_score",
    "dense_score",
    "lexical_score_norm",
    "dense_score_norm",
    "lexical_log_rank",
    "dense_log_rank",
    "query_terms_matched",
    "title_terms_matched",
    "query_bigrams_matched",
    "query_length",
    "title_length",
    "item_log_popularity",
    "item_conversion",
    "query_item_log_clicks",
)


class SearchFeatures:
    """Learns per-item statistics once; turns candidate lists into a feature matrix.

    ``fit(items, item_events, query_clicks)``: ``item_events`` is an optional frame with
    ``item`` (internal id), ``weight`` (interest, e.g. event weights) and ``purchase`` (0/1)
    columns; ``query_clicks`` an optional frame ``query, item, count`` of searches that led
    to a click or purchase of the item.
    """

    def __init__(self, stemmer: str | None = "english", stopwords: str | None = "en") -> None:
        self.stemmer = stemmer
        self.stopwords = stopwords

    @property
    def _analyzer(self) -> TextAnalyzer:
        return TextAnalyzer(stemmer=self.stemmer, stopwords=self.stopwords)

    def fit(
        self,
        items: pd.DataFrame,
        item_events: pd.DataFrame | None = None,
        query_clicks: pd.DataFrame | None = None,
    ) -> Self:
        n_items = len(items)
        titles = self._analyzer.analyze(items["title"].fillna("").astype(str).tolist())
        self.vocab_ = pd.Index(pd.unique(titles.tokens))
        self.bigram_vocab_ = pd.Index(pd.unique(_bigrams(titles)[1]))
        self.titles_ = self._binary(titles, self.vocab_)
        self.title_bigrams_ = self._binary_bigrams(titles)
        self.title_length_ = np.diff(titles.indptr).astype(np.float32)
        popularity = np.zeros(n_items, dtype=np.float64)
        conversion = np.zeros(n_items, dtype=np.float64)
        if item_events is not None and len(item_events):
            item = item_events["item"].to_numpy()
            popularity = np.bincount(item, item_events["weight"].to_numpy(), minlength=n_items)
            purchases = np.bincount(item, item_events["purchase"].to_numpy(), minlength=n_items)
            seen = np.bincount(item, minlength=n_items)
            conversion = (purchases + 0.1) / (seen + 1.0)  # smoothed toward a low prior
        self.item_log_popularity_ = np.log1p(popularity).astype(np.float32)
        self.item_conversion_ = conversion.astype(np.float32)
        self.query_clicks_ = _click_table(self._analyzer, query_clicks)
        return self

    def transform(
        self, queries: Sequence[str], candidates: dict[str, np.ndarray], depth: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features of every valid candidate, row-major over queries.

        ``candidates`` is :meth:`HybridRetriever.candidates` output (``ids`` (n, m) padded
        with -1, ``lexical``/``dense`` scores, ``lexical_ids``/``dense_ids`` top lists).
        Returns ``(X (n_valid, n_features) float32, valid mask (n, m))``.
        """
        ids = candidates["ids"]
        valid = ids >= 0
        rows, cols = np.nonzero(valid)
        items = ids[rows, cols]
        lexical = candidates["lexical"][rows, cols]
        dense = candidates["dense"][rows, cols]
        query_tokens = self._analyzer.analyze(list(queries))
        q_terms = self._binary(query_tokens, self.vocab_)
        q_bigrams = self._binary_bigrams(query_tokens)
        q_length = np.diff(query_tokens.indptr).astype(np.float32)
        matched = _rowwise_overlap(q_terms, rows, self.titles_, items)
        matched_bigrams = _rowwise_overlap(q_bigrams, rows, self.title_bigrams_, items)
        n_bigrams = np.maximum(q_length - 1, 1)
        features = np.column_stack(
            [
                lexical,
                dense,
                _per_query_minmax(candidates["lexical"], valid)[rows, cols],
                _per_query_minmax(candidates["dense"], valid)[rows, cols],
                np.log1p(_rank_in(candidates["lexical_ids"], ids, depth)[rows, cols]),
                np.log1p(_rank_in(candidates["dense_ids"], ids, depth)[rows, cols]),
                matched / np.maximum(q_length[rows], 1),
                matched / np.maximum(self.title_length_[items], 1),
                matched_bigrams / n_bigrams[rows],
                q_length[rows],
                self.title_length_[items],
                self.item_log_popularity_[items],
                self.item_conversion_[items],
                self._query_clicks(query_tokens, rows, items),
            ]
        ).astype(np.float32)
        return features, valid

    def _binary(self, tokens: Tokenized, vocab: pd.Index) -> sp.csr_matrix:
        ids = vocab.get_indexer(tokens.tokens) if tokens.tokens.size else np.zeros(0, int)
        keep = ids >= 0
        matrix = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (tokens.rows[keep], ids[keep])),
            shape=(len(tokens), len(vocab)),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def _binary_bigrams(self, tokens: Tokenized) -> sp.csr_matrix:
        rows, grams = _bigrams(tokens)
        return self._binary(Tokenized(_indptr(rows, len(tokens)), grams), self.bigram_vocab_)

    def _query_clicks(self, tokens: Tokenized, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self.query_clicks_.empty:
            return np.zeros(len(rows), dtype=np.float32)
        keys = np.asarray(_joined(tokens), dtype=object)
        table = self.query_clicks_
        lookup = pd.MultiIndex.from_arrays([table["query"], table["item"]])
        at = lookup.get_indexer(pd.MultiIndex.from_arrays([keys[rows], items]))
        counts = np.where(at >= 0, table["count"].to_numpy()[np.maximum(at, 0)], 0)
        return np.log1p(counts).astype(np.float32)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        sp.save_npz(path / "titles.npz", self.titles_)
        sp.save_npz(path / "title_bigrams.npz", self.title_bigrams_)
        np.savez(
            path / "items.npz",
            title_length=self.title_length_,
            log_popularity=self.item_log_popularity_,
            conversion=self.item_conversion_,
            vocab=self.vocab_.to_numpy(dtype=str),
            bigram_vocab=self.bigram_vocab_.to_numpy(dtype=str),
        )
        self.query_clicks_.to_parquet(path / "query_clicks.parquet", index=False)
        params = {"stemmer": self.stemmer, "stopwords": self.stopwords}
        (path / "features.json").write_text(json.dumps(params))

    @classmethod
    def load(cls, path: Path) -> Self:
        model = cls(**json.loads((path / "features.json").read_text()))
        model.titles_ = sp.load_npz(path / "titles.npz").tocsr()
        model.title_bigrams_ = sp.load_npz(path / "title_bigrams.npz").tocsr()
        arrays = np.load(path / "items.npz")
        model.title_length_ = arrays["title_length"]
        model.item_log_popularity_ = arrays["log_popularity"]
        model.item_conversion_ = arrays["conversion"]
        model.vocab_ = pd.Index(arrays["vocab"].astype(object))
        model.bigram_vocab_ = pd.Index(arrays["bigram_vocab"].astype(object))
        model.query_clicks_ = pd.read_parquet(path / "query_clicks.parquet")
        return model


def _rowwise_overlap(
    left: sp.csr_matrix, left_rows: np.ndarray, right: sp.csr_matrix, right_rows: np.ndarray
) -> np.ndarray:
    """|left[left_rows[p]] ∩ right[right_rows[p]]| for every pair p, as float32."""
    if len(left_rows) == 0:
        return np.zeros(0, dtype=np.float32)
    product = left[left_rows].multiply(right[right_rows])
    return np.asarray(product.sum(axis=1)).ravel().astype(np.float32)


def _per_query_minmax(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    masked_low = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    masked_high = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
    span = np.where(masked_high > masked_low, masked_high - masked_low, 1.0)
    return np.where(valid, (scores - masked_low) / span, 0.0)


def _rank_in(top_ids: np.ndarray, ids: np.ndarray, depth: int) -> np.ndarray:
    """1-based rank of each candidate in a retriever's top list, ``depth + 1`` if absent."""
    n_rows, width = top_ids.shape
    absent = np.full(ids.shape, depth + 1, dtype=np.float32)
    listed = top_ids.ravel() >= 0
    if not listed.any():
        return absent
    # One sorted key per (row, item) of the top lists; candidates are looked up by key.
    stride = int(max(top_ids.max(), ids.max(initial=0))) + 1
    keys = (np.repeat(np.arange(n_rows), width) * stride + top_ids.ravel())[listed]
    ranks = np.tile(np.arange(1, width + 1), n_rows)[listed]
    order = np.argsort(keys)
    keys, ranks = keys[order], ranks[order]
    wanted = (np.arange(n_rows)[:, None] * stride + ids).ravel()
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    hit = (keys[pos] == wanted) & (ids.ravel() >= 0)
    return np.where(hit, ranks[pos], depth + 1).reshape(ids.shape).astype(np.float32)


def _bigrams(tokens: Tokenized) -> tuple[np.ndarray, np.ndarray]:
    """(row, "a b") for every pair of neighbouring tokens within a text."""
    if tokens.tokens.size < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)
    rows = tokens.rows
    same_text = rows[1:] == rows[:-1]
    grams = tokens.tokens[:-1].astype(str) + " " + tokens.tokens[1:].astype(str)
    return rows[1:][same_text], grams[same_text].astype(object)


def _indptr(rows: np.ndarray, n: int) -> np.ndarray:
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr


def _joined(tokens: Tokenized) -> list[str]:
    return [" ".join(sorted(t)) for t in tokens.to_lists()]


def _click_table(analyzer: TextAnalyzer, query_clicks: pd.DataFrame | None) -> pd.DataFrame:
    """Clicks per (normalised query, item): the same words in any order and form match."""
    if query_clicks is None or query_clicks.empty:
        return pd.DataFrame(
            {
                "query": pd.Series(dtype=str),
                "item": pd.Series(dtype=np.int64),
                "count": pd.Series(dtype=np.float64),
            }
        )
    keys = _joined(analyzer.analyze(query_clicks["query"].astype(str).tolist()))
    table = pd.DataFrame(
        {
            "query": keys,
            "item": query_clicks["item"].to_numpy(),
            "count": query_clicks["count"].to_numpy(dtype=np.float64),
        }
    )
    return table.groupby(["query", "item"], as_index=False)["count"].sum()
