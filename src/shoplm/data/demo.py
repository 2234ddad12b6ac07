"""The demo shop: the UCI Online Retail log turned into a catalogue and an event log.

UCI Online Retail (Chen, Sain & Guo, 2012; CC BY 4.0) is one real UK gift-ware shop's
transactions from 2010-12 to 2011-12. It is read from the shared data folder
(``online-retail-uci/``, see :func:`shoplm.eval.datasets.shared_data_dir`), never copied
into the repository. This module writes it out in shoplm's default column names, so the
demo goes through exactly the path a user's own files take.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: Stock codes that are charges, fees or manual adjustments, not products.
SERVICE_CODES = frozenset(
    {"POST", "DOT", "M", "m", "C2", "D", "S", "BANK CHARGES", "AMAZONFEE", "CRUK", "B"}
)


@dataclass(frozen=True)
class DemoShop:
    catalog: Path
    events: Path
    #: rows of the source log not turned into events, by reason (nothing goes uncounted)
    skipped: dict[str, int]


def write_demo_shop(out_dir: Path, source: Path | None = None) -> DemoShop:
    """Write ``catalog.parquet`` and ``events.parquet`` for the demo shop into ``out_dir``.

    ``source`` defaults to the shared data folder's copy of the log.
    """
    from shoplm.eval.datasets import online_retail_path

    log = pd.read_parquet(source or online_retail_path())
    out_dir.mkdir(parents=True, exist_ok=True)
    service = log["StockCode"].isin(SERVICE_CODES).to_numpy()
    cancelled = log["InvoiceNo"].str.startswith("C").to_numpy()
    adjustment = ~cancelled & (log["Quantity"] <= 0).to_numpy()
    usable = ~service & ~adjustment
    sales = log[usable & ~cancelled]

    catalog = _catalog(log[usable], sales)
    catalog_path = out_dir / "catalog.parquet"
    catalog.to_parquet(catalog_path, index=False)

    events_log = log[usable]
    guest = "guest-" + events_log["InvoiceNo"]
    customer = events_log["CustomerID"].astype("Int64").astype("string")
    events = pd.DataFrame(
        {
            "user_id": customer.fillna(guest),
            "item_id": events_log["StockCode"],
            "event": np.where(cancelled[usable], "return", "purchase"),
            "timestamp": events_log["InvoiceDate"].dt.tz_localize("Europe/London", ambiguous="NaT"),
            "value": events_log["Quantity"].abs().astype(np.float64),
            "session_id": events_log["InvoiceNo"],
        }
    )
    events_path = out_dir / "events.parquet"
    events.to_parquet(events_path, index=False)
    skipped = {
        "service lines (postage, fees, discounts, manual)": int(service.sum()),
        "stock adjustments (quantity <= 0, no sale)": int((adjustment & ~service).sum()),
    }
    return DemoShop(catalog_path, events_path, skipped)


def _catalog(rows: pd.DataFrame, sales: pd.DataFrame) -> pd.DataFrame:
    # Real product names are upper case; lower-case descriptions are stock notes
    # ("check", "damaged"), so the title is the most frequent upper-case one.
    named = rows[
        rows["Description"].notna() & (rows["Description"].str.upper() == rows["Description"])
    ]
    titles = (
        named.groupby(["StockCode", "Description"])
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["StockCode", "n"], ascending=[True, False])
        .drop_duplicates("StockCode")
        .set_index("StockCode")["Description"]
        .str.strip()
    )
    priced = sales[sales["UnitPrice"] > 0]
    prices = priced.groupby("StockCode")["UnitPrice"].median()
    first_seen = rows.groupby("StockCode")["InvoiceDate"].min()
    codes = first_seen.sort_values(kind="stable").index
    return pd.DataFrame(
        {
            "item_id": codes,
            "title": titles.reindex(codes).fillna("").to_numpy(),
            "price": prices.reindex(codes).round(2).to_numpy(),
            "created_at": first_seen.reindex(codes)
            .dt.tz_localize("Europe/London", ambiguous="NaT")
            .to_numpy(),
        }
    )
