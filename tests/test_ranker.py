"""The personal feed's learned ranker: what it learns, how it persists, how the engine uses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from shoplm.config import ShoplmConfig
from shoplm.data.interactions import Interactions, Sequences
from shoplm.engine import Engine
from shoplm.rank.ltr import LambdaMARTRanker
from shoplm.recommend.base import top_k
from shoplm.recommend.cooccurrence import CooccurrenceRecommender
from shoplm.recommend.feed import POPULAR, SIMILAR_TASTE, PersonalFeed
from shoplm.recommend.popularity import PopularityRecommender
from shoplm.recommend.ranker import RERANKED, FeedRanker

N_CHAINS, N_NOISE = 40, 40
N_ITEMS = 3 * N_CHAINS + N_NOISE


def _chain_shop(n_users: int = 1200, seed: int = 0) -> list[list[int]]:
    """Chains a -> b -> c (items 3p, 3p + 1, 3p + 2): a user browses noise, then goes either
    a -> b or b -> c. After b, a and c co-occur with it equally often, but only c ever came
    after it: the order, which the blend does not see, is the planted signal."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        chain = 3 * int(rng.integers(N_CHAINS))
        noise = 3 * N_CHAINS + rng.choice(N_NOISE, size=4, replace=False)
        step = [chain, chain + 1] if user % 2 else [chain + 1, chain + 2]
        rows.append([*noise.tolist(), *step])
    return rows


def _interactions(rows: list[list[int]]) -> Interactions:
    return Interactions.from_sequences(Sequences.from_lists(rows), N_ITEMS)


def _make_feed(events: Interactions) -> PersonalFeed:
    return PersonalFeed(
        CooccurrenceRecommender(window=1).fit(events),
        PopularityRecommender().fit(events),
        titles=np.array([f"item {i}" for i in range(N_ITEMS)], dtype=object),
    )


def _small_ranker(**params: object) -> FeedRanker:
    settings: dict[str, object] = {
        "n_candidates": 20,
        "folds": 1,
        "max_users": 400,
        "valid_fraction": 0.3,
        "n_estimators": 60,
        "min_child_samples": 20,
        "threads": 1,
    }
    return FeedRanker(**{**settings, **params})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained() -> tuple[FeedRanker, PersonalFeed]:
    events = _interactions(_chain_shop())
    ranker = _small_ranker().fit(events, _make_feed)
    return ranker, _make_feed(events)


def test_the_ranker_learns_a_planted_signal(trained) -> None:
    ranker, feed = trained
    report = ranker.report_
    assert report["training_queries"] > 100 and report["folds"] == 1
    assert report["validation_ndcg@10"] > report["blend_validation_ndcg@10"] + 0.05
    # after b, the blend cannot tell a from c; the ranker puts c, b's successor, first
    histories = Sequences.from_lists([[3 * N_CHAINS + 1, 3 * p + 1] for p in range(N_CHAINS)])
    successors = 3 * np.arange(N_CHAINS) + 2
    plain, _, _ = feed.recommend(histories, 1)
    feed.ranker = ranker
    ranked, scores, reasons = feed.recommend(histories, 1)
    feed.ranker = None
    assert (ranked[:, 0] == successors).mean() > 0.9
    assert (plain[:, 0] == successors).mean() < 0.8
    assert np.all(scores >= RERANKED)
    assert all(why[0].startswith("bought together with item") for why in reasons)


def test_candidates_outside_the_top_stay_below_the_reranked_ones(trained) -> None:
    ranker, feed = trained
    histories = Sequences.from_lists([[3 * N_CHAINS, 1], [4], []])
    feed.ranker = ranker
    scores = feed.score(histories)
    ids, best, _ = feed.recommend(histories, 5)
    feed.ranker = None
    # recommend takes its top from the re-ranked candidates: the same as searching them all
    # (up to which of the items tied at the k-th score make the list)
    _, expected_best = top_k(scores, 5)
    np.testing.assert_array_equal(best, expected_best)
    np.testing.assert_array_equal(np.take_along_axis(scores, ids, axis=1), best)
    for row in scores:
        reranked = row >= RERANKED
        assert reranked.sum() == ranker.n_candidates
        assert row[~reranked & np.isfinite(row)].max() < row[reranked].min()
    assert np.isneginf(scores[0, [3 * N_CHAINS, 1]]).all()  # the history is never a candidate


def test_save_and_load_give_identical_scores(trained, tmp_path: Path) -> None:
    ranker, feed = trained
    ranker.save(tmp_path / "ranker")
    loaded = FeedRanker.load(tmp_path / "ranker")
    assert loaded.get_params() == ranker.get_params() and loaded.report_ == ranker.report_
    histories = Sequences.from_lists([[3 * p + 1] for p in range(10)] + [[5, 7, 130], []])
    feed.ranker = ranker
    before = feed.score(histories)
    feed.ranker = loaded
    after = feed.score(histories)
    feed.ranker = None
    np.testing.assert_array_equal(before, after)


def test_features_of_a_batch_equal_those_of_its_rows(trained) -> None:
    ranker, feed = trained
    histories = Sequences.from_lists([[1, 2, 3, 150], [4], [7, 8]])
    feed.ranker = ranker
    batch = feed.score(histories)
    rows = np.vstack([feed.score(histories[[i]]) for i in range(3)])
    feed.ranker = None
    np.testing.assert_allclose(batch, rows, rtol=1e-6)


def test_bad_parameters_are_clear_errors() -> None:
    events = _interactions(_chain_shop(200))
    with pytest.raises(ValueError, match="objective must be one of lambdarank, binary"):
        _small_ranker(objective="pairwise").fit(events, _make_feed)
    with pytest.raises(ValueError, match="n_candidates must be >= 2"):
        _small_ranker(n_candidates=1).fit(events, _make_feed)
    with pytest.raises(ValueError, match="objective must be one of"):
        LambdaMARTRanker(objective="xentropy").fit(
            np.zeros((4, 1)), np.array([0, 1, 0, 1]), np.array([2, 2])
        )
    with pytest.raises(ValueError, match="labels of 0 and 1"):
        LambdaMARTRanker(objective="binary").fit(
            np.zeros((4, 1)), np.array([0, 2, 0, 1]), np.array([2, 2])
        )
    with pytest.raises(ValidationError, match="ranker_objective"):
        ShoplmConfig.model_validate({"recommend": {"ranker_objective": "pairwise"}})
    too_few = _interactions(_chain_shop(30))
    with pytest.raises(ValueError, match="too few users"):
        _small_ranker().fit(too_few, _make_feed)


def test_the_binary_objective_learns_too(trained) -> None:
    events = _interactions(_chain_shop())
    ranker = _small_ranker(objective="binary").fit(events, _make_feed)
    assert ranker.model_.objective == "binary"
    assert ranker.report_["validation_ndcg@10"] > ranker.report_["blend_validation_ndcg@10"]


def test_the_engine_trains_saves_and_serves_the_ranker(tmp_path: Path) -> None:
    rows = _chain_shop(900, seed=1)
    titles = [f"product {i}" for i in range(N_ITEMS)]
    unavailable = {3 * p + 2 for p in range(0, N_CHAINS, 7)}
    catalog = pd.DataFrame(
        {
            "item_id": [f"sku-{i}" for i in range(N_ITEMS)],
            "title": titles,
            "category": [f"cat {i % 5}" for i in range(N_ITEMS)],
            "available": ["false" if i in unavailable else "true" for i in range(N_ITEMS)],
        }
    )
    events = pd.DataFrame(
        [
            {"user_id": f"u{u}", "item_id": f"sku-{item}", "event": "purchase", "timestamp": t}
            for u, row in enumerate(rows)
            for t, item in enumerate(row)
        ]
    )
    events["timestamp"] = 1_600_000_000 + events["timestamp"]
    catalog.to_csv(tmp_path / "catalog.csv", index=False)
    events.to_csv(tmp_path / "events.csv", index=False)
    config = ShoplmConfig.model_validate(
        {
            "search": {"dense": False},
            "recommend": {"ranker_folds": 1, "ranker_users": 300, "ranker_candidates": 20},
        }
    )
    Engine.build(tmp_path / "catalog.csv", tmp_path / "engine", tmp_path / "events.csv", config)
    manifest = json.loads((tmp_path / "engine" / "current" / "manifest.json").read_text())
    record = manifest["ranker"]
    assert "ranker" in manifest["components"]["recommend"], record
    assert record["objective"] == "lambdarank" and record["training_queries"] > 0
    assert record["validation_ndcg@10"] > record["blend_validation_ndcg@10"]
    assert record["seconds"] >= 0 and manifest["feed"]["ranker"] is True

    engine = Engine.load(tmp_path / "engine")
    assert engine.feed.ranker is not None
    users = [f"u{u}" for u in range(0, 900, 37)] + ["never-seen"]
    histories = {f"u{u}": {f"sku-{i}" for i in row} for u, row in enumerate(rows)}
    hidden = {f"sku-{i}" for i in unavailable}
    for rec in engine.recommend(users, 10):
        assert len(rec.items) == len(rec.reasons) == 10
        assert not set(rec.items) & hidden
        assert not set(rec.items) & histories.get(rec.key, set())
        for reason in rec.reasons:
            assert reason in (POPULAR, SIMILAR_TASTE) or reason.startswith(
                "bought together with product"
            )
    # off in config: no ranker is trained and the manifest says why
    off = config.model_copy(
        update={"recommend": config.recommend.model_copy(update={"ranker": False})}
    )
    Engine.build(tmp_path / "catalog.csv", tmp_path / "engine", tmp_path / "events.csv", off)
    assert Engine.load(tmp_path / "engine").feed.ranker is None
    manifest = json.loads((tmp_path / "engine" / "current" / "manifest.json").read_text())
    assert manifest["ranker"] == {"skipped": "off in config"}
