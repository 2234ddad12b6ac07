"""Train / evaluation splits that keep offline numbers honest and comparable with papers.

Three splits, one per question:

- :func:`leave_one_out` for next-item recommendation, the protocol of SASRec, S3-Rec, UniSRec
  and TIGER, so our numbers line up with theirs;
- :func:`temporal_split` for a shop's own log, where the honest question is "trained on the
  past, how well does it predict the future";
- :func:`query_split` for search judgments, split by query because a query seen in training
  makes its judged products easy to rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shoplm.data.interactions import Sequences


@dataclass(frozen=True, eq=False)
class LeaveOneOut:
    """Leave-one-out views of a batch of sequences.

    ``train`` has one row per input sequence. Sequences with fewer than 3 items cannot give a
    training prefix plus a validation and a test target, so they stay whole in ``train``
    (their events are still worth learning from) and are left out of evaluation; they are
    counted in ``n_too_short``. ``eval_rows`` are the input rows that are evaluated, in
    order, and every ``valid_*`` / ``test_*`` array is aligned with it.
    """

    train: Sequences
    valid_history: Sequences
    valid_targets: np.ndarray
    test_history: Sequences
    test_targets: np.ndarray
    eval_rows: np.ndarray
    n_too_short: int


def leave_one_out(seqs: Sequences) -> LeaveOneOut:
    """Hold out each sequence's last item for test and second-to-last for validation.

    Validation histories are the training rows (the sequence minus its last two items);
    test histories add the validation target back (the sequence minus its last item), as in
    the SASRec and S3-Rec code.
    """
    long_enough = seqs.lengths >= 3
    eval_rows = np.flatnonzero(long_enough)
    kept = seqs[eval_rows]
    test_history = kept.drop_last(1)
    valid_history = kept.drop_last(2)
    train = seqs.drop_last(np.where(long_enough, 2, 0))
    return LeaveOneOut(
        train=train,
        valid_history=valid_history,
        valid_targets=test_history.last(),
        test_history=test_history,
        test_targets=kept.last(),
        eval_rows=eval_rows,
        n_too_short=int((~long_enough).sum()),
    )


def temporal_split(
    events: pd.DataFrame, cutoff: Any, time_col: str = "timestamp"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows strictly before ``cutoff`` train, the rest test.

    A row without a time can land on neither side without silently biasing one of them, so
    missing times are an error rather than dropped.
    """
    times = events[time_col]
    n_missing = int(times.isna().sum())
    if n_missing:
        raise ValueError(
            f"{n_missing} of {len(events)} rows have no {time_col!r}; "
            "fill or drop them before a temporal split"
        )
    if pd.api.types.is_datetime64_any_dtype(times):
        cutoff = pd.Timestamp(cutoff)
    before = (times < cutoff).to_numpy()
    return events[before], events[~before]


def normalise_query(queries: pd.Series) -> pd.Series:
    """The key that decides which queries are "the same": case- and whitespace-insensitive."""
    return queries.astype(str).str.lower().str.split().str.join(" ")


def query_split(
    labels: pd.DataFrame, dev_fraction: float, seed: int, query_col: str = "query"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split judged (query, product) rows into train and dev by query, never by row.

    Queries are keyed by :func:`normalise_query` so that "Drill " and "drill" share a side.
    The keys are sorted before a seeded shuffle, so the split depends only on the set of
    queries and the seed, not on row order; ``round(dev_fraction * n_queries)`` go to dev.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must lie in (0, 1), got {dev_fraction}")
    keys = normalise_query(labels[query_col])
    unique, inverse = np.unique(keys.to_numpy(dtype=str), return_inverse=True)
    n_dev = round(dev_fraction * unique.size)
    is_dev_key = np.zeros(unique.size, dtype=bool)
    is_dev_key[np.random.default_rng(seed).permutation(unique.size)[:n_dev]] = True
    is_dev = is_dev_key[inverse]
    return labels[~is_dev], labels[is_dev]
