from pathlib import Path

import numpy as np
import pytest

from shoplm.data.interactions import Interactions, Sequences
from shoplm.recommend.content import ContentRecommender


def clustered_vectors(seed: int = 0) -> np.ndarray:
    """Items 0-9 around one direction, 10-19 around another, in 16 dimensions."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:2] * 5.0
    return np.repeat(centres, 10, axis=0) + rng.normal(size=(20, 16))


def events_without(cold: list[int]) -> Interactions:
    rows = [[i for i in range(20) if i not in cold and i % 4 == u % 4] for u in range(8)]
    return Interactions.from_sequences(Sequences.from_lists(rows), n_items=20)


def test_cold_item_is_recommended_to_a_similar_history() -> None:
    events = events_without(cold=[9])
    assert not np.any(events.items == 9)
    model = ContentRecommender(clustered_vectors()).fit(events)
    ids, _ = model.recommend(Sequences.from_lists([[0, 1, 2, 3, 4, 5, 6, 7, 8]]), k=1)
    assert ids.tolist() == [[9]]


def test_latest_history_items_weigh_most() -> None:
    model = ContentRecommender(clustered_vectors(), recency_decay=0.3).fit(events_without([]))
    ids, _ = model.recommend(Sequences.from_lists([[0, 1, 12], [12, 0, 1]]), k=3)
    assert np.all(ids[0] >= 10)
    assert np.all(ids[1] < 10)


def test_added_items_are_recommendable_and_similar_excludes_self() -> None:
    vectors = clustered_vectors()
    model = ContentRecommender(vectors).fit(events_without([]))
    new_ids = model.add_items(vectors[[3]] * 2.0)  # same direction as item 3
    assert new_ids.tolist() == [20]
    ids, scores = model.similar_items(np.array([3, 15]), k=2)
    assert ids[0, 0] == 20 and scores[0, 0] == pytest.approx(1.0)
    assert 3 not in ids[0] and 15 not in ids[1]
    assert np.all(ids[1] >= 10)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = ContentRecommender(clustered_vectors(), recency_decay=0.6).fit(events_without([]))
    model.save(tmp_path / "content")
    loaded = ContentRecommender.load(tmp_path / "content")
    assert loaded.recency_decay == 0.6
    histories = Sequences.from_lists([[0, 11], [19], []])
    assert np.array_equal(loaded.score(histories), model.score(histories))


def test_empty_history_zero_vectors_and_shape_check() -> None:
    vectors = clustered_vectors()
    vectors[5] = 0.0  # an item without text
    model = ContentRecommender(vectors).fit(events_without([]))
    scores = model.score(Sequences.from_lists([[], [5], [0]]))
    assert scores.shape == (3, 20) and scores.dtype == np.float32
    assert np.all(np.isfinite(scores))
    assert np.all(scores[:2] == 0) and scores[2, 5] == 0
    with pytest.raises(ValueError, match="one row per item"):
        ContentRecommender(vectors[:10]).fit(events_without([]))
