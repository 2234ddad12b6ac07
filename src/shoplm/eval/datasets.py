"""Loaders for the public research datasets that shoplm's numbers are compared on.

The data is not shipped with the package (its licences allow research use only); it lives in a
shared folder found by :func:`shared_data_dir`. Each loader rebuilds exactly the dataset a
published paper used, with item ids numbered in order of first appearance, so that a number
computed here can sit in the same table as the paper's.
"""

from __future__ import annotations

import csv
import gzip
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoplm.data.interactions import Interactions, Sequences

SHARED_DATA_ENV = "SHOPLM_SHARED_DATA"

# name -> (folder, sequence file, item text file, read_csv options of the item text file).
# The tsv is read with QUOTE_NONE: UniSRec stripped quotes from the text, so none are syntax.
_SEQREC_FILES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "beauty": (
        "amazon-2014-5core-seqrec",
        "beauty_user_sequence.txt.gz",
        "beauty_items.csv.gz",
        {"sep": ","},
    ),
    "scientific": (
        "amazon-2018-scientific-unisrec",
        "scientific_user_sequence.txt.gz",
        "scientific_items.tsv.gz",
        {"sep": "\t", "quoting": csv.QUOTE_NONE},
    ),
}


@dataclass(frozen=True, eq=False)
class SeqRecDataset:
    """Item sequences of a public dataset plus the external ids and text behind the int ids.

    Row ``u`` of ``sequences`` belongs to ``user_ids[u]``; item ``i`` is ``item_ids[i]`` with
    text ``item_text[i]`` (``None`` where the dataset has no item text).
    """

    name: str
    sequences: Sequences
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_text: np.ndarray | None

    @property
    def n_items(self) -> int:
        return self.item_ids.size


def shared_data_dir() -> Path:
    """The folder holding the research datasets.

    ``$SHOPLM_SHARED_DATA`` if set, else ``shared/data`` next to the repository checkout
    (the layout of a development clone; an installed package has no such neighbour, so there
    the variable is required).
    """
    env = os.environ.get(SHARED_DATA_ENV)
    path = Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"research datasets not found at {path}; set {SHARED_DATA_ENV} to the folder "
            "that holds amazon-2014-5core-seqrec/, online-retail-uci/, ..."
        )
    return path


def shared_data_available() -> bool:
    """Whether :func:`shared_data_dir` resolves, for tests and benchmarks that skip without it."""
    try:
        shared_data_dir()
    except FileNotFoundError:
        return False
    return True


def load_seqrec(name: str) -> SeqRecDataset:
    """Load a sequential-recommendation benchmark: ``"beauty"`` or ``"scientific"``.

    Beauty is the SASRec / S3-Rec / TIGER 5-core set (titles as text, HTML entities such as
    ``&egrave;`` decoded); Scientific is UniSRec's (title, categories and brand as text,
    already decoded upstream, so decoding it again changes nothing).
    """
    if name not in _SEQREC_FILES:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(_SEQREC_FILES)}")
    folder, seq_file, text_file, read_options = _SEQREC_FILES[name]
    root = shared_data_dir() / folder
    user_ids, sequences, item_ids = _read_user_sequences(root / seq_file)
    text = pd.read_csv(root / text_file, keep_default_na=False, dtype=str, **read_options)
    text = text.set_index(text.columns[0])[text.columns[1]]
    aligned = text.reindex(item_ids)
    if aligned.isna().any():
        raise ValueError(f"{int(aligned.isna().sum())} items of {name!r} have no text row")
    item_text = aligned.map(html.unescape).to_numpy(dtype=object)
    return SeqRecDataset(name, sequences, user_ids, item_ids, item_text)


def _read_user_sequences(path: Path) -> tuple[np.ndarray, Sequences, np.ndarray]:
    """Parse ``user item_1 ... item_n`` lines into (user ids, sequences, item ids)."""
    lines = pd.Series(gzip.decompress(path.read_bytes()).decode().splitlines())
    tokens = lines[lines.str.strip() != ""].str.split()
    lengths = tokens.str.len().to_numpy() - 1
    flat = tokens.explode().to_numpy(dtype=object)
    starts = np.concatenate([[0], np.cumsum(lengths[:-1] + 1)])
    is_user = np.zeros(flat.size, dtype=bool)
    is_user[starts] = True
    codes, item_ids = pd.factorize(flat[~is_user])
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return flat[starts], Sequences(indptr, codes), np.asarray(item_ids, dtype=object)


def online_retail_path() -> Path:
    """UCI Online Retail (CC BY 4.0) in the shared data folder: the demo shop and OR."""
    return shared_data_dir() / "online-retail-uci" / "online_retail.parquet"


def load_online_retail_or() -> SeqRecDataset:
    """UCI Online Retail as UniSRec's "OR" dataset (16,520 users, 3,469 items, 519,906 events).

    Follows ``UniSRec/dataset/preprocessing/process_or.py``: a user is an invoice (a basket)
    and an item a stock code; rows without a description are dropped; duplicates of the
    (invoice, item, quantity, time) tuple are dropped; users and items are cut to the 5-core;
    each invoice is sorted by time. All rows of an invoice share one timestamp, so the order
    inside a basket is the file order, kept here by a stable sort. Item text is the item's
    first description in the file, lower-cased, with a final ``.``.
    """
    df = pd.read_parquet(
        online_retail_path(),
        columns=["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate"],
    )
    df = df[df["Description"].notna() & (df["Description"].str.strip() != "")]
    first_desc = df.drop_duplicates("StockCode").set_index("StockCode")["Description"]
    df = df.drop_duplicates(["InvoiceNo", "StockCode", "Quantity", "InvoiceDate"])
    df = df[_k_core(df["InvoiceNo"].to_numpy(), df["StockCode"].to_numpy(), k=5)]
    users, user_ids = pd.factorize(df["InvoiceNo"])
    items, item_ids = pd.factorize(df["StockCode"])
    seconds = df["InvoiceDate"].to_numpy().astype("datetime64[s]").astype(np.int64)
    events = Interactions(
        users=users,
        items=items,
        times=seconds,
        weights=np.ones(len(df), dtype=np.float32),
        n_users=len(user_ids),
        n_items=len(item_ids),
    )
    text = first_desc.reindex(item_ids).str.strip().str.lower() + "."
    return SeqRecDataset(
        "or",
        events.to_sequences(),
        np.asarray(user_ids, dtype=object),
        np.asarray(item_ids, dtype=object),
        text.to_numpy(dtype=object),
    )


def _k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask of the events in the k-core: every kept user and item has at least k events.

    Removing a user can push an item under k and vice versa, so counts are redone until
    nothing changes; the fixed point is the unique maximal k-core whatever the order.
    """
    u, _ = pd.factorize(users)
    i, _ = pd.factorize(items)
    keep = np.ones(u.size, dtype=bool)
    while True:
        user_counts = np.bincount(u[keep], minlength=u.max() + 1)
        item_counts = np.bincount(i[keep], minlength=i.max() + 1)
        new_keep = keep & (user_counts[u] >= k) & (item_counts[i] >= k)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def load_home_depot() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Home Depot search relevance: the catalogue and the graded judgments.

    Returns ``products`` (``item_id``, ``title``; one row per product, the row position being
    the internal item id) and ``labels`` (``query``, ``item_id``, ``relevance`` 1-3), with
    ``item_id`` the product uid as a string in both, as a shop's external id would be.
    """
    root = shared_data_dir() / "home-depot-search-relevance"
    products = pd.read_csv(root / "products.csv.gz", dtype={"product_uid": str})
    labels = pd.read_csv(root / "labels.csv.gz", dtype={"product_uid": str})
    products = products.rename(columns={"product_uid": "item_id", "product_title": "title"})
    labels = labels.rename(columns={"search_term": "query", "product_uid": "item_id"})
    return products[["item_id", "title"]], labels[["query", "item_id", "relevance"]]
