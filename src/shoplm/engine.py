"""The engine: build, load and query one versioned engine directory.

This is the single facade the CLI and the service share. ``Engine.build`` validates the
inputs, writes the canonical tables and fits every component into a new version folder,
then makes it current atomically; ``Engine.load`` opens a version for queries. External
ids (the shop's item ids, the caller's user ids) are mapped at this edge only: inside,
items are row positions in ``items.parquet`` and users are keyed pseudonyms.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoplm import __version__, store
from shoplm.config import ShoplmConfig
from shoplm.data.catalog import load_catalog
from shoplm.data.events import EVENT_SCHEMA, load_events
from shoplm.data.interactions import Interactions, Sequences
from shoplm.data.privacy import PrivacyError, Pseudonymiser
from shoplm.data.report import ValidationReport
from shoplm.data.schema import EVENT_CODES, EventType
from shoplm.recommend.popularity import PopularityRecommender
from shoplm.search.lexical import LexicalRetriever

FORMAT_VERSION = 1

#: How strongly each event type says "this user wants this item". Returns and searches
#: without an item say nothing about wanting an item and are left out of interactions.
EVENT_WEIGHTS: dict[str, float] = {
    EventType.VIEW: 1.0,
    EventType.CLICK: 2.0,
    EventType.SEARCH: 2.0,  # a search event with an item is a click from a result list
    EventType.ADD_TO_CART: 3.0,
    EventType.RATING: 3.0,
    EventType.PURCHASE: 4.0,
}


class BuildError(RuntimeError):
    """The inputs hold nothing usable; the validation report says why."""


@dataclass(frozen=True)
class SearchResult:
    query: str
    items: list[str]
    scores: list[float]


@dataclass(frozen=True)
class Recommendation:
    user: str
    items: list[str]
    scores: list[float]
    reasons: list[str]


@dataclass
class BuildResult:
    path: Path
    report: ValidationReport
    manifest: dict = field(default_factory=dict)


class Engine:
    """A loaded engine version, ready to answer searches and recommendations."""

    def __init__(
        self,
        path: Path,
        manifest: dict,
        items: pd.DataFrame,
        retriever: LexicalRetriever,
        recommender: PopularityRecommender,
        history_users: pd.Index,
        histories: Sequences,
        config: ShoplmConfig,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.items = items
        self.retriever = retriever
        self.recommender = recommender
        self.history_users = history_users
        self.histories = histories
        self.config = config
        self._item_ids = items["item_id"].to_numpy(dtype=object)
        self._pseudonymiser: Pseudonymiser | None = None
        # one extra, empty row answers for every user the engine never saw
        self._histories_with_empty = Sequences(
            np.append(histories.indptr, histories.indptr[-1]), histories.items
        )

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        catalog: Path,
        out: Path,
        events: Path | None = None,
        config: ShoplmConfig | None = None,
        progress: bool = False,
    ) -> BuildResult:
        """Validate the inputs and write a new engine version under ``out``; make it current."""
        config = config or ShoplmConfig()
        pseudonymiser = Pseudonymiser.from_config(config.privacy, create=True)
        started = datetime.now(UTC)
        staging = store.start_version(Path(out))
        report = ValidationReport(
            staging / "validation" / "issues.csv", config.load.examples_per_reason
        )
        try:
            items = load_catalog(catalog, config, report, progress)
            if items.empty:
                raise BuildError(f"{catalog}: no usable item in the catalogue")
            items.to_parquet(staging / "items.parquet", index=False)
            events_path = staging / "events.parquet"
            if events is not None:
                load_events(
                    events,
                    config,
                    pd.Index(items["item_id"]),
                    pseudonymiser,
                    report,
                    events_path,
                    progress,
                )
            else:
                pq.write_table(EVENT_SCHEMA.empty_table(), events_path)
            report.close()
            report.write_json(staging / "validation" / "report.json")

            interactions, users = _interactions(pq.read_table(events_path), len(items))
            _write_histories(staging, interactions, users)
            LexicalRetriever().fit(items).save(staging / "search" / "lexical")
            PopularityRecommender().fit(interactions).save(staging / "recommend" / "popularity")

            manifest = {
                "format_version": FORMAT_VERSION,
                "shoplm_version": __version__,
                "created_at": started.isoformat(),
                "created_by": getpass.getuser(),
                "build_seconds": round((datetime.now(UTC) - started).total_seconds(), 2),
                "config": json.loads(config.model_dump_json()),
                "inputs": {
                    "catalog": _describe_input(Path(catalog)),
                    "events": _describe_input(Path(events)) if events else None,
                },
                "counts": {
                    "items": len(items),
                    "events": len(interactions),
                    "users": len(users),
                },
                "validation": {"errors": report.n_errors, "warnings": report.n_warnings},
                "pseudonym_key_fingerprint": pseudonymiser.fingerprint,
                "components": {
                    "search": ["lexical"],
                    "recommend": ["popularity"],
                },
            }
            (staging / store.MANIFEST).write_text(json.dumps(manifest, indent=2), "utf-8")
        except BaseException:
            report.close()
            store.discard_version(staging)
            raise
        version = store.commit_version(Path(out), staging)
        store.promote(Path(out), version)
        report.issues_path = version / "validation" / "issues.csv"
        return BuildResult(version, report, manifest)

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, path: Path) -> Engine:
        version = store.resolve(Path(path))
        manifest = json.loads((version / store.MANIFEST).read_text("utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise store.EngineNotFoundError(
                f"{version}: engine format {manifest.get('format_version')} is not supported "
                f"by shoplm {__version__} (expected {FORMAT_VERSION}); rebuild it"
            )
        config = ShoplmConfig.model_validate(manifest["config"])
        users = pd.read_parquet(version / "histories" / "users.parquet")["user"]
        arrays = np.load(version / "histories" / "histories.npz")
        return cls(
            path=version,
            manifest=manifest,
            items=pd.read_parquet(version / "items.parquet"),
            retriever=LexicalRetriever.load(version / "search" / "lexical"),
            recommender=PopularityRecommender.load(version / "recommend" / "popularity"),
            history_users=pd.Index(users),
            histories=Sequences(arrays["indptr"], arrays["items"]),
            config=config,
        )

    # ------------------------------------------------------------------ queries
    def search(self, queries: Sequence[str], k: int = 10) -> list[SearchResult]:
        ids, scores = self.retriever.retrieve(list(queries), k)
        return [
            SearchResult(q, *self._external(row_ids, row_scores))
            for q, row_ids, row_scores in zip(queries, ids, scores, strict=True)
        ]

    def recommend(self, users: Sequence[str], k: int = 10) -> list[Recommendation]:
        histories = self.user_histories(users)
        ids, scores = self.recommender.recommend(histories, k, exclude_seen=True)
        results = []
        for user, row_ids, row_scores in zip(users, ids, scores, strict=True):
            items, kept_scores = self._external(row_ids, row_scores)
            results.append(
                Recommendation(user, items, kept_scores, ["popular in the shop"] * len(items))
            )
        return results

    def user_histories(self, users: Sequence[str]) -> Sequences:
        """Each user's known history (empty for a user the engine never saw)."""
        keys = self.pseudonymiser.pseudonymise(np.asarray(users, dtype=object))
        rows = self.history_users.get_indexer(keys)
        return self._histories_with_empty[np.where(rows >= 0, rows, len(self.history_users))]

    @property
    def pseudonymiser(self) -> Pseudonymiser:
        if self._pseudonymiser is None:
            candidate = Pseudonymiser.from_config(self.config.privacy)
            if candidate.fingerprint != self.manifest["pseudonym_key_fingerprint"]:
                raise PrivacyError(
                    f"{self.path}: the pseudonymisation key in use is not the one this engine "
                    f"was built with (check {self.config.privacy.key_env} or "
                    f"{self.config.privacy.key_file})"
                )
            self._pseudonymiser = candidate
        return self._pseudonymiser

    def _external(self, ids: np.ndarray, scores: np.ndarray) -> tuple[list[str], list[float]]:
        valid = ids >= 0
        return self._item_ids[ids[valid]].tolist(), scores[valid].astype(float).tolist()


# ---------------------------------------------------------------------- privacy
def forget_user(root: Path, user_id: str, config: ShoplmConfig | None = None) -> int:
    """Erase a user's events from every version under ``root``; returns events removed.

    The event table and the per-user histories are rewritten (temp file + atomic rename).
    Population counts that the user contributed to hold no personal data and stay.
    """
    root = Path(root)
    targets = store.versions(root) or [store.resolve(root)]
    removed = 0
    for version in targets:
        manifest = json.loads((version / store.MANIFEST).read_text("utf-8"))
        pseudonymiser = Pseudonymiser.from_config((config or ShoplmConfig()).privacy)
        if pseudonymiser.fingerprint != manifest["pseudonym_key_fingerprint"]:
            raise PrivacyError(f"{version}: built with another pseudonymisation key")
        key = pseudonymiser.pseudonymise_one(user_id)
        events = pq.read_table(version / "events.parquet")
        mine = pc.equal(events["user"], key)
        n_mine = pc.sum(mine).as_py() or 0
        if n_mine == 0:
            continue
        kept = events.filter(pc.invert(mine))
        tmp = version / f".events-{os.getpid()}.parquet"
        pq.write_table(kept, tmp, compression="zstd")
        os.replace(tmp, version / "events.parquet")
        interactions, users = _interactions(kept, manifest["counts"]["items"])
        _write_histories(version, interactions, users)
        removed += n_mine
    return removed


# ---------------------------------------------------------------------- helpers
def _interactions(events, n_items: int) -> tuple[Interactions, np.ndarray]:
    """Interactions from the event table, plus the pseudonym of each user row."""
    frame = events.select(["user", "item", "event", "timestamp", "seq"]).to_pandas()
    code_weights = np.zeros(max(EVENT_CODES.values()) + 1, dtype=np.float32)
    for name, weight in EVENT_WEIGHTS.items():
        code_weights[EVENT_CODES[name]] = weight
    weights = code_weights[frame["event"].to_numpy()]
    useful = (weights > 0) & (frame["item"].to_numpy() >= 0)
    frame = frame[useful]
    users, user_rows = np.unique(frame["user"].to_numpy(dtype=object), return_inverse=True)
    # An event without a timestamp takes the time of the event before it in the file, so
    # it stays where the file put it.
    order = np.argsort(frame["seq"].to_numpy(), kind="stable")
    epoch = pd.Timestamp(0, tz="UTC")
    stamps = frame["timestamp"].iloc[order].ffill().fillna(epoch)
    times = np.empty(len(frame), dtype=np.int64)
    times[order] = ((stamps - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    interactions = Interactions(
        users=user_rows,
        items=frame["item"].to_numpy(),
        times=times,
        weights=weights[useful],
        n_users=len(users),
        n_items=n_items,
    )
    return interactions, users


def _write_histories(version: Path, interactions: Interactions, users: np.ndarray) -> None:
    folder = version / "histories"
    folder.mkdir(exist_ok=True)
    sequences = interactions.to_sequences()
    tmp = folder / f".histories-{os.getpid()}.npz"
    with open(tmp, "wb") as handle:
        np.savez(handle, indptr=sequences.indptr, items=sequences.items)
    pd.DataFrame({"user": users}).to_parquet(folder / f".users-{os.getpid()}.parquet")
    os.replace(tmp, folder / "histories.npz")
    os.replace(folder / f".users-{os.getpid()}.parquet", folder / "users.parquet")


def _describe_input(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
