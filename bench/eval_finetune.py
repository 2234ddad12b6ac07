"""Fine-tuning on Home Depot: the bi-encoder alone, the pipeline with it, and the reranker.

Protocol (docs/search.md, shared/data/home-depot-search-relevance/README.md): labels split
by query with ``home_depot_split(seed 0, dev 30%)``; nothing is trained on a dev query.
Every dev query ranks all 54,667 titles; NDCG@10 uses gain = relevance - 1 (unjudged 0).

Stages (``--stages``, comma-separated; results merge into ``--out``/eval_finetune.json, so
stages can run in separate processes; models are kept under ``--work``):

- ``zeroshot``: packaged MiniLM, item vectors torch fp32 (cached), queries ONNX int8,
  exact search: the reference the fine-tuned encoder is compared with (same protocol).
- ``labels``: fine-tune on train judgments (pairs with mean relevance >= 2 as positives,
  every judged pair above 1 kept out of the negatives), then the same dense evaluation.
- ``synthetic``: fine-tune on ``--synthetic`` (augmentation parquet: item_id, query,
  backend, kept) only, no Home Depot label at all: what a shop without labels gets.
- ``mixed``: the train judgments plus ``--synthetic-pairs`` kept synthetic pairs drawn at
  random (seeded) from ``--synthetic``: what a shop with some labels gets.
- ``dense``: the dense evaluation alone of ``--encoder`` (a model folder under ``--work``,
  or ``minilm``), e.g. after a change to how queries are encoded.
- ``pipeline``: ``SearchPipeline(encoder=<fine-tuned folder>)`` fit on train labels, dev.
- ``reranker``: train a cross-encoder on 85% of the train queries (graded pairs + BM25
  negatives); needs no pipeline, so it can run beside the other stages.
- ``rerank``: that cross-encoder, its blend weight chosen on the other 15% of the train
  queries, on the top ``--top-n`` of the pipeline; dev NDCG@10 and per-query latency
  (pipeline + reranker, batch of one, in process, ``--latency-queries`` dev queries) per N.

Training speed is reported as pairs/s in wall time and in CPU time (the 2 cores are
shared with other jobs, so wall time is inflated); 100,000 pairs are extrapolated from it.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 python bench/eval_finetune.py \\
        --stages zeroshot,labels,reranker,pipeline,rerank --out bench/results/finetune
    python bench/eval_finetune.py --stages synthetic \\
        --synthetic /tmp/shoplm_synth/hd_template/synthetic_queries.parquet
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: shared cores

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.eval.search import (
    PeerBM25,
    catalogue,
    evaluate,
    home_depot_split,
    judgments,
    ranker_labels,
)
from shoplm.models.cross_encoder import CrossEncoderReranker
from shoplm.models.finetune import (
    BiEncoderFinetuner,
    cpu_seconds,
    positive_pairs,
    synthetic_pairs,
)
from shoplm.search.dense import DenseRetriever
from shoplm.search.pipeline import SearchPipeline

Retrieve = Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]]


def latency_ms(retrieve: Retrieve, queries: Sequence[str], k: int) -> dict[str, float]:
    """p50 / p99 of single-query calls after one warm-up call (wall and CPU time)."""
    retrieve(queries[:1], k)
    wall, cpu = [], []
    for query in queries:
        start, start_cpu = time.perf_counter(), cpu_seconds()
        retrieve([query], k)
        wall.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - start_cpu)
    ms, cpu_ms = np.array(wall) * 1e3, np.array(cpu) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu_ms_mean": float(cpu_ms.mean()),
    }


def speed(report: dict[str, object]) -> dict[str, float]:
    """Pairs/s in wall and CPU time and the minutes 100,000 pairs would take at each."""
    seen = float(report["pairs_seen"])  # type: ignore[arg-type]
    wall = float(report["train_seconds"])  # type: ignore[arg-type]
    cpu = float(report["cpu_seconds"])  # type: ignore[arg-type]
    cores = 2
    return {
        "pairs_per_second_wall": seen / wall,
        "pairs_per_second_cpu_2_cores": cores * seen / cpu,
        "minutes_for_100k_wall": 1e5 / (seen / wall) / 60,
        "minutes_for_100k_cpu_2_cores": 1e5 / (cores * seen / cpu) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="zeroshot,labels,reranker,pipeline,rerank")
    parser.add_argument("--out", type=Path, default=Path("bench/results/finetune"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/shoplm_ft/models"))
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/shoplm-eval-cache"))
    parser.add_argument("--synthetic", type=Path, default=None)
    parser.add_argument(
        "--synthetic-pairs",
        type=int,
        default=None,
        help="mixed stage: draw this many synthetic pairs (default: all kept ones)",
    )
    parser.add_argument("--towers", default="query", choices=["query", "both"])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--lora-rank", type=int, default=None)
    parser.add_argument("--hard-negatives", type=int, default=4)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--catalogue-negatives", action="store_true")
    parser.add_argument("--train-embeddings", action="store_true")
    parser.add_argument("--name", default=None, help="model folder name (default: the stage)")
    parser.add_argument("--encoder", default="labels", help="model the pipeline uses")
    parser.add_argument("--ce-epochs", type=float, default=1.0)
    parser.add_argument("--ce-negatives", type=int, default=2)
    parser.add_argument("--ce-max-minutes", type=float, default=None)
    parser.add_argument("--top-n", default="10,20,30")
    parser.add_argument("--latency-queries", type=int, default=300)
    parser.add_argument(
        "--rerank-sample",
        type=int,
        default=None,
        help="score the reranker on this many random dev (and held-out train) queries only",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stages = args.stages.split(",")

    split = home_depot_split(args.seed, 0.3)
    products, train, dev = split.products, split.train, split.dev
    items = catalogue(products)
    titles = products["title"].astype(str).tolist()
    item_index = pd.Index(products["item_id"])
    dev_queries, dev_gains, dev_judged = judgments(dev, item_index)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "eval_finetune.json"
    results: dict[str, object] = {}  # what this run measured; merged into the file
    peer_ranked, _ = PeerBM25(titles).retrieve(dev_queries, 100)
    results["bm25_peer"] = evaluate(peer_ranked, dev_gains, dev_judged)

    def save() -> None:
        """Merge this run's keys into the file (stages may run in parallel processes)."""
        merged = json.loads(result_path.read_text()) if result_path.exists() else {}
        merged.update(results)
        partial = result_path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(merged, indent=1))
        partial.replace(result_path)

    def dense_eval(encoder: str) -> dict[str, float]:
        start = time.perf_counter()
        dense = DenseRetriever(encoder=encoder, index="exact", cache_dir=args.cache_dir).fit(items)
        fit_seconds = time.perf_counter() - start
        ranked, _ = dense.retrieve(dev_queries, 100)
        row = evaluate(ranked, dev_gains, dev_judged)
        row["fit_seconds"] = fit_seconds
        row.update(latency_ms(dense.retrieve, dev_queries[: args.latency_queries], 100))
        return row

    base_vectors = None

    def finetune(name: str, pairs: pd.DataFrame, exclude: pd.DataFrame | None) -> Path:
        nonlocal base_vectors
        if base_vectors is None and args.towers == "query":
            base_vectors = DenseRetriever(encoder="minilm", index="exact", cache_dir=args.cache_dir)
            base_vectors = base_vectors.fit(items).vectors_["minilm"]
        model = BiEncoderFinetuner(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            lora_rank=args.lora_rank,
            hard_negatives=args.hard_negatives,
            towers=args.towers,
            catalogue_negatives=args.catalogue_negatives,
            freeze_embeddings=not args.train_embeddings,
            max_minutes=args.max_minutes,
            seed=args.seed,
        ).fit(pairs, titles, exclude=exclude, item_vectors=base_vectors)
        folder = model.save(args.work / name)
        results[f"train_{name}"] = {
            **model.report_,
            **speed(model.report_),
            "params": model.get_params(),
        }
        print(json.dumps(results[f"train_{name}"]), flush=True)
        save()
        return folder

    if "zeroshot" in stages:
        results["dense_zeroshot"] = dense_eval("minilm")
        print("zero-shot", results["dense_zeroshot"], flush=True)
        save()
    if "labels" in stages:
        positives, exclude = positive_pairs(train, item_index)
        name = args.name or "labels"
        folder = finetune(name, positives, exclude)
        results[f"dense_{name}"] = dense_eval(str(folder))
        print("fine-tuned on labels", results[f"dense_{name}"], flush=True)
        save()
    if "synthetic" in stages or "mixed" in stages:
        if args.synthetic is None:
            parser.error("the synthetic and mixed stages need --synthetic PARQUET")
        synthetic = synthetic_pairs(pd.read_parquet(args.synthetic), item_index)
        results["synthetic_data"] = {
            "file": str(args.synthetic),
            "pairs": len(synthetic),
            **synthetic.attrs,
        }
    if "synthetic" in stages:
        name = args.name or "synthetic"
        folder = finetune(name, synthetic, None)
        results[f"dense_{name}"] = dense_eval(str(folder))
        print("fine-tuned on synthetic", results[f"dense_{name}"], flush=True)
        save()
    if "mixed" in stages:
        positives, exclude = positive_pairs(train, item_index)
        drawn = synthetic
        if args.synthetic_pairs is not None and args.synthetic_pairs < len(synthetic):
            drawn = synthetic.sample(n=args.synthetic_pairs, random_state=args.seed)
        pairs = pd.concat([positives, drawn[positives.columns]], ignore_index=True)
        name = args.name or "mixed"
        folder = finetune(name, pairs, exclude)
        results[f"train_{name}"].update(label_pairs=len(positives), synthetic_pairs=len(drawn))
        results[f"dense_{name}"] = dense_eval(str(folder))
        print("fine-tuned on labels + synthetic", results[f"dense_{name}"], flush=True)
        save()
    # the model the dense and pipeline stages use: a folder under --work, or the base model
    encoder = str(args.work / args.encoder) if args.encoder != "minilm" else "minilm"
    if "dense" in stages:
        key = "dense_zeroshot" if args.encoder == "minilm" else f"dense_{args.encoder}"
        results[key] = dense_eval(encoder)
        print(key, results[key], flush=True)
        save()
    if "pipeline" in stages or "rerank" in stages:
        start = time.perf_counter()
        pipeline = SearchPipeline(encoder=encoder, vector_cache=args.cache_dir, seed=args.seed)
        pipeline.fit(items, labels=ranker_labels(train, item_index))
        key = f"pipeline_{args.encoder}"
        ranked, scores = pipeline.retrieve(dev_queries, 100)
        results[key] = {
            **evaluate(ranked, dev_gains, dev_judged),
            "fit_seconds": time.perf_counter() - start,
            **latency_ms(pipeline.retrieve, dev_queries[: args.latency_queries], 100),
        }
        print(key, results[key], flush=True)
        save()
    labels = ranker_labels(train, item_index)
    queries = labels["query"].drop_duplicates().sample(frac=1.0, random_state=args.seed)
    held = set(queries.iloc[: int(0.15 * len(queries))])  # for the blend weight only
    if "reranker" in stages:
        is_held = labels["query"].isin(held).to_numpy()
        reranker = CrossEncoderReranker(
            epochs=args.ce_epochs,
            negatives=args.ce_negatives,
            max_minutes=args.ce_max_minutes,
            seed=args.seed,
        ).fit(labels[~is_held], titles)
        reranker.save(args.work / "reranker")
        results["train_reranker"] = {
            **reranker.report_,
            **speed(reranker.report_),
            "params": reranker.get_params(),
            "blend_holdout_queries": len(held),
        }
        print(json.dumps(results["train_reranker"]), flush=True)
        save()
    if "rerank" in stages:
        reranker = CrossEncoderReranker.load(args.work / "reranker")
        held_queries, held_gains, _ = judgments(train[train["query"].isin(held)], item_index)
        sub_queries, sub_gains, sub_judged = dev_queries, dev_gains, dev_judged
        sub_ranked, sub_scores = ranked, scores
        if args.rerank_sample:  # the cross-encoder costs ~30 ms a pair here: sample queries
            rng = np.random.default_rng(args.seed)
            pick = np.sort(rng.choice(len(dev_queries), args.rerank_sample, replace=False))
            sub_queries = [dev_queries[i] for i in pick]
            sub_gains, sub_judged = dev_gains[pick], dev_judged[pick]
            sub_ranked, sub_scores = ranked[pick], scores[pick]
            keep = np.sort(rng.choice(len(held_queries), args.rerank_sample // 2, replace=False))
            held_queries, held_gains = [held_queries[i] for i in keep], held_gains[keep]
            results[f"pipeline_{args.encoder}_on_rerank_sample"] = {
                "queries": args.rerank_sample,
                **evaluate(sub_ranked, sub_gains, sub_judged),
            }
        held_ranked, held_scores = pipeline.retrieve(held_queries, 100)
        sizes = [int(n) for n in args.top_n.split(",")]
        reranker.top_n = max(sizes)
        start = time.perf_counter()
        held_cross = reranker.cross_scores(held_queries, held_ranked, titles)
        dev_cross = reranker.cross_scores(sub_queries, sub_ranked, titles)
        pairs_scored = int(np.isfinite(held_cross).sum() + np.isfinite(dev_cross).sum())
        results["rerank_scoring"] = {
            "pairs": pairs_scored,
            "seconds": time.perf_counter() - start,
        }
        rows = []
        for top_n in sizes:
            reranker.fit_blend(held_ranked, held_scores, held_cross[:, :top_n], held_gains)
            reranked, _ = reranker.blend(sub_ranked, sub_scores, dev_cross[:, :top_n])
            row = {
                "top_n": top_n,
                "queries": len(sub_queries),
                "weight": reranker.weight_,
                "blend_search": reranker.blend_search_,
                **evaluate(reranked, sub_gains, sub_judged),
            }
            reranker.top_n = top_n

            def served(batch: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
                ids, found = pipeline.retrieve(batch, k)
                return reranker.rerank(batch, ids, found, titles)

            row.update(latency_ms(served, dev_queries[: args.latency_queries], 100))
            row["ndcg@10_vs_peer"] = row["ndcg@10"] / results["bm25_peer"]["ndcg@10"]
            rows.append(row)
            print("rerank", {k: v for k, v in row.items() if k != "blend_search"}, flush=True)
            results[f"rerank_{args.encoder}"] = rows
            save()


if __name__ == "__main__":
    main()
