from pathlib import Path
from typing import Self

import numpy as np
import pytest

from shoplm.data.interactions import Interactions, Sequences
from shoplm.eval.datasets import (
    load_home_depot,
    load_online_retail_or,
    load_seqrec,
    shared_data_available,
    shared_data_dir,
)
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.base import Recommender

needs_shared = pytest.mark.skipif(
    not shared_data_available(), reason="research datasets (SHOPLM_SHARED_DATA) not found"
)


class FixedScores(Recommender):
    """Scores item i as ``weights[i]`` for everyone, and records the batch sizes it saw."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)
        self.n_items = self.weights.size
        self.batches: list[int] = []

    def fit(self, interactions: Interactions) -> Self:
        return self

    def score(self, histories: Sequences) -> np.ndarray:
        self.batches.append(len(histories))
        return np.tile(self.weights, (len(histories), 1))

    def save(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: Path) -> Self:
        raise NotImplementedError


# Item scores: item 0 best, then 1, ... (5 items).
MODEL_WEIGHTS = np.array([5.0, 4.0, 3.0, 2.0, 1.0])


def test_ranks_and_metrics_by_hand() -> None:
    history = Sequences.from_lists([[0], [0, 1], [4]])
    targets = np.array([1, 3, 0])
    metrics, ranks = evaluate_next_item(
        FixedScores(MODEL_WEIGHTS), history, targets, ks=(1, 2), return_ranks=True
    )
    # user 0: item 0 masked, target 1 is first; user 1: 0, 1 masked, target 3 is second;
    # user 2: target 0 first.
    assert ranks.tolist() == [0, 1, 0]
    assert metrics["hr@1"] == pytest.approx(2 / 3)
    assert metrics["hr@2"] == pytest.approx(1.0)
    assert metrics["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3) + 1) / 3)
    assert metrics["mrr"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["n_users"] == 3


def test_without_masking_seen_items_compete() -> None:
    history = Sequences.from_lists([[0], [0, 1], [4]])
    _, ranks = evaluate_next_item(
        FixedScores(MODEL_WEIGHTS),
        history,
        np.array([1, 3, 0]),
        mask_history=False,
        return_ranks=True,
    )
    assert ranks.tolist() == [1, 3, 0]


def test_batching_does_not_change_results() -> None:
    rng = np.random.default_rng(0)
    history = Sequences.from_lists([rng.integers(0, 50, size=n) for n in rng.integers(1, 6, 37)])
    targets = rng.integers(0, 50, size=37)
    model = FixedScores(rng.random(50))
    whole = evaluate_next_item(model, history, targets, batch_size=1000)
    model.batches.clear()
    batched = evaluate_next_item(model, history, targets, batch_size=8)
    assert model.batches == [8, 8, 8, 8, 5]
    assert batched == whole


def test_ties_are_pessimistic_unless_asked() -> None:
    history = Sequences.from_lists([[4]])
    constant = FixedScores(np.ones(5))
    pessimistic = evaluate_next_item(constant, history, np.array([2]), ks=(1,))
    optimistic = evaluate_next_item(constant, history, np.array([2]), ks=(1,), ties="optimistic")
    assert pessimistic["hr@1"] == 0.0  # a constant scorer must not look perfect
    assert optimistic["hr@1"] == 1.0


def test_rejects_misaligned_targets() -> None:
    with pytest.raises(ValueError, match="one target per history"):
        evaluate_next_item(FixedScores(MODEL_WEIGHTS), Sequences.from_lists([[1]]), np.zeros(2))


def test_shared_data_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPLM_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("SHOPLM_SHARED_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="SHOPLM_SHARED_DATA"):
        shared_data_dir()
    assert not shared_data_available()


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize(
    ("name", "n_users", "n_items", "n_events"),
    [("beauty", 22_363, 12_101, 198_502), ("scientific", 8_442, 4_385, 59_427)],
)
def test_seqrec_sizes(name: str, n_users: int, n_items: int, n_events: int) -> None:
    data = load_seqrec(name)
    assert len(data.sequences) == data.user_ids.size == n_users
    assert data.item_ids.size == n_items
    assert data.sequences.items.size == n_events
    assert data.sequences.lengths.min() >= 5
    assert data.item_text is not None and data.item_text.size == n_items
    # ids are numbered in order of first appearance
    first = np.unique(data.sequences.items, return_index=True)[1]
    assert np.all(np.diff(first) > 0)


@pytest.mark.shared
@needs_shared
def test_beauty_text_is_aligned_and_unescaped() -> None:
    data = load_seqrec("beauty")
    text = dict(zip(data.item_ids, data.item_text, strict=True))
    assert text["B00DJQQEGQ"].startswith("Shea Butter - 100% Natural African")
    assert data.user_ids[0] == "A1YJEY40YUW4SE"
    assert data.item_ids[data.sequences[0]].tolist()[:2] == ["B004756YJA", "B004ZT0SSG"]
    assert not any("&egrave;" in t for t in data.item_text)
    assert any("Crème" in t for t in data.item_text)


@pytest.mark.shared
@needs_shared
def test_online_retail_or_matches_unisrec_sizes() -> None:
    data = load_online_retail_or()
    assert len(data.sequences) == 16_520
    assert data.item_ids.size == 3_469
    assert data.sequences.items.size == 519_906
    assert data.sequences.lengths.min() >= 5
    assert np.bincount(data.sequences.items).min() >= 5
    # invoice 536365 is the first in the file; its basket keeps file order
    assert data.user_ids[0] == "536365"
    assert data.item_ids[data.sequences[0]].tolist()[:3] == ["85123A", "71053", "84406B"]
    assert data.item_text is not None
    assert data.item_text[0] == "white hanging heart t-light holder."


@pytest.mark.shared
@needs_shared
def test_home_depot_labels_refer_to_catalogue() -> None:
    products, labels = load_home_depot()
    assert list(products.columns) == ["item_id", "title"]
    assert list(labels.columns) == ["query", "item_id", "relevance"]
    assert len(products) == 54_667 and products["item_id"].is_unique
    assert len(labels) == 51_253
    assert labels["item_id"].isin(products["item_id"]).all()
    assert labels["relevance"].between(1, 3).all()
