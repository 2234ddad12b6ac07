"""Stream an event log into the canonical event table, reporting every problem.

Events are read chunk by chunk and written to Parquet as they go, so memory stays bounded
by the chunk size whatever the file size (the one thing that grows is an 8-byte hash per
timed event, kept to find exact duplicates across chunks). User ids are pseudonymised
and contact data in queries masked before a chunk is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shoplm.config import ShoplmConfig
from shoplm.data.clean import clean_text_column
from shoplm.data.mapping import resolve_columns
from shoplm.data.parsing import parse_numbers, parse_timestamps
from shoplm.data.privacy import Pseudonymiser, mask_contact_data
from shoplm.data.readers import read_chunks
from shoplm.data.report import ValidationReport
from shoplm.data.schema import EVENT_CODES, EVENT_FIELDS, EventType

#: The stored event table. ``item`` is the internal item id (-1: a search with no item);
#: ``seq`` is the position in the input, the order kept for events without a timestamp.
EVENT_SCHEMA = pa.schema(
    [
        ("user", pa.string()),
        ("item", pa.int32()),
        ("event", pa.int8()),
        ("timestamp", pa.timestamp("ns", tz="UTC")),
        ("query", pa.string()),
        ("value", pa.float64()),
        ("session", pa.string()),
        ("seq", pa.int64()),
    ]
)

_NO_TIME = np.iinfo(np.int64).min


class DuplicateFinder:
    """Exact duplicates across chunks, by a 64-bit hash of the whole canonical row."""

    def __init__(self) -> None:
        self._seen = np.empty(0, dtype=np.uint64)

    def mark(self, rows: pd.DataFrame, candidates: np.ndarray) -> np.ndarray:
        """Mask of the candidate rows already seen in this or an earlier chunk."""
        duplicate = np.zeros(len(rows), dtype=bool)
        idx = np.flatnonzero(candidates)
        if idx.size:
            hashes = pd.util.hash_pandas_object(rows.iloc[idx], index=False).to_numpy()
            repeated = pd.Series(hashes).duplicated().to_numpy()
            # _seen stays sorted, so a chunk costs a binary search per row and one sort of
            # the merged array, not a pass of np.unique over everything seen so far.
            pos = np.minimum(np.searchsorted(self._seen, hashes), max(self._seen.size - 1, 0))
            earlier = self._seen[pos] == hashes if self._seen.size else np.zeros_like(repeated)
            duplicate[idx] = earlier | repeated
            merged = np.concatenate([self._seen, hashes[~duplicate[idx]]])
            merged.sort()
            self._seen = merged
        return duplicate


def load_events(
    path: Path,
    config: ShoplmConfig,
    item_ids: pd.Index,
    pseudonymiser: Pseudonymiser,
    report: ValidationReport,
    out: Path | None,
    progress: bool = False,
) -> int:
    """Validate the events at ``path`` against the catalogue ids; write them to ``out``.

    Returns the number of events kept. With ``out=None`` the file is only validated.
    """
    path = Path(path)
    name = str(path)
    stats = report.stats(name)
    duplicates = DuplicateFinder()
    writer = pq.ParquetWriter(out, EVENT_SCHEMA, compression="zstd") if out else None
    seq_start = 0
    try:
        for chunk in read_chunks(path, config.load.chunk_rows, progress):
            stats.rows_read += len(chunk.frame) + len(chunk.problems)
            for problem in chunk.problems:
                report.add(name, np.array([problem.row]), "(record)", "error", problem.reason)
            if chunk.frame.empty:
                continue
            table = normalise_events(
                path,
                chunk.frame,
                chunk.rows,
                config,
                item_ids,
                pseudonymiser,
                report,
                duplicates,
                seq_start,
            )
            seq_start += len(chunk.frame)
            stats.rows_kept += table.num_rows
            if writer is not None:
                writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    stats.rows_rejected = stats.rows_read - stats.rows_kept
    return stats.rows_kept


def normalise_events(
    path: Path,
    frame: pd.DataFrame,
    rows: np.ndarray,
    config: ShoplmConfig,
    item_ids: pd.Index,
    pseudonymiser: Pseudonymiser,
    report: ValidationReport,
    duplicates: DuplicateFinder,
    seq_start: int,
) -> pa.Table:
    name = str(path)
    columns = resolve_columns(
        path, frame.columns, config.events.columns, EVENT_FIELDS, required=["user_id", "item_id"]
    )

    def text(field: str) -> pd.Series:
        if field not in columns:
            return pd.Series("", index=frame.index, dtype=object)
        return frame[columns[field]].astype("string").str.strip().fillna("").astype(object)

    users = text("user_id")
    keep = np.array(users != "", dtype=bool)
    report.add(name, rows[~keep], "user_id", "error", "missing user_id")

    event_names = {
        **{e.value: e.value for e in EventType},
        **{k.lower(): v.value for k, v in config.events.event_names.items()},
    }
    raw_events = text("event").str.lower()
    events = raw_events.map(event_names).where(raw_events != "", EventType.PURCHASE.value)
    unknown_event = events.isna().to_numpy() & keep
    report.add(
        name,
        rows[unknown_event],
        "event",
        "error",
        f"unknown event type (expected one of {', '.join(EVENT_CODES)})",
        raw_events[unknown_event].to_numpy(),
    )
    keep &= ~unknown_event
    is_search = (events == EventType.SEARCH.value).to_numpy()

    items = text("item_id")
    no_item = (items == "").to_numpy()
    missing_item = no_item & ~is_search & keep
    report.add(name, rows[missing_item], "item_id", "error", "missing item_id")
    keep &= ~missing_item
    item_index = item_ids.get_indexer(items.to_numpy())
    unknown_item = (item_index < 0) & ~no_item & keep
    report.add(
        name,
        rows[unknown_item],
        "item_id",
        "error",
        "item_id not in the catalogue",
        items[unknown_item].to_numpy(),
    )
    keep &= ~unknown_item

    if "timestamp" in columns:
        stamps = parse_timestamps(frame[columns["timestamp"]])
        report.add(
            name,
            rows[stamps.bad & keep],
            "timestamp",
            "error",
            "unreadable or out-of-range timestamp",
            frame[columns["timestamp"]].to_numpy()[stamps.bad & keep],
        )
        keep &= ~stamps.bad
        times = stamps.values
    else:
        times = np.full(len(frame), _NO_TIME, dtype=np.int64)

    if "value" in columns:
        value = parse_numbers(frame[columns["value"]])
        report.add(
            name,
            rows[value.bad & keep],
            "value",
            "warning",
            "value is not a number; event kept without a value",
            frame[columns["value"]].to_numpy()[value.bad & keep],
        )
        values = value.values
    else:
        values = np.full(len(frame), np.nan)
    unrated = (events == EventType.RATING.value).to_numpy() & np.isnan(values) & keep
    report.add(name, rows[unrated], "value", "error", "a rating event needs a numeric value")
    keep &= ~unrated

    queries, cleaned, _ = clean_text_column(text("query"))
    queries, masked = mask_contact_data(queries)
    report.add_fix(
        name, "query", "HTML, mojibake or control characters cleaned", int((cleaned & keep).sum())
    )
    report.add_fix(
        name, "query", "e-mail addresses or phone numbers masked", int((masked & keep).sum())
    )
    empty_search = is_search & no_item & (queries == "").to_numpy() & keep
    report.add(
        name, rows[empty_search], "query", "error", "a search event needs a query or an item"
    )
    keep &= ~empty_search

    canonical = pd.DataFrame(
        {
            "user": users,
            "item": item_index.astype(np.int32),
            "event": events.map(EVENT_CODES).fillna(-1).astype(np.int8),
            "timestamp": times,
            "query": queries,
            "value": values,
            "session": text("session_id"),
        }
    )
    # Without a timestamp two identical rows may be two real purchases: only timed rows
    # can be told to be the same event sent twice.
    duplicate = duplicates.mark(canonical, keep & (times != _NO_TIME)) & keep
    report.add(
        name,
        rows[duplicate],
        "(record)",
        "error",
        "exact duplicate of an earlier event (same user, item, type, time and fields)",
    )
    keep &= ~duplicate

    kept = canonical[keep].copy()
    kept["user"] = pseudonymiser.pseudonymise(kept["user"].to_numpy())
    kept["timestamp"] = pd.to_datetime(
        kept["timestamp"].to_numpy().astype("datetime64[ns]"), utc=True
    )
    kept["seq"] = seq_start + np.flatnonzero(keep)
    return pa.Table.from_pandas(kept, schema=EVENT_SCHEMA, preserve_index=False)
