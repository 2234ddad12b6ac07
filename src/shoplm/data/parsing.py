"""Vectorised parsers for the typed fields: timestamps, prices and other numbers.

Each parser takes a raw column (strings from CSV/JSONL, or typed values from Parquet) and
returns the parsed values with masks of missing and unparseable entries, so the caller can
decide what a bad value means for its row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

_EARLIEST = pd.Timestamp("1971-01-01", tz="UTC")
#: far past any real event, well inside what nanosecond timestamps hold (up to 2262)
_LATEST = pd.Timestamp("2200-01-01", tz="UTC")
_CURRENCY = re.compile(r"[\s$€£¥₹]|[A-Za-z]{3}$|^[A-Za-z]{3}|元")
_THOUSANDS = re.compile(r",(?=\d{3}(?:\D|$))")


@dataclass(frozen=True)
class Parsed:
    values: np.ndarray
    missing: np.ndarray  # empty in the input
    bad: np.ndarray  # present but unparseable or out of range


def _blank(values: pd.Series) -> np.ndarray:
    if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
        return values.isna().to_numpy() | (values.astype("string").str.strip() == "").to_numpy(
            dtype=bool, na_value=True
        )
    return values.isna().to_numpy()


def parse_numbers(values: pd.Series, strip_currency: bool = False) -> Parsed:
    """Floats; with ``strip_currency``, '$1,299.00' and '£3.50' parse as prices."""
    missing = _blank(values)
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = values.astype("string").str.strip()
        if strip_currency:
            text = text.str.replace(_CURRENCY, "", regex=True).str.replace(
                _THOUSANDS, "", regex=True
            )
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~missing & ~np.isfinite(numbers)
    return Parsed(np.where(bad | missing, np.nan, numbers), missing, bad)


_TRUE = frozenset({"true", "yes", "y", "1", "t", "in stock", "available"})
_FALSE = frozenset({"false", "no", "n", "0", "f", "out of stock", "unavailable", "hidden"})


def parse_flags(values: pd.Series) -> Parsed:
    """Booleans from true/false, yes/no, 1/0 (any case) or typed booleans; values are bool."""
    missing = _blank(values)
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~missing & ~np.isin(numbers, (0.0, 1.0))
        return Parsed(numbers == 1.0, missing, bad)
    text = values.astype("string").str.strip().str.lower()
    truthy = text.isin(_TRUE).to_numpy(dtype=bool)
    falsy = text.isin(_FALSE).to_numpy(dtype=bool)
    return Parsed(truthy, missing, ~missing & ~truthy & ~falsy)


def parse_timestamps(values: pd.Series, now: pd.Timestamp | None = None) -> Parsed:
    """UTC timestamps as int64 nanoseconds (missing or bad: the int64 minimum, NaT).

    Accepts datetimes, ISO 8601 strings, other common date formats, and epoch numbers in
    seconds, milliseconds, microseconds or nanoseconds (told apart by magnitude).
    Anything before 1971 or more than a day in the future is out of range: that is nearly
    always a unit mistake or a placeholder value, not a real event time.
    """
    now = now or pd.Timestamp.now(tz="UTC")
    missing = _blank(values)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        stamps = pd.to_datetime(values, utc=True)
    else:
        # ISO 8601 first (the common case, and "20240101" is a date, not an epoch), then
        # epoch numbers, then any other date format, each on what is still unparsed.
        stamps = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
        todo = ~missing
        text = values[todo].astype(str).str.strip()
        stamps[todo] = _in_range(pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601"))
        todo &= stamps.isna().to_numpy()
        if todo.any():
            numbers = parse_numbers(values[todo]).values
            is_number = np.isfinite(numbers)
            rows = np.flatnonzero(todo)[is_number]
            stamps.iloc[rows] = _from_epoch(numbers[is_number])
            todo[rows] = False
        if todo.any():
            stamps[todo] = _in_range(
                pd.to_datetime(
                    values[todo].astype(str).str.strip(), utc=True, errors="coerce", format="mixed"
                )
            )
    stamps = stamps.astype("datetime64[ns, UTC]")
    out_of_range = ((stamps < _EARLIEST) | (stamps > now + pd.Timedelta(days=1))).to_numpy(
        dtype=bool, na_value=False
    )
    bad = ~missing & (stamps.isna().to_numpy() | out_of_range)
    ns = stamps.to_numpy(dtype="datetime64[ns]").view(np.int64).copy()
    ns[bad | missing] = np.iinfo(np.int64).min
    return Parsed(ns, missing, bad)


def _in_range(stamps: pd.Series) -> pd.Series:
    """Nanosecond stamps; a date outside 1971-2200 (pandas may parse year 2999 at a coarser
    unit) becomes NaT, which the caller reports as unreadable or out of range."""
    inside = ((stamps >= _EARLIEST) & (stamps <= _LATEST)).fillna(False)
    return stamps.where(inside).astype("datetime64[ns, UTC]")


def _from_epoch(numbers: np.ndarray) -> pd.DatetimeIndex:
    magnitude = np.abs(numbers)
    scale = np.select(
        [magnitude < 1e11, magnitude < 1e14, magnitude < 1e17], [1e9, 1e6, 1e3], default=1.0
    )
    with np.errstate(invalid="ignore", over="ignore"):
        ns = numbers * scale
    ns = np.where(np.abs(ns) < 9.2e18, ns, np.nan)
    return pd.to_datetime(ns, utc=True, unit="ns", errors="coerce")
