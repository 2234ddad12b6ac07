"""SASRec on Beauty, Scientific and OR: leave-one-out, full ranking, one run per seed.

Protocol (``shoplm.eval.protocols.evaluate_next_item``, as in ``bench/eval_sources.py``): each
user's last item is the test target and the one before it the validation target; every
target is ranked against the whole catalogue with the user's history masked, ties
pessimistic. The model trains on every sequence minus its last two items, picks its epoch by
NDCG@10 on the validation targets (early stopping, best epoch restored) and is scored on the
test targets with the validation item added to the history. The test targets are never
seen in training or model selection.

With ``--refit`` a second model is trained on every sequence minus its last item (training
plus validation events) for the number of epochs the first one chose, and its test numbers
are reported separately: that is the protocol ``bench/eval_sources.py`` uses for the other
sources.

Each seed runs in a fresh process (so ``peak_rss_mb`` is that seed's own peak). ``fit_min``
is wall-clock training time including the per-epoch validation; ``fit_cpu_min`` is the
process CPU time over the same span, the figure to read on a machine shared with other jobs
(CPU time / threads is what the wall time would be on idle cores).

``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads: on cores shared with other processes
OpenMP's default busy-waiting made 2-thread training ~5x slower than 1 thread (measured in
docs/sasrec.md); passive waiting costs nothing on idle cores.

    python bench/eval_sasrec.py --dataset beauty --seeds 0,1,2 --max-minutes 30 \\
        --out bench/results/sasrec_beauty.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_sources import DATASETS, minilm_vectors, refit_sequences

from shoplm.data.interactions import Interactions
from shoplm.data.splits import leave_one_out
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.sasrec import SASRecRecommender

KS = (5, 10, 20)
METRICS = [f"{m}@{k}" for m in ("hr", "ndcg") for k in KS]

# Chosen on Beauty's validation targets (docs/sasrec.md has the sweep).
DEFAULTS: dict[str, Any] = {}


def run_seed(
    dataset: str, seed: int, params: dict[str, Any], text_init: bool, refit: bool
) -> dict[str, Any]:
    """Train, select, and test one seed; returns its metrics and costs."""
    data = DATASETS[dataset]()
    loo = leave_one_out(data.sequences)
    vectors = minilm_vectors(data) if text_init else None
    train = Interactions.from_sequences(loo.train, data.n_items)
    model = SASRecRecommender(seed=seed, item_init=vectors, **params)
    cpu = time.process_time()
    model.fit(train, validation=(loo.valid_history, loo.valid_targets))
    result: dict[str, Any] = {
        "seed": seed,
        "best_epoch": model.best_epoch_,
        "epochs_run": len(model.history_),
        "fit_min": model.fit_minutes_,
        "fit_cpu_min": (time.process_time() - cpu) / 60,
        "valid": evaluate_next_item(model, loo.valid_history, loo.valid_targets, ks=KS),
        "test": evaluate_next_item(model, loo.test_history, loo.test_targets, ks=KS),
        "history": model.history_,
    }
    if refit:
        full = Interactions.from_sequences(refit_sequences(data), data.n_items)
        again = SASRecRecommender(
            seed=seed, item_init=vectors, **{**params, "max_epochs": model.best_epoch_}
        )
        cpu = time.process_time()
        again.fit(full)
        result["refit_fit_min"] = again.fit_minutes_
        result["refit_fit_cpu_min"] = (time.process_time() - cpu) / 60
        result["refit_test"] = evaluate_next_item(again, loo.test_history, loo.test_targets, ks=KS)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _parse_set(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` overrides of SASRecRecommender parameters; values are JSON when they parse."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _row(label: str, metrics: dict[str, float], extra: str = "") -> str:
    cells = " ".join(f"{metrics[m]:.4f}" for m in METRICS)
    return f"{label:>8} {cells} {extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="beauty")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--no-text-init", action="store_true", help="id embeddings only")
    parser.add_argument("--refit", action="store_true", help="also retrain on train+valid")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    params = {**DEFAULTS, "max_minutes": args.max_minutes, **_parse_set(args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.dataset}: {params} text_init={not args.no_text_init}", flush=True)
    print(f"{'':>8} " + " ".join(f"{m:>6}" for m in METRICS), flush=True)
    results = []
    for seed in seeds:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            result = pool.submit(
                run_seed, args.dataset, seed, params, not args.no_text_init, args.refit
            ).result()
        results.append(result)
        costs = (
            f"best_epoch={result['best_epoch']}/{result['epochs_run']} "
            f"fit={result['fit_min']:.1f}min cpu={result['fit_cpu_min']:.1f}min "
            f"rss={result['peak_rss_mb']:.0f}MB"
        )
        print(_row(f"seed {seed}", result["test"], costs), flush=True)
        if args.refit:
            print(_row("refit", result["refit_test"], f"{result['refit_fit_min']:.1f}min"))
    summary = {
        key: {m: float(np.mean([r[key][m] for r in results])) for m in METRICS}
        for key in ("valid", "test", "refit_test")
        if key in results[0]
    }
    std = {m: float(np.std([r["test"][m] for r in results])) for m in METRICS}
    print(_row("mean", summary["test"]), flush=True)
    print(_row("std", std), flush=True)
    if "refit_test" in summary:
        print(_row("refit", summary["refit_test"]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"dataset": args.dataset, "params": params, "text_init": not args.no_text_init}
        payload |= {"mean": summary, "test_std": std, "seeds": results}
        args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
