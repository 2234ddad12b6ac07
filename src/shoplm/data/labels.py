"""Judged search labels (``query, item_id, relevance``) for training the search ranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.data.mapping import resolve_columns
from shoplm.data.parsing import parse_numbers
from shoplm.data.readers import read_chunks
from shoplm.data.report import ValidationReport

LABEL_FIELDS = {
    "query": "the search text",
    "item_id": "a catalogue item id",
    "relevance": "a grade; higher is more relevant",
}


def load_search_labels(
    path: Path, item_ids: pd.Index, report: ValidationReport, chunk_rows: int = 200_000
) -> pd.DataFrame:
    """``query, item, gain`` rows, every rejected row reported.

    Gains start at 0 for "not relevant": on a scale whose lowest grade is 1 or more (1-3
    as in Home Depot's labels, 1-5 stars) the lowest grade is subtracted; a scale that
    already starts at 0 is kept as it is.
    """
    path = Path(path)
    name = str(path)
    stats = report.stats(name)
    parts = []
    for chunk in read_chunks(path, chunk_rows):
        stats.rows_read += len(chunk.frame) + len(chunk.problems)
        for problem in chunk.problems:
            report.add(name, np.array([problem.row]), "(record)", "error", problem.reason)
        if chunk.frame.empty:
            continue
        columns = resolve_columns(path, chunk.frame.columns, {}, LABEL_FIELDS, list(LABEL_FIELDS))
        frame, rows = chunk.frame, chunk.rows
        query = frame[columns["query"]].astype("string").str.strip().fillna("")
        items = item_ids.get_indexer(frame[columns["item_id"]].astype(str).str.strip())
        relevance = parse_numbers(frame[columns["relevance"]])
        empty = (query == "").to_numpy(dtype=bool)
        report.add(name, rows[empty], "query", "error", "missing query")
        unknown = (items < 0) & ~empty
        report.add(
            name,
            rows[unknown],
            "item_id",
            "error",
            "item_id not in the catalogue",
            frame[columns["item_id"]].to_numpy()[unknown],
        )
        bad = (relevance.bad | relevance.missing | (relevance.values < 0)) & ~empty & ~unknown
        report.add(
            name,
            rows[bad],
            "relevance",
            "error",
            "relevance must be a number >= 0",
            frame[columns["relevance"]].to_numpy()[bad],
        )
        keep = ~(empty | unknown | bad)
        parts.append(
            pd.DataFrame(
                {
                    "query": query[keep].to_numpy(dtype=object),
                    "item": items[keep],
                    "relevance": relevance.values[keep],
                }
            )
        )
        stats.rows_kept += int(keep.sum())
    stats.rows_rejected = stats.rows_read - stats.rows_kept
    labels = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame({"query": [], "item": [], "relevance": []})
    )
    floor = labels["relevance"].min() if len(labels) else 0.0
    labels["gain"] = labels["relevance"] - (floor if floor >= 1 else 0.0)
    return labels.drop(columns="relevance")
