"""Search→click pairs from the shop's own event log: the free training signal for ranking.

A search is credited with the clicks, add-to-carts and purchases its user makes within
``window`` after it, until the user searches again; a search event that names an item (a
click logged from the result list) credits that item directly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shoplm.data.schema import EVENT_CODES, EventType

_ENGAGED = [EVENT_CODES[e] for e in (EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE)]


def search_clicks(
    events: pd.DataFrame, window: pd.Timedelta = pd.Timedelta("30min")
) -> pd.DataFrame:
    """``query, item, count`` from an event table with ``user, item, event, timestamp,
    query, seq`` columns (the engine's canonical events)."""
    is_search = (events["event"] == EVENT_CODES[EventType.SEARCH]).to_numpy() & (
        events["query"].fillna("").to_numpy(dtype=object) != ""
    )
    if not is_search.any():
        return pd.DataFrame(
            {
                "query": pd.Series(dtype=str),
                "item": pd.Series(dtype=np.int64),
                "count": pd.Series(dtype=np.float64),
            }
        )
    frame = events[["user", "item", "event", "timestamp", "query", "seq"]].copy()
    frame = frame.sort_values(["user", "timestamp", "seq"], kind="stable", na_position="first")
    searched = frame["event"].eq(EVENT_CODES[EventType.SEARCH]) & frame["query"].fillna("").ne("")
    frame["last_query"] = frame["query"].where(searched)
    frame["last_time"] = frame["timestamp"].where(searched)
    filled = frame.groupby("user", sort=False)[["last_query", "last_time"]].ffill()
    engaged = frame["event"].isin(_ENGAGED) & (frame["item"] >= 0) & filled["last_query"].notna()
    recent = (frame["timestamp"] - filled["last_time"]).le(window) | frame["timestamp"].isna()
    credited = pd.DataFrame(
        {"query": filled["last_query"][engaged & recent], "item": frame["item"][engaged & recent]}
    )
    direct = frame[searched & (frame["item"] >= 0)][["query", "item"]]
    pairs = pd.concat([credited, direct], ignore_index=True)
    return (
        pairs.groupby(["query", "item"], as_index=False)
        .size()
        .rename(columns={"size": "count"})
        .astype({"count": np.float64})
    )
