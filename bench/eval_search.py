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
from pathlib import Path

import pandas as pd
import scipy.sparse as sp

from shoplm.eval.search import (
    evaluate,
    evaluate_stages,
    home_depot_split,
    judgments,
    write_report,
)
from shoplm.search.lexical import LexicalRetriever


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
    lexical_params: dict[str, float] = {}
    tuning = {}
    if args.tune_lexical:
        item_index = pd.Index(split.products["item_id"])
        queries, gains, judged = judgments(split.train, item_index)
        lexical_params, grid = tune_lexical(split.products, queries, gains, judged)
        tuning = {"lexical_tuning": {"best": lexical_params, "grid": grid}}
    report = evaluate_stages(
        split, args.depth, args.latency_queries, args.cache_dir, lexical_params, progress=True
    )
    print(write_report({**report, **tuning}, args.out))


if __name__ == "__main__":
    main()
