"""Search evaluation on graded judgments: the protocol of Home Depot's README, reusable.

Every query ranks the whole catalogue. Reported per ranked list set:

- ``ndcg@10``: full-catalogue NDCG@10, gain = relevance - 1, unjudged products gain 0;
- ``ndcg@10_judged``: the same on the condensed list (unjudged products removed), because
  labels are sparse (about 6 judged products per query);
- ``recall@100``: share of the products graded 3 found in the top 100;
- ``mrr``: reciprocal rank of the first product graded 3.

``PeerBM25`` is the comparison point every report carries: plain bm25s with its README's
defaults, English stemmer and stop words, on titles only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
import pandas as pd
import scipy.sparse as sp
import Stemmer

from shoplm.data.splits import query_split
from shoplm.eval.datasets import load_home_depot
from shoplm.eval.metrics import gains_at_ranks, mrr, ndcg_at_k, recall_at_k
from shoplm.search.dense import DenseRetriever
from shoplm.search.fusion import HybridRetriever
from shoplm.search.lexical import LexicalRetriever
from shoplm.search.pipeline import SearchPipeline

Retrieve = Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SearchSplit:
    """A catalogue and its judgments split by query into train and dev."""

    products: pd.DataFrame
    train: pd.DataFrame
    dev: pd.DataFrame
    seed: int
    dev_fraction: float


def home_depot_split(seed: int = 0, dev_fraction: float = 0.3) -> SearchSplit:
    """Home Depot's products and labels, split by query with a fixed seed (never by row)."""
    products, labels = load_home_depot()
    train, dev = query_split(labels, dev_fraction, seed)
    return SearchSplit(products, train, dev, seed, dev_fraction)


class PeerBM25:
    """The comparison point: bm25s exactly as its README shows it, on titles only."""

    def __init__(self, titles: Sequence[str]) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(
            list(titles), stopwords="en", stemmer=self._stemmer, show_progress=False
        )
        self._bm25 = bm25s.BM25()
        self._bm25.index(tokens, show_progress=False)
        self._n_items = len(titles)

    def retrieve(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self._stemmer, show_progress=False
        )
        ids, scores = self._bm25.retrieve(
            tokens, k=min(k, self._n_items), show_progress=False, n_threads=1
        )
        # bm25s fills a short list with score-0 items in id order: those were not retrieved.
        return np.where(scores > 0, ids, -1).astype(np.int64), scores.astype(np.float32)


def judgments(
    labels: pd.DataFrame, item_ids: pd.Index
) -> tuple[list[str], sp.csr_matrix, sp.csr_matrix]:
    """Distinct queries, their graded gains (relevance - 1) and a judged-pair indicator."""
    pairs = labels.groupby(["query", "item_id"], as_index=False)["relevance"].mean()
    rows, queries = pd.factorize(pairs["query"], sort=True)
    cols = item_ids.get_indexer(pairs["item_id"])
    if (cols < 0).any():
        raise ValueError(f"{int((cols < 0).sum())} judged products are not in the catalogue")
    shape = (len(queries), len(item_ids))
    gains = sp.csr_matrix((pairs["relevance"].to_numpy() - 1.0, (rows, cols)), shape=shape)
    judged = sp.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=shape)
    return list(queries), gains, judged


def catalogue(products: pd.DataFrame) -> pd.DataFrame:
    """Home Depot's products in shoplm's item schema (titles are the only text)."""
    return pd.DataFrame(
        {
            "item_id": products["item_id"],
            "title": products["title"],
            "description": "",
            "category": "",
            "brand": "",
            "price": np.nan,
            "attributes": "{}",
        }
    )


def ranker_labels(labels: pd.DataFrame, item_ids: pd.Index) -> pd.DataFrame:
    """Train judgments as the pipeline takes them: gain = relevance - 1 (0..2)."""
    pairs = labels.groupby(["query", "item_id"], as_index=False)["relevance"].mean()
    return pd.DataFrame(
        {
            "query": pairs["query"],
            "item": item_ids.get_indexer(pairs["item_id"]),
            "gain": pairs["relevance"] - 1.0,
        }
    )


def condense(ranked: np.ndarray, judged: sp.csr_matrix) -> np.ndarray:
    """Each list with its unjudged products removed, order kept, -1 padded."""
    keep = gains_at_ranks(ranked, judged) > 0
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.where(
        np.take_along_axis(keep, order, axis=1), np.take_along_axis(ranked, order, axis=1), -1
    )


def evaluate(ranked: np.ndarray, gains: sp.csr_matrix, judged: sp.csr_matrix) -> dict[str, float]:
    top_grade = gains.copy()
    top_grade.data = (top_grade.data >= 2.0).astype(np.float64)  # relevance == 3.0
    top_grade.eliminate_zeros()
    return {
        "ndcg@10": float(np.nanmean(ndcg_at_k(ranked, gains, 10))),
        "ndcg@10_judged": float(np.nanmean(ndcg_at_k(condense(ranked, judged), gains, 10))),
        "recall@100": float(np.nanmean(recall_at_k(ranked, top_grade, 100))),
        "mrr": float(np.nanmean(mrr(ranked, top_grade))),
    }


def latency_ms(retrieve: Retrieve, queries: Sequence[str], k: int) -> dict[str, float]:
    """p50 / p99 of single-query calls, after one warm-up call."""
    retrieve(queries[:1], k)
    times = []
    for query in queries:
        start = time.perf_counter()
        retrieve([query], k)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def evaluate_stages(
    split: SearchSplit,
    depth: int = 100,
    latency_queries: int = 300,
    cache_dir: Path | None = None,
    lexical_params: dict[str, float] | None = None,
    progress: bool = False,
) -> dict[str, object]:
    """Fit every stage on the train queries and score each on the dev queries.

    Stages: the BM25 peer, shoplm's lexical retriever, the dense retriever (MiniLM), the
    hybrid with reciprocal rank fusion and with the convex blend learnt on train queries,
    and the full pipeline (query parser, hybrid, LambdaMART trained on train judgments).
    Returns fit times, the learnt blend and one row of metrics and latency per stage.
    """
    products, train, dev = split.products, split.train, split.dev
    item_index = pd.Index(products["item_id"])
    train_queries, train_gains, _ = judgments(train, item_index)
    dev_queries, dev_gains, dev_judged = judgments(dev, item_index)
    report: dict[str, object] = {
        "protocol": {
            "dataset": "home-depot-search-relevance",
            "seed": split.seed,
            "dev_fraction": split.dev_fraction,
            "depth": depth,
            "n_items": len(products),
            "n_train_queries": len(train_queries),
            "n_dev_queries": len(dev_queries),
            "cpu_count": os.cpu_count(),
        }
    }
    timings: dict[str, float] = {}

    def timed_fit(name: str, build: Callable[[], object]) -> object:
        start = time.perf_counter()
        fitted = build()
        timings[name] = time.perf_counter() - start
        return fitted

    peer = timed_fit("bm25 peer", lambda: PeerBM25(products["title"].tolist()))
    lexical = timed_fit("lexical", lambda: LexicalRetriever(**(lexical_params or {})).fit(products))
    dense = timed_fit(
        "dense", lambda: DenseRetriever(encoder="minilm", cache_dir=cache_dir).fit(products)
    )
    rrf = HybridRetriever.from_fitted(lexical, dense, method="rrf", depth=depth)
    convex = HybridRetriever.from_fitted(lexical, dense, method="convex", depth=depth)
    timed_fit("hybrid weights", lambda: convex.fit_weights(train_queries, train_gains))
    report["hybrid_weight"] = {
        "normalization": convex.normalization,
        "weight": convex.weight,
        "grid": convex.weight_search_,
    }

    pipeline = timed_fit(
        "full pipeline (parser, hybrid, LambdaMART)",
        lambda: SearchPipeline(vector_cache=cache_dir, seed=split.seed).fit(
            catalogue(products), labels=ranker_labels(train, item_index)
        ),
    )
    report["fit_seconds"] = timings
    stages: dict[str, Retrieve] = {
        "BM25 peer (bm25s defaults, title)": peer.retrieve,
        "shoplm lexical": lexical.retrieve,
        "dense (MiniLM)": dense.retrieve,
        "hybrid (RRF)": rrf.retrieve,
        "hybrid (convex, learnt)": convex.retrieve,
        "full pipeline (+ spelling, LambdaMART)": pipeline.retrieve,
    }
    latency_sample = dev_queries[:latency_queries]
    rows = []
    for name, retrieve in stages.items():
        start = time.perf_counter()
        ranked, _ = retrieve(dev_queries, depth)
        batch_seconds = time.perf_counter() - start
        row = {"stage": name, **evaluate(ranked, dev_gains, dev_judged)}
        row.update(latency_ms(retrieve, latency_sample, 100))
        row["batch_seconds"] = batch_seconds
        rows.append(row)
        if progress:
            print(json.dumps(row), flush=True)
    peer_ndcg = rows[0]["ndcg@10"]
    for row in rows:
        row["ndcg@10_vs_peer"] = row["ndcg@10"] / peer_ndcg
    report["stages"] = rows
    return report


def write_report(report: dict[str, object], out: Path) -> str:
    """Write the report as JSON, a markdown table and an SVG chart; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_search.json").write_text(json.dumps(report, indent=1))
    columns = ["ndcg@10", "ndcg@10_vs_peer", "ndcg@10_judged", "recall@100", "mrr"]
    lines = [
        "| stage | NDCG@10 | vs peer | NDCG@10 judged-only | Recall@100 (rel 3) | MRR (rel 3) "
        "| p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["stages"]:  # type: ignore[union-attr]
        cells = [f"{row[c]:.4f}" if c != "ndcg@10_vs_peer" else f"{row[c]:.3f}x" for c in columns]
        lines.append(
            f"| {row['stage']} | "
            + " | ".join(cells)
            + f" | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |"
        )
    table = "\n".join(lines)
    (out / "eval_search.md").write_text(table + "\n")
    (out / "eval_search.svg").write_text(bar_chart(report["stages"]))  # type: ignore[arg-type]
    return table


def bar_chart(rows: list[dict[str, object]], width: int = 640) -> str:
    """A horizontal bar chart of NDCG@10 per stage, as a standalone SVG (no plotting deps)."""
    bar_height, label_width, top = 28, 300, 30
    best = max(float(r["ndcg@10"]) for r in rows)  # type: ignore[arg-type]
    scale = (width - label_width - 80) / best
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{top + bar_height * len(rows) + 10}" font-family="sans-serif" font-size="13">',
        '<text x="10" y="18" font-weight="bold">Home Depot dev queries: '
        "full-catalogue NDCG@10</text>",
    ]
    for i, row in enumerate(rows):
        y = top + i * bar_height
        value = float(row["ndcg@10"])  # type: ignore[arg-type]
        parts += [
            f'<text x="10" y="{y + 18}">{row["stage"]}</text>',
            f'<rect x="{label_width}" y="{y + 4}" width="{value * scale:.1f}" '
            f'height="{bar_height - 8}" fill="{"#888" if i == 0 else "#2b6cb0"}"/>',
            f'<text x="{label_width + value * scale + 6:.1f}" y="{y + 18}">{value:.4f}</text>',
        ]
    return "\n".join([*parts, "</svg>"]) + "\n"
