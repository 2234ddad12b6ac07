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
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shoplm import __version__, store
from shoplm.config import ShoplmConfig
from shoplm.data.catalog import load_catalog
from shoplm.data.events import EVENT_SCHEMA, load_events
from shoplm.data.interactions import Interactions, Sequences
from shoplm.data.labels import load_search_labels
from shoplm.data.privacy import PrivacyError, Pseudonymiser
from shoplm.data.report import ValidationReport
from shoplm.data.schema import EVENT_CODES, EventType
from shoplm.models.encoders import cache_dir
from shoplm.recommend.als import ALSRecommender
from shoplm.recommend.cooccurrence import CooccurrenceRecommender
from shoplm.recommend.feed import PersonalFeed, similar_items
from shoplm.recommend.popularity import PopularityRecommender
from shoplm.recommend.ranker import FeedRanker
from shoplm.recommend.tuning import (
    COOCCURRENCE_STAGES,
    GridResult,
    ValidationSplit,
    grid_search,
    last_item_split,
    tune_collaborative_weight,
)
from shoplm.search.adapt import finetune_query_encoder
from shoplm.search.logs import search_clicks
from shoplm.search.pipeline import PageRequest, SearchFilters, SearchPage, SearchPipeline

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
    #: what was asked about: the user id (recommend) or the item id (similar)
    key: str
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
        search_pipeline: SearchPipeline,
        recommender: PopularityRecommender,
        cooccurrence: CooccurrenceRecommender,
        history_users: pd.Index,
        histories: Sequences,
        config: ShoplmConfig,
        collaborative: ALSRecommender | None = None,
        ranker: FeedRanker | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.items = items
        self.search_pipeline = search_pipeline
        self.recommender = recommender
        self.cooccurrence = cooccurrence
        self.available, categories = _feed_rules(items)
        self.feed = PersonalFeed(
            cooccurrence,
            recommender,
            items["title"].to_numpy(dtype=object),
            available=self.available,
            categories=categories,
            diversity=config.recommend.diversity,
            collaborative=collaborative,
            collaborative_weight=manifest.get("feed", {}).get("collaborative_weight", 0.0),
            ranker=ranker,
        )
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
        search_labels: Path | None = None,
        promote: bool = True,
    ) -> BuildResult:
        """Validate the inputs and write a new engine version under ``out``; make it current
        unless ``promote`` is False (the deploy pipeline gates a candidate first)."""
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
            labels = (
                load_search_labels(
                    search_labels, pd.Index(items["item_id"]), report, config.load.chunk_rows
                )
                if search_labels is not None
                else None
            )
            report.close()
            report.write_json(staging / "validation" / "report.json")

            event_table = pq.read_table(events_path)
            interactions, users = _interactions(event_table, len(items))
            _write_histories(staging, interactions, users)
            search, adaptation = _fit_search(
                items, event_table, interactions, labels, config, staging, progress
            )
            search.save(staging / "search")
            PopularityRecommender().fit(interactions).save(staging / "recommend" / "popularity")
            split = (
                last_item_split(
                    interactions, config.recommend.tune_users, seed=config.recommend.seed
                )
                if config.recommend.tune
                else None
            )
            cooccurrence_params, tuning = _tune_cooccurrence(split, config)
            CooccurrenceRecommender(**cooccurrence_params).fit(interactions).save(
                staging / "recommend" / "cooccurrence"
            )
            feed_weight, tuning["collaborative"] = _tune_collaborative(
                split, cooccurrence_params, config
            )
            if feed_weight > 0:
                als = _collaborative_model(config.recommend.seed).fit(interactions)
                als.save(staging / "recommend" / "als")
            ranker, ranker_record = _train_ranker(
                interactions, items, cooccurrence_params, feed_weight, config
            )
            if ranker is not None:
                ranker.save(staging / "recommend" / "ranker")

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
                    "search_labels": (
                        _describe_input(Path(search_labels)) if search_labels else None
                    ),
                },
                "counts": {
                    "items": len(items),
                    "events": len(interactions),
                    "users": len(users),
                },
                "validation": {"errors": report.n_errors, "warnings": report.n_warnings},
                "pseudonym_key_fingerprint": pseudonymiser.fingerprint,
                "files": _model_digests(staging),
                "components": {
                    "search": _search_stages(search),
                    "recommend": ["cooccurrence", "popularity"]
                    + (["als"] if feed_weight > 0 else [])
                    + (["ranker"] if ranker is not None else []),
                },
                "feed": {"collaborative_weight": feed_weight, "ranker": ranker is not None},
                "finetune": adaptation,
                "tuning": tuning,
                "ranker": ranker_record,
            }
            (staging / store.MANIFEST).write_text(json.dumps(manifest, indent=2), "utf-8")
        except BaseException:
            report.close()
            store.discard_version(staging)
            raise
        version = store.commit_version(Path(out), staging)
        if promote:
            store.promote(Path(out), version)
        report.issues_path = version / "validation" / "issues.csv"
        return BuildResult(version, report, manifest)

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, path: Path) -> Engine:
        """Open the version at ``path`` (a version folder, or a root and its ``current``).

        Every file is checked before anything is used (see :meth:`check_files`), so a
        damaged or foreign engine directory is refused with a message naming the file
        (as :class:`store.EngineNotFoundError`) instead of failing on some later query.
        """
        version = store.resolve(Path(path))
        manifest = cls.check_files(version)
        part = version / store.MANIFEST
        try:
            config = ShoplmConfig.model_validate(manifest["config"])
            part = version / "histories" / "users.parquet"
            users = pd.read_parquet(part)["user"]
            part = version / "histories" / "histories.npz"
            with np.load(part) as arrays:
                histories = Sequences(arrays["indptr"], arrays["items"])
            part = version / "items.parquet"
            items = pd.read_parquet(part)
            part = version / "search"
            search_pipeline = SearchPipeline.load(part)
            part = version / "recommend" / "popularity"
            recommender = PopularityRecommender.load(part)
            part = version / "recommend" / "cooccurrence"
            cooccurrence = CooccurrenceRecommender.load(part)
            part = version / "recommend" / "als"
            collaborative = ALSRecommender.load(part) if part.exists() else None
            part = version / "recommend" / "ranker"
            ranker = FeedRanker.load(part) if part.exists() else None
        except Exception as exc:
            named = getattr(exc, "filename", None) or part
            raise store.EngineNotFoundError(f"{named}: cannot be loaded ({exc})") from exc
        return cls(
            path=version,
            manifest=manifest,
            items=items,
            search_pipeline=search_pipeline,
            recommender=recommender,
            cooccurrence=cooccurrence,
            history_users=pd.Index(users),
            histories=histories,
            config=config,
            collaborative=collaborative,
            ranker=ranker,
        )

    @staticmethod
    def check_files(version: Path) -> dict:
        """The manifest of ``version``, once every file of the version has been checked.

        Refused, with :class:`store.EngineNotFoundError` naming the file: a manifest that is
        not JSON or of another format version, a file the manifest lists with a SHA-256
        (``files``: path -> digest) that is missing or differs, and any Parquet, ``.npz`` or
        JSON file that cannot be read (a truncated copy, a disk error). Reading footers and
        zip directories costs milliseconds; digests are read in full (about 0.3 s per 100 MB).
        """
        manifest_path = version / store.MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise store.EngineNotFoundError(
                f"{manifest_path}: unreadable manifest ({exc})"
            ) from exc
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            found = manifest.get("format_version") if isinstance(manifest, dict) else None
            raise store.EngineNotFoundError(
                f"{manifest_path}: engine format {found} is not supported by shoplm "
                f"{__version__} (expected {FORMAT_VERSION}); rebuild it"
            )
        for name, expected in (manifest.get("files") or {}).items():
            listed = version / name
            if not listed.is_file():
                raise store.EngineNotFoundError(f"{listed}: missing (listed in {manifest_path})")
            if _sha256(listed) != expected:
                raise store.EngineNotFoundError(
                    f"{listed}: SHA-256 differs from {manifest_path} (changed or corrupt)"
                )
        for file in sorted(p for p in version.rglob("*") if p.is_file() and p != manifest_path):
            try:
                if file.suffix == ".parquet":
                    pq.read_metadata(file)
                elif file.suffix == ".npz":
                    with zipfile.ZipFile(file) as archive:
                        broken = archive.testzip()
                    if broken is not None:
                        raise ValueError(f"member {broken} fails its CRC check")
                elif file.suffix == ".json":
                    json.loads(file.read_text("utf-8"))
            except Exception as exc:
                raise store.EngineNotFoundError(f"{file}: corrupt ({exc})") from exc
        return manifest

    # ------------------------------------------------------------------ queries
    def search(self, queries: Sequence[str], k: int = 10) -> list[SearchResult]:
        ids, scores = self.search_pipeline.retrieve(list(queries), k)
        return [
            SearchResult(q, *self._external(row_ids, row_scores))
            for q, row_ids, row_scores in zip(queries, ids, scores, strict=True)
        ]

    def search_page(
        self, query: str, k: int = 10, offset: int = 0, filters: SearchFilters | None = None
    ) -> SearchPage:
        """One page of results with facets, for the storefront and the HTTP API."""
        return self.search_pipeline.search(query, k, offset, filters)

    def search_pages(self, requests: Sequence[PageRequest]) -> list[SearchPage]:
        """Pages for several queries at once, ranked in shared batches (the service's)."""
        return self.search_pipeline.search_many(requests)

    def item_ids(self, ids: np.ndarray) -> list[str]:
        """The shop's own ids of internal item ids."""
        return self._item_ids[ids].tolist()

    def recommend(self, users: Sequence[str], k: int = 10) -> list[Recommendation]:
        return self.recommend_histories(users, self.user_histories(users), k)

    def recommend_histories(
        self, users: Sequence[str], histories: Sequences, k: int = 10
    ) -> list[Recommendation]:
        """Recommendations for given histories (the service adds the live session's items)."""
        ids, scores, reasons = self.feed.recommend(histories, k)
        results = []
        for user, row_ids, row_scores, why in zip(users, ids, scores, reasons, strict=True):
            items, kept_scores = self._external(row_ids, row_scores)
            results.append(Recommendation(user, items, kept_scores, why))
        return results

    def similar(self, items: Sequence[str], k: int = 10) -> list[Recommendation]:
        """Items to show next to each item (bought together, similar text, popular).

        An item id the engine does not know gets popular items, never an error.
        """
        internal = pd.Index(self._item_ids).get_indexer(list(items))
        dense = self.search_pipeline.hybrid_.dense_ if self.search_pipeline.hybrid_ else None
        vectors = dense.vectors_[dense.encoders_[0]] if dense is not None else None
        ids, scores, reasons = similar_items(
            self.cooccurrence, self.recommender, vectors, internal, k, self.available
        )
        return [
            Recommendation(item, *self._external(row_ids, row_scores), why)
            for item, row_ids, row_scores, why in zip(items, ids, scores, reasons, strict=True)
        ]

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
def _fit_search(
    items: pd.DataFrame,
    events: pa.Table,
    interactions: Interactions,
    labels: pd.DataFrame | None,
    config: ShoplmConfig,
    version: Path,
    progress: bool,
) -> tuple[SearchPipeline, dict[str, object] | None]:
    """The search pipeline, with a query encoder fine-tuned on the shop when configured."""
    settings = config.search
    encoder, adaptation = settings.encoder, None
    if settings.finetune and settings.dense:
        folder, adaptation = finetune_query_encoder(
            items,
            labels,
            version,
            cache_dir() / "vectors",
            settings.finetune_minutes,
            seed=config.recommend.seed,
            progress=progress,
        )
        encoder = str(folder)
    item_events = pd.DataFrame(
        {
            "item": interactions.items,
            "weight": interactions.weights,
            "purchase": (interactions.weights == EVENT_WEIGHTS[EventType.PURCHASE]).astype(
                np.float32
            ),
        }
    )
    # only the events of users who searched can be credited to a search
    searchers = pc.unique(events.filter(pc.equal(events["event"], EVENT_CODES["search"]))["user"])
    clicks = search_clicks(
        events.filter(pc.is_in(events["user"], value_set=searchers))
        .select(["user", "item", "event", "timestamp", "query", "seq"])
        .to_pandas()
    )
    pipeline = SearchPipeline(
        depth=settings.depth,
        dense=settings.dense,
        encoder=encoder,
        spelling=settings.spelling,
        learn_to_rank=settings.learn_to_rank,
        vector_cache=cache_dir() / "vectors",
    ).fit(items, labels, item_events, clicks)
    return pipeline, adaptation


def _tune_cooccurrence(
    split: ValidationSplit | None, config: ShoplmConfig
) -> tuple[dict[str, object], dict[str, object]]:
    """Co-occurrence parameters chosen on the log's own held-out last items."""
    if split is None:
        return {}, {"cooccurrence": {"params": {}, "skipped": _no_tuning(config)}}
    result = grid_search(
        lambda params: CooccurrenceRecommender(**params),
        COOCCURRENCE_STAGES,
        split,
        max_seconds=config.recommend.tune_seconds,
    )
    return result.params, {"cooccurrence": _tuning_record(result)}


def _collaborative_model(seed: int) -> ALSRecommender:
    return ALSRecommender(factors=128, regularization=10.0, alpha=50.0, random_state=seed)


def _tune_collaborative(
    split: ValidationSplit | None, cooccurrence_params: dict[str, object], config: ShoplmConfig
) -> tuple[float, dict[str, object]]:
    """The share of ALS in the feed (0 leaves it out of the engine), on held-out items."""
    if split is None or not config.recommend.collaborative:
        reason = _no_tuning(config) if split is None else "off in config"
        return 0.0, {"params": {"collaborative_weight": 0.0}, "skipped": reason}
    result = tune_collaborative_weight(
        split,
        CooccurrenceRecommender(**cooccurrence_params),  # type: ignore[arg-type]
        _collaborative_model(config.recommend.seed),
        max_seconds=config.recommend.tune_seconds,
    )
    return float(result.params["collaborative_weight"]), _tuning_record(result)


def _train_ranker(
    interactions: Interactions,
    items: pd.DataFrame,
    cooccurrence_params: dict[str, object],
    feed_weight: float,
    config: ShoplmConfig,
) -> tuple[FeedRanker | None, dict[str, object]]:
    """The feed's learned ranker, trained on held-out items with the sources refitted as
    the build chose them; None (and why) when off, impossible, or no better than the blend
    on its validation users."""
    settings = config.recommend
    if not settings.ranker:
        return None, {"skipped": "off in config"}
    available, categories = _feed_rules(items)
    titles = np.zeros(len(items), dtype=object)  # reasons are never asked for in training

    def make_feed(events: Interactions) -> PersonalFeed:
        als = _collaborative_model(settings.seed).fit(events) if feed_weight > 0 else None
        return PersonalFeed(
            CooccurrenceRecommender(**cooccurrence_params).fit(events),  # type: ignore[arg-type]
            PopularityRecommender().fit(events),
            titles,
            available=available,
            categories=categories,
            collaborative=als,
            collaborative_weight=feed_weight,
        )

    ranker = FeedRanker(
        n_candidates=settings.ranker_candidates,
        objective=settings.ranker_objective,
        folds=settings.ranker_folds,
        max_users=settings.ranker_users,
        seed=settings.seed,
    )
    try:
        ranker.fit(interactions, make_feed)
    except ValueError as exc:  # too few users or held-out items to learn from
        return None, {"skipped": str(exc)}
    record: dict[str, object] = dict(ranker.report_)
    if not ranker.report_["beats_blend"]:
        record["skipped"] = "not better than the blend on its validation users at every fold"
        return None, record
    return ranker, record


def _feed_rules(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each item's availability and category code (-1: none), as the feed applies them."""
    # engines built before the field existed have every item available
    available = (
        items["available"].to_numpy(dtype=bool)
        if "available" in items
        else np.ones(len(items), dtype=bool)
    )
    return available, pd.factorize(items["category"].replace("", None))[0]


def _no_tuning(config: ShoplmConfig) -> str:
    return "off in config" if not config.recommend.tune else "fewer than 50 users with 2+ items"


def _tuning_record(result: GridResult) -> dict[str, object]:
    return {
        "params": result.params,
        "metric": "ndcg@10 on each user's held-out last item",
        "validation_users": result.n_validation_users,
        "seconds": round(result.seconds, 1),
        "stopped_early": result.stopped_early,
        "trials": result.trials,
    }


def _search_stages(search: SearchPipeline) -> list[str]:
    stages = ["query-parser", "lexical"]
    if search.hybrid_ is not None:
        stages += ["dense", f"fusion({search.hybrid_.method}, w={search.hybrid_.weight})"]
    if search.ranker_ is not None:
        stages.append("lambdamart")
    return stages


def _interactions(events: pa.Table, n_items: int) -> tuple[Interactions, np.ndarray]:
    """Interactions from the event table, plus the pseudonym of each user row.

    Works on Arrow columns (users dictionary-encoded), so a large log never becomes a
    column of Python strings.
    """
    code_weights = np.zeros(max(EVENT_CODES.values()) + 1, dtype=np.float32)
    for name, weight in EVENT_WEIGHTS.items():
        code_weights[EVENT_CODES[name]] = weight
    weights = code_weights[events["event"].to_numpy()]
    useful = (weights > 0) & (events["item"].to_numpy() >= 0)
    table = events.select(["user", "item", "timestamp", "seq"]).filter(pa.array(useful))
    encoded = pc.dictionary_encode(table["user"]).combine_chunks()
    users = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
    # An event without a timestamp takes the time of the event before it in the file, so
    # it stays where the file put it.
    order = np.argsort(table["seq"].to_numpy(), kind="stable")
    stamps = pd.Series(
        table["timestamp"].cast(pa.int64()).to_numpy(zero_copy_only=False)[order], dtype="Int64"
    )
    seconds = (stamps.ffill().fillna(0).to_numpy(dtype=np.int64)) // 1_000_000_000
    times = np.empty(len(order), dtype=np.int64)
    times[order] = seconds
    interactions = Interactions(
        users=encoded.indices.to_numpy(),
        items=table["item"].to_numpy(),
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


#: rewritten in place by ``forget_user`` (an erasure), so not pinned by a digest
_MUTABLE_PARTS = ("events.parquet", "histories", "validation")


def _model_digests(version: Path) -> dict[str, str]:
    """SHA-256 of every model file, so a damaged or swapped file is refused at load."""
    digests = {}
    for path in sorted(version.rglob("*")):
        relative = path.relative_to(version)
        if path.is_file() and relative.parts[0] not in _MUTABLE_PARTS:
            digests[relative.as_posix()] = _sha256(path)
    return digests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_input(path: Path) -> dict:
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": _sha256(path)}
