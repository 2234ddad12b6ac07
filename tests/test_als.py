from pathlib import Path

import numpy as np
import pytest

from shoplm.data.interactions import Interactions, Sequences
from shoplm.data.splits import leave_one_out
from shoplm.eval.datasets import load_seqrec, shared_data_available
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.als import ALSRecommender
from shoplm.recommend.popularity import PopularityRecommender


def block_events(seed: int = 0) -> Interactions:
    """Users 0-59 use items 0-14, users 60-119 items 15-29; 6 random items each."""
    rng = np.random.default_rng(seed)
    rows = [rng.choice(15, size=6, replace=False) + 15 * (user >= 60) for user in range(120)]
    return Interactions.from_sequences(Sequences.from_lists(rows), n_items=30)


@pytest.mark.parametrize(
    "params",
    [
        {"factors": 4, "regularization": 1.0, "alpha": 5.0},
        {
            "factors": 4,
            "model": "bpr",
            "iterations": 100,
            "learning_rate": 0.05,
            "regularization": 0.1,
        },
    ],
    ids=["als", "bpr"],
)
def test_recovers_planted_blocks(params: dict) -> None:
    events = block_events()
    model = ALSRecommender(num_threads=1, **params).fit(events)
    ids, _ = model.recommend(events.to_sequences(), k=5)
    in_second_block = np.arange(120)[:, None] >= 60
    assert np.mean(np.all((ids >= 15) == in_second_block, axis=1)) >= 0.9


def test_fold_in_solves_the_weighted_least_squares() -> None:
    model = ALSRecommender(factors=6, regularization=0.3, alpha=4.0, num_threads=1)
    model.fit(block_events())
    history = [3, 7, 3]
    y = model.item_factors_.astype(np.float64)
    confidence = np.ones(30)
    confidence[[3, 7]] = [2 * 4.0, 4.0]
    preference = np.zeros(30)
    preference[[3, 7]] = 1.0
    a = y.T @ (confidence[:, None] * y) + 0.3 * np.eye(6)
    expected = np.linalg.solve(a, y.T @ (confidence * preference))
    got = model.user_factors(Sequences.from_lists([history]))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_seeded_fit_is_deterministic() -> None:
    first = ALSRecommender(factors=8, random_state=7, num_threads=1).fit(block_events())
    second = ALSRecommender(factors=8, random_state=7, num_threads=1).fit(block_events())
    assert np.array_equal(first.item_factors_, second.item_factors_)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = ALSRecommender(factors=8, alpha=3.0, num_threads=1).fit(block_events())
    model.save(tmp_path / "als")
    loaded = ALSRecommender.load(tmp_path / "als")
    assert (loaded.factors, loaded.alpha, loaded.model) == (8, 3.0, "als")
    histories = Sequences.from_lists([[0, 5], [29], []])
    assert np.array_equal(loaded.score(histories), model.score(histories))


def test_empty_history_scores_zero_and_bad_model_is_rejected() -> None:
    model = ALSRecommender(factors=4, num_threads=1).fit(block_events())
    scores = model.score(Sequences.from_lists([[], [1]]))
    assert scores.shape == (2, 30) and scores.dtype == np.float32
    assert np.all(np.isfinite(scores)) and np.all(scores[0] == 0)
    with pytest.raises(ValueError, match="model"):
        ALSRecommender(model="svd").fit(block_events())  # type: ignore[arg-type]


@pytest.mark.shared
@pytest.mark.skipif(
    not shared_data_available(), reason="research datasets (SHOPLM_SHARED_DATA) not found"
)
def test_beats_popularity_on_scientific() -> None:
    data = load_seqrec("scientific")
    split = leave_one_out(data.sequences)
    train = Interactions.from_sequences(split.train, data.n_items)
    results = {
        name: evaluate_next_item(model.fit(train), split.valid_history, split.valid_targets)
        for name, model in [
            ("als", ALSRecommender(factors=32, regularization=0.1, alpha=10.0, num_threads=2)),
            ("popularity", PopularityRecommender()),
        ]
    }
    assert results["als"]["ndcg@10"] > 2 * results["popularity"]["ndcg@10"]


def test_live_fold_in_agrees_with_implicits_batch_solver() -> None:
    # short histories take the Woodbury path, one as long as the factor count the direct
    # solve; batches above the numpy limit go to implicit's solver
    model = ALSRecommender(factors=8, regularization=2.0, alpha=20.0, num_threads=1)
    model.fit(block_events())
    rows = [[3, 7, 3], [], [29], list(range(12)), [1, 2]]
    histories = Sequences.from_lists(rows)
    live = model.user_factors(histories)
    batch = model.user_factors(Sequences.from_lists(rows * 4))[: len(rows)]
    np.testing.assert_allclose(live, batch, rtol=1e-4, atol=1e-5)
    assert not live[1].any()


def test_remembered_fold_in_follows_the_history_and_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a repeated history is answered from the memo; a longer one, or a refit model, is not
    monkeypatch.setattr("shoplm.recommend.als._FOLD_IN_MEMO", 2)
    model = ALSRecommender(factors=8, regularization=2.0, alpha=20.0, num_threads=1)
    model.fit(block_events())
    first = model.user_factors(Sequences.from_lists([[3, 7]]))[0]
    again = model.user_factors(Sequences.from_lists([[3, 7]]))[0]
    longer = model.user_factors(Sequences.from_lists([[3, 7, 29]]))[0]
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(longer, model._fold_in(np.array([3, 7, 29])))
    assert not np.allclose(first, longer)
    model.user_factors(Sequences.from_lists([[1], [2], [4]]))  # more than the memo holds
    assert len(model._memo) == 2
    refit = model.fit(block_events(seed=1))
    np.testing.assert_allclose(
        refit.user_factors(Sequences.from_lists([[3, 7]]))[0], refit._fold_in(np.array([3, 7]))
    )
