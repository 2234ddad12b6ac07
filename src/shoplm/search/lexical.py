"""BM25 over several catalogue fields at once, with a weight per field.

Each non-empty field (title, brand, category, description, attributes) gets its own BM25
statistics (document frequencies and lengths differ a lot between a title and a description,
so pooling them into one text would let long descriptions drown the title). bm25s computes
the per-field term weights eagerly; the fields are then summed with their weights into one
sparse (vocabulary x items) matrix, so scoring a batch of queries against every field is a
single sparse product and the fused score is exact, not an approximation over per-field
top candidates.

A live request's few queries are answered by MaxScore over the same matrix
(:mod:`shoplm.search.maxscore`): the same top list, from a fraction of the postings.

Why bm25s rather than tantivy: the index is a plain scipy matrix that numpy code can sum,
slice and save, the per-field fusion above falls out of it, and it has no native build step.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, Self

import bm25s
import numpy as np
import pandas as pd
import scipy.sparse as sp

from shoplm.arrays import row_entries
from shoplm.recommend.base import top_k
from shoplm.search.base import Retriever
from shoplm.search.maxscore import lookup_scores, maxscore_top_k, term_bounds
from shoplm.search.text import TextAnalyzer, Tokenized

#: Title matches matter most; brand and category are short and precise; descriptions and
#: attributes are long and noisy, so a match there is weaker evidence.
DEFAULT_FIELD_WEIGHTS: dict[str, float] = {
    "title": 1.0,
    "brand": 0.7,
    "category": 0.5,
    "attributes": 0.3,
    "description": 0.2,
}

#: Methods whose score is zero for a document without the term (bm25l and bm25+ add a
#: constant to every document, which a sparse matrix cannot hold).
_SPARSE_METHODS = ("lucene", "robertson", "atire")

#: Dense score rows per block: bounds memory at ~64 MB of float32 whatever the batch size.
_BLOCK_CELLS = 1 << 24
#: query blocks up to this size are scored apart from the sparse product of larger batches
_FEW_QUERIES = 8
#: below this many postings a few queries' terms are summed into full rows outright; above,
#: MaxScore's per-term bookkeeping pays for itself (on the demo shop's 3,946 items, scoring
#: every posting was cheaper; at Home Depot x10, with a median 308,000, MaxScore was)
_GATHER_MAX_POSTINGS = 1 << 15


class LexicalRetriever(Retriever):
    """Field-weighted BM25 with stemming, stop words and Chinese segmentation.

    ``k1`` and ``b`` are BM25's term-frequency saturation and length normalisation; the
    defaults were tuned on Home Depot train queries (product titles are short, so term
    frequency saturates early and length matters less than in prose).

    Each field is indexed twice: as words, and as character ``ngram_size``-grams whose
    scores count ``ngram_weight`` as much. The n-gram view finds misspelt and run-together
    words; 0 turns it off. ``max_query_chars`` caps what a pasted essay can cost: product
    queries are a few words, and the first words carry the intent.
    """

    def __init__(
        self,
        field_weights: Mapping[str, float] | None = None,
        k1: float = 0.6,
        b: float = 0.5,
        method: str = "lucene",
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        ngram_weight: float = 0.3,
        ngram_size: int = 3,
        max_query_chars: int = 256,
    ) -> None:
        self.field_weights = field_weights
        self.k1 = k1
        self.b = b
        self.method = method
        self.stemmer = stemmer
        self.stopwords = stopwords
        self.ngram_weight = ngram_weight
        self.ngram_size = ngram_size
        self.max_query_chars = max_query_chars

    def get_params(self) -> dict[str, object]:
        return {
            "field_weights": None if self.field_weights is None else dict(self.field_weights),
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "stemmer": self.stemmer,
            "stopwords": self.stopwords,
            "ngram_weight": self.ngram_weight,
            "ngram_size": self.ngram_size,
            "max_query_chars": self.max_query_chars,
        }

    def _views(self) -> list[tuple[TextAnalyzer, float]]:
        """The analyzers each field is indexed with, and the weight of each view."""
        words = TextAnalyzer(stemmer=self.stemmer, stopwords=self.stopwords)
        if self.ngram_weight <= 0:
            return [(words, 1.0)]
        return [(words, 1.0), (TextAnalyzer(char_ngrams=self.ngram_size), self.ngram_weight)]

    def fit(self, items: pd.DataFrame) -> Self:
        if self.method not in _SPARSE_METHODS:
            raise ValueError(f"method must be one of {_SPARSE_METHODS}, got {self.method!r}")
        weights = DEFAULT_FIELD_WEIGHTS if self.field_weights is None else self.field_weights
        texts = {}
        for field, weight in weights.items():
            if weight > 0 and field in items.columns:
                text = field_text(items[field], field)
                if (text != "").any():
                    texts[field] = text.tolist()
        if not texts:
            raise ValueError(f"no non-empty text field among {sorted(weights)}")
        # (weight, tokens) per field and view; all views share one vocabulary.
        indexed = [
            (float(weights[field]) * view_weight, analyzer.analyze(text))
            for field, text in texts.items()
            for analyzer, view_weight in self._views()
        ]
        vocab = pd.Index(pd.unique(np.concatenate([tokens.tokens for _, tokens in indexed])))
        matrices = [weight * self._field_matrix(tokens, vocab) for weight, tokens in indexed]
        self.n_items_ = len(items)
        self.fields_ = list(texts)
        self.vocab_ = vocab
        self.term_ids_ = _term_ids(vocab)
        self._set_term_weights(sp.csr_matrix(sum(matrices[1:], matrices[0])))
        return self

    def _set_term_weights(self, term_weights: sp.csr_matrix) -> None:
        term_weights.sort_indices()  # MaxScore binary-searches item ids within a term's row
        self.term_weights_ = term_weights
        self.term_bounds_ = term_bounds(term_weights)

    def _field_matrix(self, tokens: Tokenized, vocab: pd.Index) -> sp.csr_matrix:
        """BM25 weights of one field as a (vocabulary x items) matrix, computed by bm25s."""
        ids = vocab.get_indexer(tokens.tokens)
        corpus = np.split(ids, tokens.indptr[1:-1])
        bm25 = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        csc = bm25.build_index_from_ids(
            unique_token_ids=list(range(len(vocab))), corpus_token_ids=corpus, show_progress=False
        )
        # bm25s stores an (items x vocabulary) CSC matrix: the same arrays read as CSR are
        # its transpose, which is the layout a query-side product wants.
        return sp.csr_matrix(
            (csc["data"], csc["indices"], csc["indptr"]), shape=(len(vocab), csc["num_docs"])
        )

    def _query_terms(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each query's distinct vocabulary terms and their counts, as ``(query, term,
        count)`` arrays sorted by query then term; out-of-vocabulary terms are dropped."""
        cut = [str(query)[: self.max_query_chars] for query in queries]
        analyzed = [analyzer.analyze(cut) for analyzer, _ in self._views()]
        rows = np.concatenate([tokens.rows for tokens in analyzed])
        tokens = np.concatenate([tokens.tokens for tokens in analyzed])
        # a dict, not vocab_.get_indexer: pandas infers a string dtype for the query tokens
        # on every call, ~0.1 ms against ~2 µs for a query's few dozen tokens
        ids = np.fromiter((self.term_ids_.get(t, -1) for t in tokens), np.int64, tokens.size)
        keep = ids >= 0
        n_terms = len(self.vocab_)
        keys, counts = np.unique(rows[keep] * n_terms + ids[keep], return_counts=True)
        return keys // n_terms, keys % n_terms, counts.astype(np.float32)

    def score_blocks(self, queries: Sequence[str]) -> Iterator[tuple[slice, np.ndarray]]:
        """BM25 scores of every item, as dense ``(block, n_items)`` arrays over query blocks.

        Items that match no query term score -inf. Blocks bound memory whatever the batch
        size; each block is one sparse product of its queries' term counts with
        ``term_weights_``.
        """
        queries = list(queries)
        block = max(1, _BLOCK_CELLS // max(self.n_items_, 1))
        for start in range(0, len(queries), block):
            rows = slice(start, min(start + block, len(queries)))
            yield rows, self._full_rows(queries[rows])

    def scorers(self, queries: Sequence[str]) -> Iterator[tuple[slice, BlockScores]]:
        """The scores of query blocks, as objects that give a top list and given items'
        scores. A few queries (a live request) whose terms hold many postings go through
        MaxScore, which reads a fraction of them; a few with short rows are summed into full
        rows directly, and larger batches through one sparse product. All give the same
        answer.
        """
        queries = list(queries)
        if len(queries) > _FEW_QUERIES:
            for rows, dense in self.score_blocks(queries):
                yield rows, ScoreRows(dense)
            return
        query_of, terms, counts = self._query_terms(queries)
        rows, indptr = slice(0, len(queries)), self.term_weights_.indptr
        if int((indptr[terms + 1] - indptr[terms]).sum()) <= _GATHER_MAX_POSTINGS:
            yield rows, ScoreRows(self._gathered_rows(query_of, terms, counts, len(queries)))
        else:
            yield rows, PrunedScores(self, query_of, terms, counts, len(queries))

    def _gathered_rows(
        self, query_of: np.ndarray, terms: np.ndarray, counts: np.ndarray, n_queries: int
    ) -> np.ndarray:
        """Full score rows of a few queries from their terms' rows, without scipy (whose
        sparse-product set-up alone costs more than a short query's postings)."""
        n_items = self.n_items_
        entries, lengths = row_entries(self.term_weights_.indptr, terms)
        keys = np.repeat(query_of, lengths) * n_items + self.term_weights_.indices[entries]
        weights = np.repeat(counts, lengths) * self.term_weights_.data[entries]
        summed = np.bincount(keys, weights=weights, minlength=n_queries * n_items)
        dense = summed.astype(np.float32).reshape(n_queries, n_items)
        matched = np.zeros(n_queries * n_items, dtype=bool)
        matched[keys] = True
        dense[~matched.reshape(n_queries, n_items)] = -np.inf
        return dense

    def _full_rows(self, queries: Sequence[str]) -> np.ndarray:
        query_of, terms, counts = self._query_terms(queries)
        matrix = sp.csr_matrix((counts, (query_of, terms)), (len(queries), len(self.vocab_)))
        sparse = (matrix @ self.term_weights_).tocsr()
        dense = np.full(sparse.shape, -np.inf, dtype=np.float32)
        row_ids = np.repeat(np.arange(sparse.shape[0]), np.diff(sparse.indptr))
        dense[row_ids, sparse.indices] = sparse.data
        return dense

    def retrieve(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        for rows, block in self.scorers(queries):
            ids[rows], scores[rows] = block.top(k)
        return ids, scores

    def score_items(self, queries: Sequence[str], item_ids: np.ndarray) -> np.ndarray:
        """BM25 scores of given items per query (``item_ids`` (n, m), -1 = none): 0 if unmatched.

        Fusion needs the lexical score of items that only the dense retriever found.
        """
        out = np.zeros(item_ids.shape, dtype=np.float32)
        for rows, block in self.scorers(queries):
            out[rows] = block.at(item_ids[rows])
        return out

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        sp.save_npz(path / "term_weights.npz", self.term_weights_)
        np.save(path / "vocab.npy", self.vocab_.to_numpy(dtype=str))
        state = {"params": self.get_params(), "n_items": self.n_items_, "fields": self.fields_}
        (path / "lexical.json").write_text(json.dumps(state, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        state = json.loads((path / "lexical.json").read_text())
        model = cls(**state["params"])
        model.n_items_ = int(state["n_items"])
        model.fields_ = list(state["fields"])
        model.vocab_ = pd.Index(np.load(path / "vocab.npy").astype(object))
        model.term_ids_ = _term_ids(model.vocab_)
        model._set_term_weights(sp.load_npz(path / "term_weights.npz").tocsr())
        return model


class BlockScores(Protocol):
    """A block of queries' lexical scores, however they were computed."""

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of each query's ``k`` best items, (n, k), -1 / -inf padded."""
        ...

    def at(self, item_ids: np.ndarray) -> np.ndarray:
        """Scores of given items, (n, m) like ``item_ids``; 0 for unmatched and -1 ids."""
        ...


class ScoreRows:
    """Every item's score, as dense rows (-inf where no query term matched)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return top_k(self.scores, k)

    def at(self, item_ids: np.ndarray) -> np.ndarray:
        return gather_scores(self.scores, item_ids)


class PrunedScores:
    """A few queries' scores, never materialised: top lists by MaxScore, given items by
    binary search in their terms' rows."""

    def __init__(
        self,
        retriever: LexicalRetriever,
        query_of: np.ndarray,
        terms: np.ndarray,
        counts: np.ndarray,
        n_queries: int,
    ) -> None:
        self.retriever = retriever
        bounds = np.searchsorted(query_of, np.arange(n_queries + 1))
        self.terms = [terms[a:b] for a, b in itertools.pairwise(bounds)]
        self.counts = [counts[a:b].astype(np.float64) for a, b in itertools.pairwise(bounds)]

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(self.terms), k), -1, dtype=np.int64)
        scores = np.full((len(self.terms), k), -np.inf, dtype=np.float32)
        model = self.retriever
        for row, (terms, counts) in enumerate(zip(self.terms, self.counts, strict=True)):
            found, best = maxscore_top_k(model.term_weights_, model.term_bounds_, terms, counts, k)
            ids[row, : found.size], scores[row, : found.size] = found, best
        return ids, scores

    def at(self, item_ids: np.ndarray) -> np.ndarray:
        out = np.zeros(item_ids.shape, dtype=np.float32)
        weights = self.retriever.term_weights_
        for row, (terms, counts) in enumerate(zip(self.terms, self.counts, strict=True)):
            wanted = item_ids[row] >= 0
            found = lookup_scores(weights, terms, counts, item_ids[row, wanted])
            out[row, wanted] = found
        return out


def _term_ids(vocab: pd.Index) -> dict[str, int]:
    return dict(zip(vocab.tolist(), range(len(vocab)), strict=True))


def gather_scores(scores: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """``scores[i, item_ids[i, j]]``, with 0 for padding (-1) and for unmatched (-inf) items."""
    taken = np.take_along_axis(scores, np.maximum(item_ids, 0), axis=1)
    return np.where((item_ids >= 0) & np.isfinite(taken), taken, 0.0).astype(np.float32)


def field_text(values: pd.Series, field: str) -> pd.Series:
    """The searchable text of a catalogue column; ``attributes`` JSON becomes "key value ...".

    Attribute names are searchable too ("colour red" should match a query "red colour").
    Parsing runs once per distinct value, since many items share attribute sets.
    """
    text = values.astype("string").fillna("").astype(object).astype(str)
    if field != "attributes":
        return text
    uniques, inverse = np.unique(text.to_numpy(), return_inverse=True)
    flat = np.array([_attributes_to_text(u) for u in uniques], dtype=object)
    return pd.Series(flat[inverse], index=values.index, dtype=object)


def _attributes_to_text(raw: str) -> str:
    if not raw.strip():
        return ""
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return raw  # not JSON after all: still worth searching as plain text
    if not isinstance(parsed, dict):
        return str(parsed)
    return " ".join(f"{key} {value}" for key, value in parsed.items())
