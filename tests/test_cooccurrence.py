from pathlib import Path

import numpy as np
import pytest

from shoplm.data.interactions import Interactions, Sequences
from shoplm.data.splits import leave_one_out
from shoplm.eval.datasets import load_seqrec, shared_data_available
from shoplm.eval.protocols import evaluate_next_item
from shoplm.recommend.cooccurrence import CooccurrenceRecommender, history_matrix
from shoplm.recommend.popularity import PopularityRecommender


def baskets(rows: list[list[int]], n_items: int) -> Interactions:
    return Interactions.from_sequences(Sequences.from_lists(rows), n_items)


def random_events(seed: int, n: int, n_users: int, n_items: int) -> Interactions:
    rng = np.random.default_rng(seed)
    return Interactions(
        users=rng.integers(0, n_users, n),
        items=rng.integers(0, n_items, n),
        times=rng.integers(0, 10_000, n),
        weights=np.ones(n),
        n_users=n_users,
        n_items=n_items,
    )


def subset(events: Interactions, mask: np.ndarray, n_users: int, n_items: int) -> Interactions:
    return Interactions(
        events.users[mask], events.items[mask], events.times[mask], events.weights[mask],
        n_users, n_items,
    )  # fmt: skip


def test_finds_planted_pair_among_noise() -> None:
    rng = np.random.default_rng(0)
    rows = [list(rng.choice(30, size=4, replace=False)) for _ in range(300)]
    rows += [[3, int(rng.integers(10, 30)), 7] for _ in range(40)]
    model = CooccurrenceRecommender().fit(baskets(rows, 30))
    ids, scores = model.similar_items(np.array([3, 7]), k=3)
    assert ids[:, 0].tolist() == [7, 3]
    assert np.all(scores[:, 0] > scores[:, 1])
    recs, _ = model.recommend(Sequences.from_lists([[3]]), k=1)
    assert recs.tolist() == [[7]]


def test_damping_demotes_a_globally_popular_item() -> None:
    # Item 9 is in every basket; 0 and 1 share 5 baskets of their 6.
    rows = [[9, 0, 1]] * 5 + [[9, 0], [9, 1]] + [[9, 2 + i % 7] for i in range(60)]
    events = baskets(rows, 10)
    undamped = CooccurrenceRecommender(damping=0.0).fit(events)
    assert undamped.similar_items(np.array([0]), k=1)[0].tolist() == [[9]]
    for damping in (0.5, 1.0):
        damped = CooccurrenceRecommender(damping=damping).fit(events)
        assert damped.similar_items(np.array([0]), k=1)[0].tolist() == [[1]]


def test_window_and_session_gap_limit_pairs() -> None:
    events = Interactions(
        users=np.zeros(4, dtype=np.int64),
        items=np.array([0, 1, 2, 3]),
        times=np.array([0, 10, 20, 1_000]),
        weights=np.ones(4),
        n_users=1,
        n_items=4,
    )
    pairs = {
        (window, gap): {tuple(p) for p in np.argwhere(model.counts_.toarray() > 0) if p[0] < p[1]}
        for window in (None, 1)
        for gap in (None, 100)
        for model in [CooccurrenceRecommender(window=window, session_gap=gap).fit(events)]
    }
    assert pairs[(1, None)] == {(0, 1), (1, 2), (2, 3)}
    assert pairs[(None, 100)] == {(0, 1), (0, 2), (1, 2)}
    assert pairs[(1, 100)] == {(0, 1), (1, 2)}
    assert len(pairs[(None, None)]) == 6


def test_basket_mode_counts_a_pair_once_per_session() -> None:
    model = CooccurrenceRecommender().fit(baskets([[0, 1, 0, 1], [0, 1]], 2))
    assert model.counts_[0, 1] == 2
    assert model.item_counts_.tolist() == [2, 2]


def test_recent_history_items_count_most() -> None:
    model = CooccurrenceRecommender(recency_decay=0.5).fit(baskets([[0, 1]] * 3 + [[2, 3]] * 3, 4))
    ids, _ = model.recommend(Sequences.from_lists([[0, 2], [2, 0]]), k=1)
    assert ids.tolist() == [[3], [1]]


@pytest.mark.parametrize(("window", "gap"), [(None, None), (None, 500), (2, None), (2, 500)])
@pytest.mark.parametrize("max_neighbours", [None, 4])
def test_partial_fit_equals_refit_on_union(
    window: int | None, gap: int | None, max_neighbours: int | None
) -> None:
    events = random_events(seed=1, n=3000, n_users=200, n_items=40)
    cut = np.quantile(events.times, 0.7)
    old = (events.times <= cut) & (events.users < 150) & (events.items < 35)
    union = old | (events.times > cut)
    params = {"window": window, "session_gap": gap, "max_neighbours": max_neighbours}
    refit = CooccurrenceRecommender(**params).fit(subset(events, union, 200, 40))

    model = CooccurrenceRecommender(**params).fit(subset(events, old, 150, 35))
    new = np.flatnonzero(events.times > cut)
    for batch in np.array_split(new[np.argsort(events.times[new], kind="stable")], 3):
        mask = np.zeros(len(events), dtype=bool)
        mask[batch] = True
        model.partial_fit(subset(events, mask, 200, 40))  # new users and new items too

    assert model.n_items == 40
    assert (model.counts_ != refit.counts_).nnz == 0
    assert np.array_equal(model.item_counts_, refit.item_counts_)
    assert model.tails_ == refit.tails_
    if max_neighbours is None:  # kept selections may lag behind, see partial_fit
        histories = Sequences.from_lists([[0, 5, 9], [38], [], [1, 36, 2]])
        assert np.array_equal(model.score(histories), refit.score(histories))


def test_save_load_round_trip(tmp_path: Path) -> None:
    events = random_events(seed=2, n=500, n_users=50, n_items=20)
    model = CooccurrenceRecommender(window=3, damping=0.3, max_neighbours=5).fit(events)
    model.save(tmp_path / "co")
    loaded = CooccurrenceRecommender.load(tmp_path / "co")
    assert (loaded.window, loaded.damping, loaded.max_neighbours) == (3, 0.3, 5)
    histories = Sequences.from_lists([[1, 2, 3], [19], []])
    assert np.array_equal(loaded.score(histories), model.score(histories))
    more = random_events(seed=3, n=50, n_users=60, n_items=20)
    more = Interactions(more.users, more.items, more.times + 10_000, more.weights, 60, 20)
    assert np.array_equal(
        loaded.partial_fit(more).score(histories), model.partial_fit(more).score(histories)
    )


def test_empty_history_and_unknown_items() -> None:
    model = CooccurrenceRecommender().fit(baskets([[0, 1], [1, 2]], 4))
    scores = model.score(Sequences.from_lists([[], [0]]))
    assert scores.shape == (2, 4) and scores.dtype == np.float32
    assert np.all(np.isfinite(scores)) and np.all(scores[0] == 0)
    ids, scores = model.similar_items(np.array([3, 0]), k=2)
    assert ids.tolist() == [[-1, -1], [1, -1]]  # 3 never co-occurred; 0 only with 1
    with pytest.raises(ValueError, match="item ids"):
        model.score(Sequences.from_lists([[4]]))
    with pytest.raises(ValueError, match="damping"):
        CooccurrenceRecommender(damping=1.5).fit(baskets([[0, 1]], 2))


def test_history_matrix_weights() -> None:
    matrix = history_matrix(Sequences.from_lists([[2, 0, 2], []]), 3, recency_decay=0.5)
    assert matrix.toarray().tolist() == [[0.5, 0.0, 1.25], [0.0, 0.0, 0.0]]


@pytest.mark.shared
@pytest.mark.skipif(
    not shared_data_available(), reason="research datasets (SHOPLM_SHARED_DATA) not found"
)
def test_beats_popularity_on_scientific() -> None:
    """On the validation targets; a slice of Beauty is too sparse for co-occurrence to shine."""
    data = load_seqrec("scientific")
    split = leave_one_out(data.sequences)
    train = Interactions.from_sequences(split.train, data.n_items)
    results = {
        name: evaluate_next_item(model.fit(train), split.valid_history, split.valid_targets)
        for name, model in [
            ("cooccurrence", CooccurrenceRecommender(window=3)),
            ("popularity", PopularityRecommender()),
        ]
    }
    assert results["cooccurrence"]["ndcg@10"] > 2 * results["popularity"]["ndcg@10"]


def test_partial_fit_on_a_new_model_is_fit() -> None:
    events = random_events(seed=4, n=400, n_users=30, n_items=15)
    fitted = CooccurrenceRecommender(window=2).fit(events)
    grown = CooccurrenceRecommender(window=2).partial_fit(events)
    assert (fitted.counts_ != grown.counts_).nnz == 0
    assert (fitted.neighbours_ != grown.neighbours_).nnz == 0


def test_gathered_scores_and_contributions_match_the_sparse_product() -> None:
    model = CooccurrenceRecommender(window=3, max_neighbours=5).fit(
        random_events(3, 4_000, 200, 60)
    )
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 60, size).tolist() for size in rng.integers(0, 12, 100)]
    batch = Sequences.from_lists(rows)  # above the gather limit: one sparse product
    live = np.concatenate([model.score(batch[np.arange(i, i + 1)]) for i in range(100)])
    np.testing.assert_allclose(live, model.score(batch), rtol=1e-5, atol=1e-7)

    terms = model.contributions(batch[np.arange(5)])
    candidates = np.argmax(model.score(batch[np.arange(5)]), axis=1)
    sources = terms.strongest_sources(np.arange(5), candidates)
    for row, (candidate, source) in enumerate(zip(candidates, sources, strict=True)):
        mine = (terms.rows == row) & (terms.candidates == candidate)
        if mine.any():
            assert source == terms.sources[mine][np.argmax(terms.values[mine])]
            assert source in rows[row]
        else:
            assert source == -1
