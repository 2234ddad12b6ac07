import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from shoplm.data.interactions import Interactions, Sequences

ragged = st.lists(st.lists(st.integers(0, 50), max_size=8), max_size=12)


def as_lists(seqs: Sequences) -> list[list[int]]:
    return [seqs[i].tolist() for i in range(len(seqs))]


def test_from_lists_layout() -> None:
    seqs = Sequences.from_lists([[3, 1], [], [7, 8, 9]])
    assert len(seqs) == 3
    assert seqs.indptr.tolist() == [0, 2, 2, 5]
    assert seqs.items.dtype == np.int64
    assert seqs.lengths.tolist() == [2, 0, 3]
    assert seqs.row_ids().tolist() == [0, 0, 2, 2, 2]
    assert seqs.positions().tolist() == [0, 1, 0, 1, 2]


def test_empty_batch() -> None:
    seqs = Sequences.from_lists([])
    assert len(seqs) == 0
    assert seqs.to_padded(3).shape == (0, 3)


def test_invalid_indptr_is_rejected() -> None:
    with pytest.raises(ValueError, match="indptr"):
        Sequences(np.array([0, 3]), np.array([1, 2]))
    with pytest.raises(ValueError, match="non-decreasing"):
        Sequences(np.array([0, 2, 1, 2]), np.array([1, 2]))


@given(ragged, st.data())
@settings(max_examples=60, deadline=None)
def test_row_selection_matches_lists(rows: list[list[int]], data: st.DataObject) -> None:
    seqs = Sequences.from_lists(rows)
    picks = data.draw(st.lists(st.integers(0, max(len(rows) - 1, 0)), max_size=6))
    if rows:
        assert as_lists(seqs[np.array(picks, dtype=np.int64)]) == [rows[i] for i in picks]
        assert seqs[-1].tolist() == rows[-1]
    assert as_lists(seqs[1::2]) == rows[1::2]
    mask = np.array([len(r) % 2 == 0 for r in rows], dtype=bool)
    assert as_lists(seqs[mask]) == [r for r, m in zip(rows, mask, strict=True) if m]


def test_int_index_out_of_range() -> None:
    with pytest.raises(IndexError):
        Sequences.from_lists([[1]])[1]


@given(ragged, st.integers(0, 4))
@settings(max_examples=60, deadline=None)
def test_drop_last_matches_lists(rows: list[list[int]], n: int) -> None:
    dropped = Sequences.from_lists(rows).drop_last(n)
    assert as_lists(dropped) == [r[: max(len(r) - n, 0)] for r in rows]


def test_drop_last_per_row() -> None:
    seqs = Sequences.from_lists([[1, 2, 3], [4, 5], [6]])
    assert as_lists(seqs.drop_last(np.array([2, 0, 5]))) == [[1], [4, 5], []]
    with pytest.raises(ValueError):
        seqs.drop_last(-1)


def test_last() -> None:
    seqs = Sequences.from_lists([[1, 2, 3], [4]])
    assert seqs.last().tolist() == [3, 4]
    with pytest.raises(ValueError, match="non-empty"):
        Sequences.from_lists([[1], []]).last()


@given(ragged, st.integers(1, 6))
@settings(max_examples=60, deadline=None)
def test_to_padded_keeps_most_recent_right_aligned(rows: list[list[int]], max_len: int) -> None:
    padded = Sequences.from_lists(rows).to_padded(max_len, pad=-7)
    expected = [[-7] * (max_len - len(r[-max_len:])) + r[-max_len:] for r in rows]
    assert padded.shape == (len(rows), max_len)
    assert padded.tolist() == expected


def test_to_padded_example() -> None:
    seqs = Sequences.from_lists([[1, 2, 3, 4], [5]])
    assert seqs.to_padded(3).tolist() == [[2, 3, 4], [-1, -1, 5]]


def test_equality() -> None:
    assert Sequences.from_lists([[1, 2], [3]]) == Sequences.from_lists([[1, 2], [3]])
    assert Sequences.from_lists([[1, 2], [3]]) != Sequences.from_lists([[1], [2, 3]])


def make_events() -> Interactions:
    # user 2 has two events at time 5: they must keep their given order (9 before 4).
    return Interactions(
        users=np.array([2, 0, 2, 2, 0, 0]),
        items=np.array([9, 1, 4, 0, 1, 3]),
        times=np.array([5, 20, 5, 1, 10, 30]),
        weights=np.array([1, 1, 2, 1, 3, 1]),
        n_users=4,
        n_items=10,
    )


def test_interactions_coerce_dtypes() -> None:
    events = make_events()
    assert events.users.dtype == events.items.dtype == events.times.dtype == np.int64
    assert events.weights.dtype == np.float32
    assert len(events) == 6


def test_interactions_validate() -> None:
    with pytest.raises(ValueError, match="same length"):
        Interactions(np.array([0]), np.array([0, 1]), np.array([0]), np.array([1.0]), 1, 2)
    with pytest.raises(ValueError, match="items ids"):
        Interactions(np.array([0]), np.array([2]), np.array([0]), np.array([1.0]), 1, 2)


def test_to_sequences_sorts_by_time_stably() -> None:
    seqs = make_events().to_sequences()
    assert as_lists(seqs) == [[1, 1, 3], [], [0, 9, 4], []]


def test_to_csr_sums_repeats() -> None:
    csr = make_events().to_csr()
    assert isinstance(csr, sp.csr_matrix)
    assert csr.shape == (4, 10)
    assert csr[0, 1] == 4.0  # weights 1 + 3
    assert csr[2, 4] == 2.0
    assert csr.nnz == 5


def test_from_sequences_round_trip() -> None:
    seqs = Sequences.from_lists([[5, 2, 5], [], [1]])
    events = Interactions.from_sequences(seqs, n_items=6)
    assert events.n_users == 3
    assert events.times.tolist() == [0, 1, 2, 0]
    assert events.to_sequences() == seqs
