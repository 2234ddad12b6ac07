"""Popularity baseline on Beauty, Scientific and Online Retail (OR): leave-one-out, full ranking.

Two fits per dataset:

- ``all``: popularity counted over every user's whole sequence, targets included. This is
  the recipe behind S3-Rec's PopRec row, reproduced exactly on Beauty; it leaks the test
  targets into the counts, so it is a check of the evaluation code, not a fair baseline.
- ``history``: popularity counted over the test histories only (each sequence minus its
  last item), the leak-free baseline a model should be compared with.

Each target is ranked against all items with the user's history masked (ties pessimistic).

    python bench/eval_popularity.py --out popularity.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from shoplm.data.interactions import Interactions
from shoplm.data.splits import leave_one_out
from shoplm.eval.datasets import SeqRecDataset, load_online_retail_or, load_seqrec
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.popularity import PopularityRecommender

DATASETS: dict[str, Callable[[], SeqRecDataset]] = {
    "beauty": lambda: load_seqrec("beauty"),
    "scientific": lambda: load_seqrec("scientific"),
    "or": load_online_retail_or,
}
KS = (5, 10, 20, 50)


def evaluate(data: SeqRecDataset) -> dict[str, dict[str, float]]:
    split = leave_one_out(data.sequences)
    fits = {"all": data.sequences, "history": split.test_history}
    return {
        fit: evaluate_next_item(
            PopularityRecommender().fit(Interactions.from_sequences(seqs, data.n_items)),
            split.test_history,
            split.test_targets,
            ks=KS,
        )
        for fit, seqs in fits.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    results: dict[str, dict[str, dict[str, float]]] = {}
    columns = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg")] + ["mrr"]
    print(f"{'dataset':<11}{'fit':<9}{'users':>7} " + " ".join(f"{c:>8}" for c in columns))
    for name, load in DATASETS.items():
        start = time.perf_counter()
        results[name] = evaluate(load())
        for fit, metrics in results[name].items():
            values = " ".join(f"{metrics[c]:8.4f}" for c in columns)
            print(f"{name:<11}{fit:<9}{metrics['n_users']:>7} {values}")
        print(f"  ({time.perf_counter() - start:.1f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
