"""Search retrievers on Home Depot: full-catalogue ranking of held-out queries.

Protocol (shared/data/home-depot-search-relevance/README.md): ``labels.csv.gz`` is split by
query (seed 0, 30% dev) with :func:`shoplm.data.splits.query_split`; every dev query ranks
all 54,667 products. Reported per stage, over dev queries:

- ``ndcg@10``: full-catalogue NDCG@10, gain = relevance - 1, unjudged products gain 0;
- ``ndcg@10_judged``: the same on the condensed list (unjudged products removed from the
  ranked list, which is ``--depth`` = 100 long), as the README asks because labels are sparse;
- ``recall@100``: share of the products graded 3 (relevance == 3.0) found in the top 100;
- ``mrr``: reciprocal rank of the first product graded 3 within the ranked list.

Stages: the BM25 peer (plain bm25s, default parameters, English stemmer and stop words,
title only), shoplm's lexical retriever, the dense retriever (MiniLM; item vectors cached
under ``--cache-dir``), and the hybrid with reciprocal rank fusion and with the convex blend
whose weight is learnt on the train queries; each hybrid fuses the top ``--depth`` of both
retrievers, as served. Latency is per query, batch of 1, in process, for a top-100 list.

    python bench/eval_search.py --out bench/results/search
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shoplm.eval.search import (
    PeerBM25,
    catalogue,
    evaluate,
    home_depot_split,
    judgments,
    ranker_labels,
    write_report,
)
from shoplm.search.dense import DenseRetriever
from shoplm.search.fusion import HybridRetriever
from shoplm.search.lexical import LexicalRetriever
from shoplm.search.pipeline import SearchPipeline

Retrieve = Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]]


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


def tune_lexical(
    products: pd.DataFrame, queries: list[str], gains: sp.csr_matrix, judged: sp.csr_matrix
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Grid over BM25 k1, b and the n-gram view's weight on train queries."""
    grid = []
    for k1, b, ngram_weight in itertools.product(
        (0.4, 0.6, 0.9, 1.2), (0.3, 0.5, 0.75), (0.0, 0.3)
    ):
        params = {"k1": k1, "b": b, "ngram_weight": ngram_weight}
        ranked, _ = LexicalRetriever(**params).fit(products).retrieve(queries, 100)
        grid.append({**params, **evaluate(ranked, gains, judged)})
        print(f"  tune {params}: ndcg@10={grid[-1]['ndcg@10']:.4f}", flush=True)
    best = max(grid, key=lambda row: row["ndcg@10"])
    return {key: best[key] for key in ("k1", "b", "ngram_weight")}, grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/search"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dev-fraction", type=float, default=0.3)
    parser.add_argument("--depth", type=int, default=100, help="ranked list length per query")
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/shoplm-eval-cache"))
    parser.add_argument("--tune-lexical", action="store_true", help="grid k1/b on train queries")
    args = parser.parse_args()

    split = home_depot_split(args.seed, args.dev_fraction)
    products, train, dev = split.products, split.train, split.dev
    item_index = pd.Index(products["item_id"])
    train_queries, train_gains, train_judged = judgments(train, item_index)
    dev_queries, dev_gains, dev_judged = judgments(dev, item_index)
    print(f"{len(products)} products, {len(train_queries)} train / {len(dev_queries)} dev queries")

    report: dict[str, object] = {
        "protocol": {
            "dataset": "home-depot-search-relevance",
            "seed": args.seed,
            "dev_fraction": args.dev_fraction,
            "depth": args.depth,
            "n_items": len(products),
            "n_train_queries": len(train_queries),
            "n_dev_queries": len(dev_queries),
            "cpu_count": os.cpu_count(),
        }
    }
    lexical_params: dict[str, float] = {}
    if args.tune_lexical:
        lexical_params, grid = tune_lexical(products, train_queries, train_gains, train_judged)
        report["lexical_tuning"] = {"best": lexical_params, "grid": grid}

    timings: dict[str, float] = {}

    def timed_fit(name: str, build: Callable[[], object]) -> object:
        start = time.perf_counter()
        fitted = build()
        timings[name] = time.perf_counter() - start
        return fitted

    peer = timed_fit("bm25 peer", lambda: PeerBM25(products["title"].tolist()))
    lexical = timed_fit("lexical", lambda: LexicalRetriever(**lexical_params).fit(products))
    dense = timed_fit(
        "dense", lambda: DenseRetriever(encoder="minilm", cache_dir=args.cache_dir).fit(products)
    )
    rrf = HybridRetriever.from_fitted(lexical, dense, method="rrf", depth=args.depth)
    convex = HybridRetriever.from_fitted(lexical, dense, method="convex", depth=args.depth)
    timed_fit("hybrid weights", lambda: convex.fit_weights(train_queries, train_gains))
    report["hybrid_weight"] = {
        "normalization": convex.normalization,
        "weight": convex.weight,
        "grid": convex.weight_search_,
    }
    report["fit_seconds"] = timings
    print(f"fit seconds: {timings}")
    print(f"convex blend learnt on train: {convex.normalization}, dense weight {convex.weight}")

    pipeline = timed_fit(
        "full pipeline (parser, hybrid, LambdaMART)",
        lambda: SearchPipeline(vector_cache=args.cache_dir, seed=args.seed).fit(
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
    latency_sample = dev_queries[: args.latency_queries]
    rows = []
    for name, retrieve in stages.items():
        start = time.perf_counter()
        ranked, _ = retrieve(dev_queries, args.depth)
        batch_seconds = time.perf_counter() - start
        row = {"stage": name, **evaluate(ranked, dev_gains, dev_judged)}
        row.update(latency_ms(retrieve, latency_sample, 100))
        row["batch_seconds"] = batch_seconds
        rows.append(row)
        print(json.dumps(row), flush=True)
    peer_ndcg = rows[0]["ndcg@10"]
    for row in rows:
        row["ndcg@10_vs_peer"] = row["ndcg@10"] / peer_ndcg
    report["stages"] = rows
    write_report(report, args.out)


if __name__ == "__main__":
    main()
