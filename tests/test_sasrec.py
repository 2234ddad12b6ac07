"""SASRec: learns an order, keeps its best epoch, survives a save, and answers odd histories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shoplm.data.interactions import Interactions, Sequences
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.sasrec import SASRecRecommender

N_ITEMS = 40


def _successor_rows(n_rows: int, seed: int) -> list[np.ndarray]:
    """Runs of consecutive items (i is always followed by i + 1, wrapping): a learnable order."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(N_ITEMS) + np.arange(rng.integers(4, 12))) % N_ITEMS for _ in range(n_rows)
    ]


def _small_model(**params: object) -> SASRecRecommender:
    defaults: dict[str, object] = {
        "dim": 32,
        "n_layers": 1,
        "dropout": 0.1,
        "lr": 3e-3,
        "batch_size": 64,
        "max_epochs": 25,
        "n_threads": 1,
    }
    return SASRecRecommender(**{**defaults, **params})


@pytest.fixture(scope="module")
def fitted() -> tuple[SASRecRecommender, list[np.ndarray]]:
    rows = _successor_rows(400, seed=0)
    train = Sequences.from_lists([r[:-1] for r in rows])
    valid = (train[:100], np.array([r[-1] for r in rows[:100]]))
    model = _small_model(patience=3).fit(Interactions.from_sequences(train, N_ITEMS), valid)
    return model, rows


def test_learns_the_next_item(fitted: tuple[SASRecRecommender, list[np.ndarray]]) -> None:
    model, _ = fitted
    rows = _successor_rows(200, seed=1)
    histories = Sequences.from_lists([r[:-1] for r in rows])
    top, _ = model.recommend(histories, k=1)
    hit_rate = (top[:, 0] == np.array([r[-1] for r in rows])).mean()
    assert hit_rate > 0.9


def test_restores_the_best_validation_epoch(
    fitted: tuple[SASRecRecommender, list[np.ndarray]],
) -> None:
    model, rows = fitted
    train = Sequences.from_lists([r[:-1] for r in rows[:100]])
    ndcg = evaluate_next_item(model, train, np.array([r[-1] for r in rows[:100]]), ks=(10,))
    best = max(model.history_, key=lambda record: record["ndcg10"])
    assert model.best_epoch_ == best["epoch"]
    assert ndcg["ndcg@10"] == pytest.approx(best["ndcg10"])


def test_save_load_gives_identical_scores(
    fitted: tuple[SASRecRecommender, list[np.ndarray]], tmp_path: Path
) -> None:
    model, rows = fitted
    histories = Sequences.from_lists(rows[:50])
    model.save(tmp_path / "sasrec")
    loaded = SASRecRecommender.load(tmp_path / "sasrec")
    np.testing.assert_array_equal(loaded.score(histories), model.score(histories))
    assert loaded.best_epoch_ == model.best_epoch_


def test_empty_and_unknown_histories(fitted: tuple[SASRecRecommender, list[np.ndarray]]) -> None:
    model, _ = fitted
    histories = Sequences.from_lists([[], [N_ITEMS + 5, 3], [N_ITEMS + 7], [3]])
    scores = model.score(histories)
    assert scores.shape == (4, N_ITEMS) and np.isfinite(scores).all()
    # Unknown ids are ignored: [unknown, 3] is answered as [3], and [unknown] as [].
    np.testing.assert_allclose(scores[1], scores[3], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scores[2], scores[0])
    # A new session with no history gets what was popular in training.
    assert scores[0].argmax() == model.popularity_.argmax()


def test_long_rows_train_every_step_once() -> None:
    """Rows longer than max_len are cut into windows, not truncated to their end."""
    rows = _successor_rows(60, seed=2)
    long_rows = [np.arange(37) % N_ITEMS, *rows]
    data = Interactions.from_sequences(Sequences.from_lists(long_rows), N_ITEMS)
    model = _small_model(max_len=8, max_epochs=1).fit(data)
    steps = sum(len(r) - 1 for r in long_rows)
    assert model.history_[0]["n_targets"] == steps


def test_time_budget_stops_training() -> None:
    rows = _successor_rows(100, seed=3)
    data = Interactions.from_sequences(Sequences.from_lists(rows), N_ITEMS)
    model = _small_model(max_epochs=50, max_minutes=1e-6).fit(data)
    assert len(model.history_) == 1


def test_text_vectors_place_an_unseen_item_next_to_its_twin() -> None:
    """An item never interacted with, whose text matches a trained item's, scores like it."""
    rng = np.random.default_rng(4)
    text = rng.normal(size=(N_ITEMS, 16)).astype(np.float32)
    twin, unseen = 7, 8
    text[unseen] = text[twin]
    rows = [r[~np.isin(r, unseen)] for r in _successor_rows(400, seed=5)]
    data = Interactions.from_sequences(Sequences.from_lists(rows), N_ITEMS)
    model = _small_model(item_init=text, max_epochs=15).fit(data)
    scores = model.score(Sequences.from_lists([[twin - 2, twin - 1]]))[0]
    assert scores.argmax() == twin
    # The unseen item ranks near the top, though its id vector never received a gradient
    # signal of its own beyond the softmax denominator.
    assert (scores > scores[unseen]).sum() <= 5
