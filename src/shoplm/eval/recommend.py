"""Recommendation evaluation of a whole engine: what ``shoplm build`` makes is what is scored.

The protocol is leave-one-out with full ranking (the SASRec / S3-Rec protocol used by the
papers compared in ``docs/evaluation.md``): each user's last item is the test target; the
engine is built by ``Engine.build`` from a catalogue file and an event file holding every
other event, exactly as a shop would build it; ``Engine.recommend`` then answers for every
test user, and the target's position in that list gives Recall@k (one target, so hit rate)
and NDCG@k. Every item of the catalogue is a candidate; the engine leaves out what the user
already has, as the published full-ranking code masks the history.

Unlike ``bench/eval_sources.py``, nothing is tuned on validation targets here: the numbers
are those of the default build, so they are what an outside check of ``shoplm build`` sees.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.config import ShoplmConfig
from shoplm.engine import Engine
from shoplm.eval.datasets import SeqRecDataset, load_online_retail_or, load_seqrec

DATASETS = ("beauty", "scientific", "or")


@dataclass(frozen=True)
class HeldOutShop:
    """Input files of a shop whose last event per user is held out, and those targets."""

    catalog: Path
    events: Path
    users: np.ndarray  # external user ids, one per held-out target
    targets: np.ndarray  # external item ids


def load_dataset(name: str) -> SeqRecDataset:
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown {name!r}; choose one of {', '.join(DATASETS)}")
    return load_online_retail_or() if name == "or" else load_seqrec(name)


def write_held_out_shop(data: SeqRecDataset, folder: Path) -> HeldOutShop:
    """Write ``catalog.csv`` and ``events.csv`` with each user's last item held out.

    Events are purchases whose timestamps (one second apart) keep each sequence's order;
    users with a single item contribute a target but no training event, as in the papers.
    """
    folder.mkdir(parents=True, exist_ok=True)
    seqs = data.sequences
    lengths = seqs.lengths
    last = seqs.indptr[1:] - 1
    keep = np.ones(len(seqs.items), dtype=bool)
    keep[last] = False
    rows = np.repeat(np.arange(len(seqs)), lengths)
    positions = np.arange(len(seqs.items)) - np.repeat(seqs.indptr[:-1], lengths)
    text = data.item_text if data.item_text is not None else np.full(data.n_items, "")
    catalog = folder / "catalog.csv"
    pd.DataFrame({"item_id": data.item_ids, "title": text}).to_csv(
        catalog, index=False, quoting=csv.QUOTE_NONNUMERIC
    )
    events = folder / "events.csv"
    pd.DataFrame(
        {
            "user_id": data.user_ids[rows[keep]],
            "item_id": data.item_ids[seqs.items[keep]],
            "event": "purchase",
            "timestamp": 1_500_000_000 + positions[keep],
        }
    ).to_csv(events, index=False)
    return HeldOutShop(
        catalog, events, data.user_ids.astype(str), data.item_ids[seqs.items[last]].astype(str)
    )


def target_positions(recommended: list[list[str]], targets: np.ndarray, depth: int) -> np.ndarray:
    """0-based position of each target in its list, ``depth`` where it is not in the top."""
    lists = np.array([[*items[:depth], *[None] * (depth - len(items))] for items in recommended])
    hits = lists == np.asarray(targets, dtype=object)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), depth)


def ndcg_per_user(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k of single targets at 0-based ``ranks``."""
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired_bootstrap(
    differences: np.ndarray, samples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of per-user ``differences``."""
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for start in range(0, samples, 100):  # 100 resamples at a time bounds the memory
        count = min(100, samples - start)
        drawn = rng.integers(0, differences.size, (count, differences.size))
        means[start : start + count] = differences[drawn].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def score_lists(
    recommended: list[list[str]], targets: np.ndarray, ks: tuple[int, ...]
) -> dict[str, float]:
    """Recall@k and NDCG@k of one target per list (a target not listed scores 0)."""
    depth = max(ks)
    ranks = target_positions(recommended, targets, depth)
    report: dict[str, float] = {"n_users": float(len(targets))}
    for k in ks:
        inside = ranks < k
        report[f"recall@{k}"] = float(inside.mean())
        report[f"ndcg@{k}"] = float(np.where(inside, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    return report


def evaluate_build(
    data: SeqRecDataset,
    workdir: Path,
    ks: tuple[int, ...] = (5, 10, 20),
    config: ShoplmConfig | None = None,
    batch_size: int = 4096,
    seed: int = 0,
    ranker: bool | None = None,
    ranker_objective: str | None = None,
) -> dict[str, object]:
    """Build an engine on ``data`` minus each user's last item and score its answers.

    ``ranker`` / ``ranker_objective`` override the config's ``[recommend]`` settings (None:
    as configured). When the engine holds a ranker, the same engine is scored a second time
    with the ranker detached, which is exactly the build without it (the sources and their
    tuning do not depend on the ranker), and the per-user NDCG@10 differences are reported
    with a 95% paired bootstrap interval.
    """
    shop = write_held_out_shop(data, workdir / "input")
    # search is not scored here; dense item vectors would only cost build time
    settings: dict[str, object] = {"seed": seed}
    if ranker is not None:
        settings["ranker"] = ranker
    if ranker_objective is not None:
        settings["ranker_objective"] = ranker_objective
    config = config or ShoplmConfig.model_validate(
        {"search": {"dense": False}, "recommend": settings}
    )
    start = time.perf_counter()
    Engine.build(shop.catalog, workdir / "engine", shop.events, config)
    build_seconds = time.perf_counter() - start
    engine = Engine.load(workdir / "engine")

    def answers() -> tuple[list[list[str]], float]:
        start = time.perf_counter()
        recommended: list[list[str]] = []
        for begin in range(0, len(shop.users), batch_size):
            batch = shop.users[begin : begin + batch_size].tolist()
            recommended += [rec.items for rec in engine.recommend(batch, max(ks))]
        return recommended, time.perf_counter() - start

    recommended, seconds = answers()
    report: dict[str, object] = {
        "dataset": data.name,
        "seed": config.recommend.seed,
        "protocol": "leave-one-out, full ranking, history excluded, default build",
        "n_items": data.n_items,
        "components": engine.manifest["components"]["recommend"],
        "build_seconds": round(build_seconds, 1),
        "recommend_seconds": round(seconds, 1),
        **score_lists(recommended, shop.targets, ks),
    }
    if "ranker" in engine.manifest:
        report["ranker"] = engine.manifest["ranker"]
    if engine.feed.ranker is not None:
        engine.feed.ranker = None
        plain, _ = answers()
        report["without_ranker"] = score_lists(plain, shop.targets, ks)
        difference = ndcg_per_user(target_positions(recommended, shop.targets, 10)) - (
            ndcg_per_user(target_positions(plain, shop.targets, 10))
        )
        low, high = paired_bootstrap(difference, seed=seed)
        report["delta_ndcg@10"] = {
            "mean": float(difference.mean()),
            "ci95": [low, high],
            "users_better": int((difference > 0).sum()),
            "users_worse": int((difference < 0).sum()),
        }
    return report
