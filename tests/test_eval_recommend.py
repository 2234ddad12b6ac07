"""The engine-level recommendation protocol and the build-time tuning it relies on."""

from __future__ import annotations

import json

import numpy as np

from shoplm.data.interactions import Interactions, Sequences
from shoplm.eval.datasets import SeqRecDataset
from shoplm.eval.recommend import evaluate_build, score_lists, write_held_out_shop
from shoplm.recommend.cooccurrence import CooccurrenceRecommender
from shoplm.recommend.tuning import grid_search, last_item_split


def _sequences(rows: list[list[int]]) -> Sequences:
    lengths = np.array([len(r) for r in rows])
    return Sequences(np.concatenate([[0], np.cumsum(lengths)]), np.concatenate(rows))


def _paired_shop(n_users: int = 400, n_pairs: int = 30, seed: int = 0) -> SeqRecDataset:
    """Users browse noise, then buy two pairs (item 2p, then 2p + 1): the last step is
    predictable only from the item just before it (a window of 1), not from the noise."""
    rng = np.random.default_rng(seed)
    n_noise = 40
    rows = []
    for _ in range(n_users):
        first, second = 2 * rng.choice(n_pairs, size=2, replace=False)
        noise = 2 * n_pairs + rng.choice(n_noise, size=6, replace=False)
        rows.append([*noise.tolist(), int(first), int(first) + 1, int(second), int(second) + 1])
    n_items = 2 * n_pairs + n_noise
    return SeqRecDataset(
        "paired",
        _sequences(rows),
        np.array([f"u{i}" for i in range(n_users)], dtype=object),
        np.array([f"sku-{i}" for i in range(n_items)], dtype=object),
        np.array([f"product {i}" for i in range(n_items)], dtype=object),
    )


def test_score_lists_counts_rank_and_misses() -> None:
    lists = [["a", "b", "c"], ["x", "y"], []]
    report = score_lists(lists, np.array(["b", "z", "a"], dtype=object), ks=(1, 3))
    assert report["recall@1"] == 0.0
    assert report["recall@3"] == 1 / 3
    assert np.isclose(report["ndcg@3"], (1 / np.log2(3)) / 3)


def test_held_out_shop_keeps_every_event_but_each_users_last(tmp_path) -> None:
    data = _paired_shop(n_users=20)
    shop = write_held_out_shop(data, tmp_path)
    events = shop.events.read_text().splitlines()
    assert len(events) - 1 == len(data.sequences.items) - 20
    assert list(shop.targets[:3]) == list(data.item_ids[data.sequences.last()[:3]])


def test_tuning_finds_the_window_the_log_needs() -> None:
    data = _paired_shop()
    interactions = Interactions.from_sequences(data.sequences, data.n_items)
    split = last_item_split(interactions, max_users=None)
    assert split is not None and len(split.targets) == 400
    result = grid_search(
        lambda params: CooccurrenceRecommender(**params),
        [{"window": [1, None], "damping": [0.0]}],
        split,
    )
    assert result.params["window"] == 1
    assert len(result.trials) == 2 and not result.stopped_early


def test_too_few_users_skip_tuning() -> None:
    data = _paired_shop(n_users=30)
    interactions = Interactions.from_sequences(data.sequences, data.n_items)
    assert last_item_split(interactions) is None


def test_default_build_is_tuned_and_scored_end_to_end(tmp_path) -> None:
    data = _paired_shop()
    # without the feed's ranker: every position it could learn from here (the first item of
    # a random pair, or a pair whose partner every user lost to a fold) is unpredictable by
    # construction, so nothing learned there transfers to the test position
    report = evaluate_build(data, tmp_path, ranker=False)
    manifest = json.loads((tmp_path / "engine" / "current" / "manifest.json").read_text())
    tuning = manifest["tuning"]["cooccurrence"]
    assert tuning["validation_users"] == 400 and tuning["trials"]
    collaborative = manifest["tuning"]["collaborative"]
    assert [trial["params"]["collaborative_weight"] for trial in collaborative["trials"]] == [
        0.0,
        0.25,
        0.5,
        1.0,
    ]
    weight = manifest["feed"]["collaborative_weight"]
    assert weight == collaborative["params"]["collaborative_weight"]
    assert ("als" in manifest["components"]["recommend"]) == (weight > 0)
    # the pair partner is the obvious next item once the window fits the log
    assert report["recall@10"] > 0.9
    assert report["n_users"] == 400
