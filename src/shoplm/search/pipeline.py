"""The search pipeline: parse → lexical + dense retrieve → fuse → learned rank → filter.

One object holds every stage so that the engine, the CLI and the evaluation run exactly the
same code. ``fit`` learns what the data allows: with judged queries (or search→click pairs
from the shop's own log) it learns the fusion weight and a LambdaMART ranker; without them
it ranks by the fused score with the default blend.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shoplm.rank.features import FEATURE_NAMES, SearchFeatures
from shoplm.rank.ltr import LambdaMARTRanker
from shoplm.recommend.base import top_k
from shoplm.search.dense import DenseRetriever
from shoplm.search.fusion import HybridRetriever
from shoplm.search.lexical import LexicalRetriever
from shoplm.search.query import ParsedQuery, QueryParser

#: How many candidates a filtered query pulls from each retriever before filtering, so a
#: narrow filter still fills a page.
FILTERED_DEPTH = 1000


@dataclass(frozen=True)
class SearchFilters:
    """Explicit filters from the caller; they combine with what the query text implies."""

    category: str | None = None  # a category path prefix, e.g. "Tools > Drills"
    brand: str | None = None
    price_min: float | None = None
    price_max: float | None = None


@dataclass(frozen=True)
class PageRequest:
    """One page of one query: what :meth:`SearchPipeline.search_many` answers."""

    query: str
    k: int = 10
    offset: int = 0
    filters: SearchFilters | None = None


@dataclass
class SearchPage:
    ids: np.ndarray
    scores: np.ndarray
    total: int  # candidates that pass the filters (not the catalogue size)
    facets: dict[str, dict[str, int]]
    parsed: ParsedQuery
    applied: dict[str, object] = field(default_factory=dict)


class SearchPipeline:
    """Hybrid retrieval with an optional learned ranker; parameters only in ``__init__``.

    ``fusion_weight`` is the dense share of the blend when there are no judged queries to
    learn it from; 0.2 (min-max normalised) is what the blend learnt on Home Depot's train
    queries (docs/benchmarks.md), where zero-shot MiniLM is far weaker than BM25.
    """

    def __init__(
        self,
        depth: int = 100,
        dense: bool = True,
        encoder: str = "auto",
        spelling: bool = True,
        learn_to_rank: bool = True,
        fusion_weight: float = 0.2,
        vector_cache: Path | None = None,
        seed: int = 0,
    ) -> None:
        self.depth = depth
        self.dense = dense
        self.encoder = encoder
        self.spelling = spelling
        self.learn_to_rank = learn_to_rank
        self.fusion_weight = fusion_weight
        self.vector_cache = vector_cache
        self.seed = seed

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        items: pd.DataFrame,
        labels: pd.DataFrame | None = None,
        item_events: pd.DataFrame | None = None,
        query_clicks: pd.DataFrame | None = None,
    ) -> Self:
        """``labels``: ``query, item`` (internal id), ``gain`` (>= 0; 0 = not relevant)."""
        self.n_items_ = len(items)
        self.parser_ = QueryParser(spelling=self.spelling).fit(items)
        searchable = _has_text(items)
        lexical = LexicalRetriever().fit(items) if searchable else None
        dense = (
            DenseRetriever(encoder=self.encoder, cache_dir=self.vector_cache).fit(items)
            if self.dense and searchable
            else None
        )
        self.hybrid_ = (
            HybridRetriever.from_fitted(lexical, dense, weight=self.fusion_weight, depth=self.depth)
            if dense is not None
            else None
        )
        self.lexical_ = lexical
        self.features_ = SearchFeatures().fit(items, item_events, query_clicks)
        self._fit_filters(items)
        self.ranker_ = None
        training = _training_labels(labels, query_clicks)
        if self.hybrid_ is not None and training is not None:
            self._fit_ranking(training)
        return self

    def _fit_ranking(self, labels: pd.DataFrame) -> None:
        queries = labels["query"].drop_duplicates().sample(frac=1.0, random_state=self.seed)
        n_valid = max(1, len(queries) // 5) if len(queries) >= 10 else 0
        valid_queries = set(queries.iloc[:n_valid])
        is_valid = labels["query"].isin(valid_queries).to_numpy()
        train, valid = labels[~is_valid], labels[is_valid]
        texts, qrels = _qrels(train, self.n_items_)
        parsed = [p.text for p in self.parser_.parse(texts)]
        assert self.hybrid_ is not None
        self.hybrid_.fit_weights(parsed, qrels)
        if not self.learn_to_rank:
            return
        train_set = self._ranking_set(parsed, qrels)
        valid_set = None
        if len(valid):
            v_texts, v_qrels = _qrels(valid, self.n_items_)
            valid_set = self._ranking_set([p.text for p in self.parser_.parse(v_texts)], v_qrels)
        self.ranker_ = LambdaMARTRanker(seed=self.seed).fit(
            *train_set, valid=valid_set, feature_names=list(FEATURE_NAMES)
        )

    def _ranking_set(
        self, queries: list[str], qrels: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self.hybrid_ is not None
        found = self.hybrid_.candidates(queries)
        features, valid = self.features_.transform(queries, found, self.depth)
        rows, cols = np.nonzero(valid)
        gains = np.asarray(qrels[rows, found["ids"][rows, cols]]).ravel()
        # LightGBM wants integer grades: thirds keep the mean of three raters' 1-3 grades
        return features, np.rint(gains * 3).astype(np.int32), valid.sum(axis=1)

    def _fit_filters(self, items: pd.DataFrame) -> None:
        self.prices_ = items["price"].to_numpy(dtype=np.float64)
        self.available_ = (
            items["available"].to_numpy(dtype=bool)
            if "available" in items
            else np.ones(len(items), dtype=bool)
        )
        self.brand_codes_, self.brands_ = pd.factorize(items["brand"].fillna("").astype(str))
        self.category_codes_, self.categories_ = pd.factorize(
            items["category"].fillna("").astype(str)
        )
        known = self.prices_[np.isfinite(self.prices_)]
        self.price_edges_ = (
            np.unique(np.round(np.quantile(known, [0.2, 0.4, 0.6, 0.8]), 2))
            if known.size
            else np.zeros(0)
        )

    # ------------------------------------------------------------------ query
    def retrieve(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` per query (text-implied price filters applied), as (n, k) arrays."""
        parsed = self.parser_.parse([str(q) for q in queries])
        ids, scores = self._ranked([p.text for p in parsed], self.depth)
        masks = [self._mask(p, None) for p in parsed]
        keep = (ids >= 0) & self.available_[np.maximum(ids, 0)]
        if any(m is not None for m in masks):
            allowed = np.stack([np.ones(self.n_items_, bool) if m is None else m for m in masks])
            keep &= np.take_along_axis(allowed, np.maximum(ids, 0), axis=1)
        scores = np.where(keep, scores, -np.inf)
        order, best = top_k(scores, k)
        picked = np.take_along_axis(ids, np.maximum(order, 0), axis=1)
        return np.where(order >= 0, picked, -1), best

    def search(
        self, query: str, k: int = 10, offset: int = 0, filters: SearchFilters | None = None
    ) -> SearchPage:
        """One page of results with facet counts over everything that passes the filters."""
        return self.search_many([PageRequest(str(query), k, offset, filters)])[0]

    def search_many(self, requests: Sequence[PageRequest]) -> list[SearchPage]:
        """One page per request, the retrieval and ranking of all of them batched.

        Requests that need the same candidate depth are ranked in one call, so requests
        that arrive together (the service's micro-batches) share every vectorised stage;
        each page is what :meth:`search` alone would give.
        """
        parsed = [self.parser_.parse_one(r.query) for r in requests]
        masks = [self._mask(p, r.filters) for p, r in zip(parsed, requests, strict=True)]
        depths = [
            FILTERED_DEPTH if mask is not None else max(self.depth, r.offset + r.k)
            for mask, r in zip(masks, requests, strict=True)
        ]
        pages: list[SearchPage | None] = [None] * len(requests)
        for depth in dict.fromkeys(depths):
            rows = [i for i, d in enumerate(depths) if d == depth]
            ranked_ids, ranked_scores = self._ranked([parsed[i].text for i in rows], depth)
            for row, ids, scores in zip(rows, ranked_ids, ranked_scores, strict=True):
                keep = (ids >= 0) & np.isfinite(scores) & self.available_[np.maximum(ids, 0)]
                if masks[row] is not None:
                    keep &= masks[row][np.maximum(ids, 0)]
                ids, scores = ids[keep], scores[keep]
                request = requests[row]
                end = request.offset + request.k
                pages[row] = SearchPage(
                    ids=ids[request.offset : end],
                    scores=scores[request.offset : end],
                    total=int(ids.size),
                    facets=self.facets(ids),
                    parsed=parsed[row],
                    applied=_applied(parsed[row], request.filters),
                )
        return [page for page in pages if page is not None]

    def facets(self, ids: np.ndarray) -> dict[str, dict[str, int]]:
        """Counts of category, brand and price band among ``ids``."""
        out: dict[str, dict[str, int]] = {}
        for name, codes, labels in (
            ("category", self.category_codes_, self.categories_),
            ("brand", self.brand_codes_, self.brands_),
        ):
            counts = np.bincount(codes[ids], minlength=len(labels))
            top = np.argsort(-counts, kind="stable")[:20]
            out[name] = {labels[i]: int(counts[i]) for i in top if counts[i] and labels[i]}
        prices = self.prices_[ids]
        known = np.isfinite(prices)
        bands = np.searchsorted(self.price_edges_, prices[known], side="right")
        names = _band_names(self.price_edges_)
        counts = np.bincount(bands, minlength=len(names))
        out["price"] = {names[i]: int(c) for i, c in enumerate(counts) if c}
        return out

    def _ranked(self, texts: list[str], depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of every query in final order: (n, m) ids and scores, best first."""
        if self.hybrid_ is None:
            if self.lexical_ is None:  # a catalogue without any text: nothing to match
                return (
                    np.full((len(texts), depth), -1, dtype=np.int64),
                    np.full((len(texts), depth), -np.inf, dtype=np.float32),
                )
            return self.lexical_.retrieve(texts, depth)
        found = self.hybrid_.candidates(texts, depth)
        if self.ranker_ is None:
            scores = self.hybrid_.fuse(found)
        else:
            features, valid = self.features_.transform(texts, found, depth)
            scores = np.full(valid.shape, -np.inf, dtype=np.float32)
            scores[valid] = self.ranker_.predict(features)
        order, best = top_k(scores, scores.shape[1])
        ids = np.take_along_axis(found["ids"], np.maximum(order, 0), axis=1)
        return np.where(order >= 0, ids, -1), best

    def _mask(self, parsed: ParsedQuery, filters: SearchFilters | None) -> np.ndarray | None:
        filters = filters or SearchFilters()
        low = _first(filters.price_min, parsed.price_min)
        high = _first(filters.price_max, parsed.price_max)
        mask = None
        if low is not None or high is not None:
            mask = (self.prices_ >= (-np.inf if low is None else low)) & (
                self.prices_ <= (np.inf if high is None else high)
            )
        brand = filters.brand or parsed.filters.get("brand")
        if brand:
            wanted = self.brands_.get_indexer([brand])[0]
            brand_mask = self.brand_codes_ == wanted
            # a brand word in the text is a hint; only an explicit brand filter may empty a page
            if filters.brand or brand_mask.any():
                mask = brand_mask if mask is None else mask & brand_mask
        if filters.category:
            prefix = filters.category.strip()
            matching = np.flatnonzero(pd.Series(self.categories_).str.startswith(prefix).to_numpy())
            category_mask = np.isin(self.category_codes_, matching)
            mask = category_mask if mask is None else mask & category_mask
        return mask

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.parser_.save(path / "query")
        self.features_.save(path / "features")
        if self.hybrid_ is not None:
            self.hybrid_.save(path / "hybrid")
        elif self.lexical_ is not None:
            self.lexical_.save(path / "lexical")
        if self.ranker_ is not None:
            self.ranker_.save(path / "ranker")
        np.save(path / "prices.npy", self.prices_)
        np.save(path / "available.npy", self.available_)
        pd.DataFrame({"brand": self.brand_codes_, "category": self.category_codes_}).to_parquet(
            path / "filters.parquet"
        )
        state = {
            "params": self.get_params(),
            "n_items": self.n_items_,
            "brands": self.brands_.tolist(),
            "categories": self.categories_.tolist(),
            "price_edges": self.price_edges_.tolist(),
        }
        (path / "pipeline.json").write_text(json.dumps(state, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> Self:
        state = json.loads((path / "pipeline.json").read_text())
        params = state["params"]
        if params["vector_cache"] is not None:
            params["vector_cache"] = Path(params["vector_cache"])
        model = cls(**params)
        model.n_items_ = state["n_items"]
        model.parser_ = QueryParser.load(path / "query")
        model.features_ = SearchFeatures.load(path / "features")
        if (path / "hybrid").exists():
            model.hybrid_ = HybridRetriever.load(path / "hybrid")
            model.lexical_ = model.hybrid_.lexical_
        else:
            model.hybrid_ = None
            lexical = path / "lexical"
            model.lexical_ = LexicalRetriever.load(lexical) if lexical.exists() else None
        model.ranker_ = (
            LambdaMARTRanker.load(path / "ranker") if (path / "ranker").exists() else None
        )
        model.prices_ = np.load(path / "prices.npy")
        available = path / "available.npy"
        model.available_ = (
            np.load(available) if available.exists() else np.ones(model.n_items_, dtype=bool)
        )
        codes = pd.read_parquet(path / "filters.parquet")
        model.brand_codes_ = codes["brand"].to_numpy()
        model.category_codes_ = codes["category"].to_numpy()
        model.brands_ = pd.Index(state["brands"], dtype=object)
        model.categories_ = pd.Index(state["categories"], dtype=object)
        model.price_edges_ = np.asarray(state["price_edges"], dtype=np.float64)
        return model

    def get_params(self) -> dict[str, object]:
        return {
            "depth": self.depth,
            "dense": self.dense,
            "encoder": self.encoder,
            "spelling": self.spelling,
            "learn_to_rank": self.learn_to_rank,
            "fusion_weight": self.fusion_weight,
            "vector_cache": None if self.vector_cache is None else str(self.vector_cache),
            "seed": self.seed,
        }


def _has_text(items: pd.DataFrame) -> bool:
    """Whether any item has any searchable text (a catalogue of bare ids has none)."""
    columns = [c for c in ("title", "description", "category", "brand") if c in items]
    text = items[columns].fillna("").astype(str).agg("".join, axis=1).str.strip()
    attributes = items["attributes"].fillna("{}") if "attributes" in items else None
    return bool((text != "").any() or (attributes is not None and (attributes != "{}").any()))


def _training_labels(
    labels: pd.DataFrame | None, query_clicks: pd.DataFrame | None
) -> pd.DataFrame | None:
    """Judged pairs plus the log's search→click pairs (one grade per click, capped at 2)."""
    parts = []
    if labels is not None and len(labels):
        parts.append(labels[["query", "item", "gain"]])
    if query_clicks is not None and len(query_clicks):
        clicks = query_clicks.assign(gain=np.minimum(query_clicks["count"], 2.0))
        parts.append(clicks[["query", "item", "gain"]])
    if not parts:
        return None
    merged = pd.concat(parts, ignore_index=True)
    return merged.groupby(["query", "item"], as_index=False)["gain"].max()


def _qrels(labels: pd.DataFrame, n_items: int) -> tuple[list[str], sp.csr_matrix]:
    codes, texts = pd.factorize(labels["query"])
    qrels = sp.csr_matrix(
        (labels["gain"].to_numpy(np.float64), (codes, labels["item"].to_numpy())),
        shape=(len(texts), n_items),
    )
    return list(texts), qrels


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _band_names(edges: np.ndarray) -> list[str]:
    if edges.size == 0:
        return ["any"]
    bounds = [f"{e:g}" for e in edges]
    return [
        f"under {bounds[0]}",
        *[f"{a}-{b}" for a, b in itertools.pairwise(bounds)],
        f"{bounds[-1]} and over",
    ]


def _applied(parsed: ParsedQuery, filters: SearchFilters | None) -> dict[str, object]:
    applied: dict[str, object] = {
        k: v for k, v in vars(filters or SearchFilters()).items() if v is not None
    }
    if parsed.price_min is not None:
        applied.setdefault("price_min", parsed.price_min)
    if parsed.price_max is not None:
        applied.setdefault("price_max", parsed.price_max)
    applied.update({k: v for k, v in parsed.filters.items() if k not in applied})
    return applied
