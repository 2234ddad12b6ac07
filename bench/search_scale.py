"""Search at the Home Depot catalogue size and at 10x: build time, memory, latency, peer.

For each ``--scales`` factor the catalogue is the 54,667 Home Depot products plus
``factor - 1`` perturbed copies of each (seeded: one word dropped from titles of four words
or more, two neighbouring words swapped, a model suffix such as ``v3`` added), so the index
grows with realistic, non-identical text. Each size runs in a fresh process that fits the
full pipeline exactly as ``shoplm build --search-labels`` does (query parser, field-weighted
BM25, MiniLM dense retrieval with faiss HNSW above 20,000 items, convex fusion, LambdaMART
trained on the train queries of the seed-0 split) and the BM25 peer (plain bm25s on titles),
then times single-query calls of both for ``--queries`` dev queries (top 100, in process).

Item vectors: the originals are MiniLM's (cached under ``--cache-dir`` by the search
evaluation); a copy's vector is its original's plus Gaussian noise (cosine ~0.95 to it),
renormalised, because encoding 546,670 titles takes about 2.5 hours on these two cores and
the point here is how the index and the ranking stages scale, not the copies' exact vectors.
The query encoder is the real one. Peak memory is the process's VmHWM after the fit.

    python bench/search_scale.py --scales 1,10 --out bench/results/search_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.eval.search import (
    PeerBM25,
    catalogue,
    home_depot_split,
    judgments,
    latency_ms,
    ranker_labels,
)
from shoplm.search import dense
from shoplm.search.pipeline import SearchPipeline


def perturbed_copies(products: pd.DataFrame, factor: int, seed: int) -> pd.DataFrame:
    """The catalogue followed by ``factor - 1`` seeded, perturbed copies of every product."""
    rng = np.random.default_rng(seed)
    parts = [products]
    for copy in range(1, factor):
        titles = []
        for title in products["title"].tolist():
            words = title.split()
            if len(words) >= 4:
                del words[rng.integers(len(words))]
            if len(words) >= 2:
                i = rng.integers(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
            titles.append(" ".join(words) + f" v{copy}")
        parts.append(pd.DataFrame({"item_id": products["item_id"] + f"-c{copy}", "title": titles}))
    return pd.concat(parts, ignore_index=True)


def noisy_vectors(base: np.ndarray, factor: int, seed: int, noise: float = 0.33) -> np.ndarray:
    rng = np.random.default_rng(seed)
    copies = np.tile(base, (factor - 1, 1))
    copies += rng.normal(0.0, noise / np.sqrt(base.shape[1]), copies.shape).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.vstack([base, copies]).astype(np.float32)


def run_scale(factor: int, n_queries: int, cache_dir: Path, seed: int) -> dict[str, object]:
    split = home_depot_split(seed)
    products = perturbed_copies(split.products, factor, seed)
    items = catalogue(products)
    base = (
        dense.DenseRetriever(encoder="minilm", cache_dir=cache_dir)
        .fit(catalogue(split.products))
        .vectors_["minilm"]
    )
    vectors = noisy_vectors(base, factor, seed)
    original = dense.DenseRetriever._item_vectors

    def precomputed(self, name: str, texts: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
        return vectors if len(texts) == len(vectors) else original(self, name, texts)

    dense.DenseRetriever._item_vectors = precomputed  # type: ignore[method-assign]
    item_index = pd.Index(products["item_id"])
    labels = ranker_labels(split.train, item_index)
    start = time.perf_counter()
    pipeline = SearchPipeline(vector_cache=None, seed=seed).fit(items, labels=labels)
    pipeline_fit = time.perf_counter() - start
    start = time.perf_counter()
    peer = PeerBM25(products["title"].tolist())
    peer_fit = time.perf_counter() - start
    peak_mb = _peak_rss_mb()
    queries, _, _ = judgments(split.dev, pd.Index(split.products["item_id"]))
    sample = queries[:n_queries]
    return {
        "scale": factor,
        "n_items": len(items),
        "pipeline": {"fit_s": pipeline_fit, **latency_ms(pipeline.retrieve, sample, 100)},
        "bm25_peer": {"fit_s": peer_fit, **latency_ms(peer.retrieve, sample, 100)},
        "peak_rss_mb": peak_mb,
        "load_avg_1m": os.getloadavg()[0],
    }


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,10")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/shoplm-eval-cache"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/search_scale.json"))
    args = parser.parse_args()
    rows = []
    for factor in (int(s) for s in args.scales.split(",")):
        # a fresh process per size, so the peak memory is that size's own
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            row = pool.submit(run_scale, factor, args.queries, args.cache_dir, args.seed).result()
        print(json.dumps(row), flush=True)
        rows.append(row)
    if len(rows) > 1:
        first, last = rows[0]["pipeline"], rows[-1]["pipeline"]
        print(f"p99 growth {rows[-1]['scale']}x: {last['p99_ms'] / first['p99_ms']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "sizes": rows}, indent=1))


if __name__ == "__main__":
    main()
