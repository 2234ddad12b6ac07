import numpy as np
import pandas as pd
import pytest

from shoplm.data.interactions import Sequences
from shoplm.data.splits import leave_one_out, query_split, temporal_split
from shoplm.eval.datasets import load_home_depot, load_seqrec, shared_data_available

needs_shared = pytest.mark.skipif(
    not shared_data_available(), reason="research datasets (SHOPLM_SHARED_DATA) not found"
)


def rows_of(seqs: Sequences) -> list[list[int]]:
    return [seqs[i].tolist() for i in range(len(seqs))]


def test_leave_one_out_views() -> None:
    seqs = Sequences.from_lists([[1, 2, 3, 4], [5, 6], [7, 8, 9]])
    split = leave_one_out(seqs)
    assert rows_of(split.train) == [[1, 2], [5, 6], [7]]
    assert split.eval_rows.tolist() == [0, 2]
    assert rows_of(split.valid_history) == [[1, 2], [7]]
    assert split.valid_targets.tolist() == [3, 8]
    assert rows_of(split.test_history) == [[1, 2, 3], [7, 8]]
    assert split.test_targets.tolist() == [4, 9]
    assert split.n_too_short == 1


@pytest.mark.shared
@needs_shared
def test_leave_one_out_on_beauty() -> None:
    seqs = load_seqrec("beauty").sequences
    split = leave_one_out(seqs)
    assert split.n_too_short == 0
    assert split.valid_history == split.train
    assert split.test_history.items.size == 198_502 - 22_363
    assert np.array_equal(split.test_targets, seqs.last())


def test_temporal_split() -> None:
    days = ["2024-01-01", "2024-01-03", "2024-01-02", "2024-01-05"]
    events = pd.DataFrame({"item_id": list("abcd"), "timestamp": pd.to_datetime(days)})
    train, test = temporal_split(events, "2024-01-03")
    assert train["item_id"].tolist() == ["a", "c"]
    assert test["item_id"].tolist() == ["b", "d"]


def test_temporal_split_numeric_time_column() -> None:
    events = pd.DataFrame({"t": [5, 1, 9]})
    train, test = temporal_split(events, 5, time_col="t")
    assert train["t"].tolist() == [1]
    assert test["t"].tolist() == [5, 9]


def test_temporal_split_rejects_missing_times() -> None:
    events = pd.DataFrame({"timestamp": pd.to_datetime(["2024-01-01", None, None])})
    with pytest.raises(ValueError, match="2 of 3 rows"):
        temporal_split(events, "2024-01-02")


def make_labels() -> pd.DataFrame:
    queries = ["Drill ", "drill", "hammer", " saw  blade", "Saw blade", "nails", "glue", "tape"]
    return pd.DataFrame({"query": queries, "item_id": [str(i) for i in range(len(queries))]})


def test_query_split_groups_normalised_queries() -> None:
    labels = make_labels()
    for seed in range(20):
        train, dev = query_split(labels, dev_fraction=0.5, seed=seed)
        assert len(train) + len(dev) == len(labels)
        dev_queries = dev["query"].tolist()
        assert ("Drill " in dev_queries) == ("drill" in dev_queries)
        assert (" saw  blade" in dev_queries) == ("Saw blade" in dev_queries)


def test_query_split_fraction_and_determinism() -> None:
    labels = make_labels()  # 6 distinct queries
    _, dev = query_split(labels, dev_fraction=1 / 3, seed=1)
    assert dev["query"].str.lower().str.split().str.join(" ").nunique() == 2
    _, again = query_split(labels.iloc[::-1], dev_fraction=1 / 3, seed=1)
    assert sorted(again["item_id"]) == sorted(dev["item_id"])
    seen = {tuple(sorted(query_split(labels, 1 / 3, seed=s)[1]["item_id"])) for s in range(10)}
    assert len(seen) > 1


def test_query_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="dev_fraction"):
        query_split(make_labels(), dev_fraction=1.0, seed=0)


@pytest.mark.shared
@needs_shared
def test_query_split_on_home_depot() -> None:
    _, labels = load_home_depot()
    train, dev = query_split(labels, dev_fraction=0.2, seed=0)

    def keys(frame: pd.DataFrame) -> set[str]:
        return set(frame["query"].str.lower().str.split().str.join(" "))

    assert not keys(train) & keys(dev)
    assert len(train) + len(dev) == len(labels)
    assert abs(len(keys(dev)) / len(keys(labels)) - 0.2) < 0.001
