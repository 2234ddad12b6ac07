"""In-process latency of one personal-recommendation request, and of a similar-items request.

An engine is built by ``shoplm eval recommend`` (or any ``shoplm build``); this script loads
it and answers ``--requests`` single-user calls of ``Engine.recommend([user], k)`` (what the
service does per HTTP request, minus HTTP), then ``Engine.similar([item], k)``, for users and
items drawn with a fixed seed from the engine's own histories, after ``--warmup`` calls.
A tenth of the users are ids the engine never saw (the cold-start answer path). The same
users are then asked ``--batch`` at a time, as the service's dynamic batching asks them
(``recommend_batch``: times and CPU are per call of ``--batch`` users). Reported:
p50 / p99 / max in milliseconds, the process CPU time per request, and the 1-minute load
average, because on a shared host wall time moves with other jobs and CPU time much less.
When the engine holds the feed's learned ranker, the same users are also asked with the
ranker detached (exactly the build without it), interleaved request by request with asks
that keep it, in an order drawn per user (``ranker_pair``: each arm's p50 / p99 and its own
thread CPU per request), so that the two see the same load however it drifts.

    python bench/recommend_latency.py --engine /tmp/shoplm-eval/beauty/engine \\
        --users /tmp/shoplm-eval/beauty/input/events.csv --out bench/results/rec_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.data.readers import read_chunks
from shoplm.engine import Engine


def timed(call: Callable[[object], object], keys: list[str], warmup: int) -> dict[str, float]:
    for key in keys[:warmup]:
        call(key)
    times = np.empty(len(keys))
    cpu_start = time.process_time()
    for i, key in enumerate(keys):
        start = time.perf_counter()
        call(key)
        times[i] = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    ms = times * 1e3
    return {
        "requests": len(keys),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "cpu_ms_per_request": cpu * 1e3 / len(keys),
        "load_avg_1m": os.getloadavg()[0],
    }


def timed_pair(
    engine: Engine, keys: list[str], k: int, warmup: int, seed: int
) -> dict[str, dict[str, float]]:
    """With and without the feed's ranker, interleaved per request in a seeded order."""
    ranker = engine.feed.ranker
    arms = {"with_ranker": ranker, "without_ranker": None}
    for key in keys[:warmup]:
        for model in arms.values():
            engine.feed.ranker = model
            engine.recommend([key], k)
    wall = {name: np.empty(len(keys)) for name in arms}
    cpu = {name: np.empty(len(keys)) for name in arms}
    flips = np.random.default_rng(seed).random(len(keys)) < 0.5
    for i, key in enumerate(keys):
        order = list(arms) if flips[i] else list(arms)[::-1]
        for name in order:
            engine.feed.ranker = arms[name]
            cpu_start, start = time.thread_time(), time.perf_counter()
            engine.recommend([key], k)
            wall[name][i] = time.perf_counter() - start
            cpu[name][i] = time.thread_time() - cpu_start
    engine.feed.ranker = ranker
    report = {
        name: {
            "p50_ms": float(np.percentile(wall[name] * 1e3, 50)),
            "p99_ms": float(np.percentile(wall[name] * 1e3, 99)),
            "max_ms": float(wall[name].max() * 1e3),
            "cpu_ms_per_request": float(cpu[name].mean() * 1e3),
        }
        for name in arms
    }
    extra = (cpu["with_ranker"] - cpu["without_ranker"]) * 1e3
    report["ranker_extra_cpu_ms"] = {
        "mean": float(extra.mean()),
        "p50": float(np.percentile(extra, 50)),
        "load_avg_1m": os.getloadavg()[0],
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, required=True)
    parser.add_argument("--users", type=Path, required=True, help="event file with user_id")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="users per call in recommend_batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/rec_latency.json"))
    args = parser.parse_args()

    engine = Engine.load(args.engine)
    rng = np.random.default_rng(args.seed)
    # any event file shoplm reads (CSV, TSV, JSONL, Parquet, gzipped)
    known = pd.unique(
        np.concatenate(
            [c.frame["user_id"].astype(str).to_numpy() for c in read_chunks(args.users, 500_000)]
        )
    )
    users = rng.choice(known, args.requests).astype(object)
    users[rng.random(args.requests) < 0.1] = "never-seen-user"
    items = rng.choice(engine.items["item_id"].to_numpy(dtype=object), args.requests)
    report = {
        "engine": str(engine.path),
        "n_items": len(engine.items),
        "n_users": len(engine.history_users),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "ranker": engine.feed.ranker is not None,
        "recommend": timed(lambda u: engine.recommend([u], args.k), users.tolist(), args.warmup),
        "similar": timed(lambda i: engine.similar([i], args.k), items.tolist(), args.warmup),
        "recommend_batch": {
            "batch": args.batch,
            **timed(
                lambda chunk: engine.recommend(chunk, args.k),
                [users[i : i + args.batch].tolist() for i in range(0, len(users), args.batch)],
                max(1, args.warmup // args.batch),
            ),
        },
    }
    if engine.feed.ranker is not None:
        report["ranker_pair"] = timed_pair(engine, users.tolist(), args.k, args.warmup, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
