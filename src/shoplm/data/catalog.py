"""Load a product catalogue into the canonical item table, reporting every problem.

The result has one row per distinct item id, in file order, with the columns of
:data:`shoplm.data.schema.ITEM_FIELDS`; its row position is the internal item id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.config import ShoplmConfig
from shoplm.data.clean import clean_text_column
from shoplm.data.mapping import resolve_columns
from shoplm.data.parsing import parse_flags, parse_numbers, parse_timestamps
from shoplm.data.readers import Chunk, read_chunks
from shoplm.data.report import ValidationReport
from shoplm.data.schema import ITEM_FIELDS, ITEM_TEXT_FIELDS

ITEM_COLUMNS = list(ITEM_FIELDS)


def load_catalog(
    path: Path, config: ShoplmConfig, report: ValidationReport, progress: bool = False
) -> pd.DataFrame:
    """Read, validate and clean the catalogue at ``path``."""
    path = Path(path)
    name = str(path)
    stats = report.stats(name)
    first_row: dict[str, int] = {}
    parts: list[pd.DataFrame] = []
    for chunk in read_chunks(path, config.load.chunk_rows, progress):
        stats.rows_read += len(chunk.frame) + len(chunk.problems)
        _report_parse_problems(report, name, chunk)
        if chunk.frame.empty:
            continue
        part = _normalise_items(path, chunk, config, report, first_row)
        stats.rows_kept += len(part)
        parts.append(part)
    stats.rows_rejected = stats.rows_read - stats.rows_kept
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ITEM_COLUMNS})
    items = pd.concat(parts, ignore_index=True)
    items["price"] = items["price"].astype(np.float64)
    return items


def _report_parse_problems(report: ValidationReport, name: str, chunk: Chunk) -> None:
    for problem in chunk.problems:
        report.add(name, np.array([problem.row]), "(record)", "error", problem.reason)


def _normalise_items(
    path: Path,
    chunk: Chunk,
    config: ShoplmConfig,
    report: ValidationReport,
    first_row: dict[str, int],
) -> pd.DataFrame:
    name = str(path)
    frame, rows = chunk.frame, chunk.rows
    columns = resolve_columns(
        path, frame.columns, config.catalog.columns, ITEM_FIELDS, required=["item_id"]
    )
    out = pd.DataFrame(index=frame.index)
    ids = frame[columns["item_id"]].astype("string").str.strip().fillna("")
    keep = np.array(ids != "", dtype=bool)
    report.add(name, rows[~keep], "item_id", "error", "missing item_id")

    # Duplicates: the first row of an id wins; later rows are rejected and point back to it.
    duplicate = keep & (ids.duplicated() | ids.isin(first_row.keys())).to_numpy()
    keep &= ~duplicate
    first_row.update(zip(ids[keep], rows[keep].tolist(), strict=True))
    report.add(
        name,
        rows[duplicate],
        "item_id",
        "error",
        "duplicate item_id (the first row with this id is kept)",
        np.array([f"{i} (first at row {first_row[i]})" for i in ids[duplicate]], dtype=object),
    )
    out["item_id"] = ids

    for field in (*ITEM_TEXT_FIELDS, "image"):
        if field not in columns:
            out[field] = ""
            continue
        text, changed, broken = clean_text_column(frame[columns[field]])
        out[field] = text
        report.add_fix(
            name, field, "HTML, mojibake or control characters cleaned", int((changed & keep).sum())
        )
        report.add(
            name,
            rows[broken & keep],
            field,
            "warning",
            "text holds bytes that are not valid UTF-8 (shown as \ufffd)",
        )

    out["price"] = np.nan
    if "price" in columns:
        price = parse_numbers(frame[columns["price"]], strip_currency=True)
        negative = price.values < 0
        report.add(
            name,
            rows[price.bad & keep],
            "price",
            "warning",
            "price is not a number; item kept without a price",
            frame[columns["price"]].to_numpy()[price.bad & keep],
        )
        report.add(
            name,
            rows[negative & keep],
            "price",
            "warning",
            "negative price; item kept without a price",
            price.values[negative & keep],
        )
        out["price"] = np.where(negative, np.nan, price.values)

    out["created_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    if "created_at" in columns:
        stamps = parse_timestamps(frame[columns["created_at"]])
        report.add(
            name,
            rows[stamps.bad & keep],
            "created_at",
            "warning",
            "unreadable or out-of-range time; item kept without it",
            frame[columns["created_at"]].to_numpy()[stamps.bad & keep],
        )
        out["created_at"] = pd.to_datetime(
            np.where(stamps.bad | stamps.missing, np.iinfo(np.int64).min, stamps.values).astype(
                "datetime64[ns]"
            ),
            utc=True,
        )

    out["available"] = True
    if "available" in columns:
        flags = parse_flags(frame[columns["available"]])
        report.add(
            name,
            rows[flags.bad & keep],
            "available",
            "warning",
            "not true/false, yes/no or 1/0; item kept as available",
            frame[columns["available"]].to_numpy()[flags.bad & keep],
        )
        out["available"] = flags.values | flags.missing | flags.bad

    extra = [c for c in frame.columns if c not in columns.values()]
    out["attributes"] = _attributes(
        name, frame, columns.get("attributes"), extra, rows, keep, report
    )
    return out.loc[keep, ITEM_COLUMNS].reset_index(drop=True)


def _attributes(
    name: str,
    frame: pd.DataFrame,
    attributes_column: str | None,
    extra: list[str],
    rows: np.ndarray,
    keep: np.ndarray,
    report: ValidationReport,
) -> pd.Series:
    """A JSON object per row: the ``attributes`` column merged with every unmapped column,
    so no input field is lost."""
    if attributes_column is None and not extra:
        return pd.Series("{}", index=frame.index, dtype=object)
    merged: list[dict] = [{} for _ in range(len(frame))]
    if attributes_column is not None:
        raw = frame[attributes_column].to_numpy(dtype=object)
        bad = np.zeros(len(frame), dtype=bool)
        for i, value in enumerate(raw):
            if isinstance(value, dict):
                merged[i] = dict(value)
            elif isinstance(value, str) and value.strip():
                try:
                    parsed = json.loads(value)
                except json.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    merged[i] = parsed
                else:
                    merged[i] = {"attributes": value}
                    bad[i] = True
        report.add(
            name,
            rows[bad & keep],
            "attributes",
            "warning",
            "attributes is not a JSON object; kept as the text under 'attributes'",
        )
    for column in extra:
        values = frame[column].to_numpy(dtype=object)
        present = ~pd.isna(values) & (values != "")
        for i in np.flatnonzero(present):
            merged[i][column] = values[i]
    return pd.Series(
        [json.dumps(m, ensure_ascii=False, default=str) for m in merged],
        index=frame.index,
        dtype=object,
    )
