"""A loaded engine plus everything that happened since it was built.

The engine answers from its build; this layer folds in the event log (recent items per
user), catalogue edits (new items searchable, deleted items hidden) and erasures, so the
HTTP routes stay thin and every answer reflects each acknowledged write.

The engine and the state built on it (live catalogue, sessions) form one :class:`_Served`
snapshot. A reader takes the snapshot once and answers from it alone, so a reload, which
replaces the snapshot by a single assignment, never mixes two engine versions in one
answer.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.data.interactions import Sequences
from shoplm.engine import Engine, forget_user
from shoplm.realtime.counts import LiveCooccurrence
from shoplm.realtime.event_log import EventLog
from shoplm.realtime.intake import CheckedEvents, EventValidator
from shoplm.realtime.items import LiveCatalog
from shoplm.realtime.sessions import SessionStore
from shoplm.recommend.feed import PersonalFeed
from shoplm.search.pipeline import PageRequest, SearchFilters, SearchPage

_NO_HISTORY = np.zeros(0, dtype=np.int64)
LOGGER = logging.getLogger("shoplm.serve")
_VERSION = re.compile(r"^v\d{4,}$")

#: Pipeline settings an experiment variant may change, with the check each value must pass.
#: They are the personal feed's re-ranking knobs: they apply to an engine as loaded, with no
#: rebuild, so a variant costs no memory beyond a copy of the feed object.
FEED_SETTINGS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "recommend.diversity": ("a number in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "recommend.collaborative_weight": ("a number >= 0", lambda v: v >= 0.0),
}


@dataclass(frozen=True)
class ArmSpec:
    """What one variant (or a combination of variants of several experiments) serves.

    ``engine`` names an engine version folder next to the served one (``None``: whatever
    version is being served); ``settings`` are :data:`FEED_SETTINGS` overrides, sorted by
    name so equal specs compare equal.
    """

    engine: str | None = None
    settings: tuple[tuple[str, float], ...] = ()

    @classmethod
    def make(cls, engine: str | None, settings: Mapping[str, object], where: str) -> ArmSpec:
        """A checked spec; ``where`` names the config entry in error messages."""
        checked = []
        for name, value in sorted(settings.items()):
            if name not in FEED_SETTINGS:
                raise ValueError(
                    f"{where}.settings.{name}: not a setting the service can vary; "
                    f"supported: {sorted(FEED_SETTINGS)}"
                )
            rule, ok = FEED_SETTINGS[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
                raise ValueError(f"{where}.settings.{name}: must be {rule}, got {value!r}")
            checked.append((name, float(value)))
        if engine is not None and not _VERSION.match(engine):
            raise ValueError(f"{where}.engine: {engine!r} is not a version folder name")
        return cls(engine, tuple(checked))

    @property
    def is_default(self) -> bool:
        return self.engine is None and not self.settings


@dataclass(frozen=True)
class _Arm:
    """A spec made real on one snapshot: its engine and feed, and how its item rows map to
    the live catalogue's (``None`` when the arm's engine is the served one)."""

    engine: Engine
    feed: PersonalFeed
    #: live catalogue row -> the arm engine's item row (-1: the arm's engine lacks it)
    to_arm: np.ndarray | None = None
    #: the arm engine's item row -> live catalogue row (-1: no longer in the catalogue)
    from_arm: np.ndarray | None = None
    #: the arm engine's items missing from the live catalogue (asked for on top of ``k``)
    n_unlisted: int = 0


class EventsRejected(ValueError):
    """Posted events that break the event rules; ``problems`` name each row and field."""

    def __init__(self, problems: list[dict[str, object]]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the posted events")
        self.problems = problems


@dataclass(frozen=True)
class SearchRequest:
    """One search call of the service: a page of one query under filters, maybe for an arm."""

    query: str
    k: int
    offset: int
    filters: SearchFilters
    arm: ArmSpec | None = None


@dataclass(frozen=True)
class FeedRequest:
    """One recommendation call: ``key`` is the user's pseudonym when the caller has it."""

    user: str
    k: int
    arm: ArmSpec | None = None
    key: str | None = None


@dataclass
class Ranked:
    """One answer: the shop's item ids, their titles and scores, resolved in one snapshot."""

    ids: list[str]
    titles: list[str]
    scores: list[float]
    total: int = 0
    suggestion: str | None = None
    facets: dict[str, dict[str, int]] | None = None
    applied: dict[str, object] | None = None
    #: one reason per item, for recommendations
    reasons: list[str] | None = None


@dataclass(frozen=True)
class _Served:
    """One engine version and the live state built on it; replaced whole by a reload."""

    engine: Engine
    catalog: LiveCatalog
    sessions: SessionStore
    validator: EventValidator
    #: stored events folded into the engine's co-occurrence counts every second or so
    counts: LiveCooccurrence
    arms: dict[ArmSpec, _Arm] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.engine.path.name


@dataclass
class _Ticket:
    """One request's validated events, waiting for the next group commit."""

    checked: CheckedEvents
    served: _Served
    notify: Callable[[], None]
    stored: int = 0
    error: Exception | None = None


class LiveEngine:
    """Queries and writes against one engine directory and its event log.

    Writes of events go through one committer thread: each commit stores every request
    queued since the previous one in a single transaction, so the fsync that makes them
    durable is paid once per group instead of once per request.
    """

    def __init__(
        self,
        engine_dir: Path,
        log: EventLog,
        session_items: int = 50,
        arms: Sequence[ArmSpec] = (),
        fold_interval: float = 1.0,
    ) -> None:
        self.engine_dir = Path(engine_dir)
        self.log = log
        self.session_items = session_items
        #: seconds between folds of stored events into the co-occurrence counts
        self.fold_interval = fold_interval
        #: variants served next to the default answer (experiments); built per snapshot
        self.arm_specs = [spec for spec in dict.fromkeys(arms) if not spec.is_default]
        #: called by the committer with each commit's new rows (``EVENT_COLUMNS`` order)
        self.listeners: list[Callable[[list[tuple]], None]] = []
        #: time (ns) of the newest stored event; 0 before the first one
        self.newest_event_ns = 0
        # engine versions loaded for arms, by folder name: versions never change once built
        self._arm_engines: dict[str, Engine] = {}
        # Pseudonyms erased while running: a loaded engine still holds their build-time
        # history in memory (the files are rewritten by ``forget_user``).
        self._forgotten: set[str] = set()
        # catalogue edits, erasures and reloads change shared state in several steps
        self._write_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._queue_ready = threading.Condition()
        # held by the committer for a whole commit; a reload holds it while it replays
        # the log, so no commit falls between the replay and the swap
        self._commit_lock = threading.Lock()
        self._closing = False
        self._served: _Served | None = None
        self._committer = threading.Thread(
            target=self._run_commits, name="shoplm-event-commits", daemon=True
        )

    @classmethod
    def open(
        cls,
        engine_dir: Path,
        log_path: Path,
        session_items: int = 50,
        max_log_bytes: int | None = None,
        arms: Sequence[ArmSpec] = (),
        fold_interval: float = 1.0,
    ) -> LiveEngine:
        """Load the engine and replay the log: catalogue edits first, then recent items.

        Each of ``arms`` that names another engine version loads it here too, side by side,
        so a variant is served without a load on the request path.
        """
        engine = Engine.load(engine_dir)
        log = EventLog(log_path, max_log_bytes)
        live = cls(engine_dir, log, session_items, arms, fold_interval)
        live._served = live._serve(engine)
        live._committer.start()
        return live

    def close(self) -> None:
        """Commit what is queued, stop the committer and close the log."""
        with self._queue_ready:
            self._closing = True
            self._queue_ready.notify()
        if self._committer.is_alive():
            self._committer.join()
        if self._served is not None:
            self._served.counts.stop()
        self.log.close()

    @property
    def served(self) -> _Served:
        assert self._served is not None, "LiveEngine.open makes the first snapshot"
        return self._served

    @property
    def version(self) -> str:
        return self.served.version

    @property
    def catalog(self) -> LiveCatalog:
        return self.served.catalog

    @property
    def engine(self) -> Engine:
        return self.served.engine

    def set_arms(self, specs: Sequence[ArmSpec]) -> None:
        """Serve these variants from now on (next to the default answer) and after reloads.

        Engine versions they name are loaded here, side by side, and checked as a reload
        checks its engine; an error leaves the arms served so far.
        """
        arm_specs = [spec for spec in dict.fromkeys(specs) if not spec.is_default]
        with self._reload_lock:
            served = self.served
            arms = {spec: self._arm(spec, served.engine, served.catalog) for spec in arm_specs}
            with self._write_lock, self._commit_lock:
                self.arm_specs = arm_specs
                self._served = dataclasses.replace(served, arms=arms)

    # ------------------------------------------------------------------ reload
    def reload(self) -> str:
        """Load the engine ``engine_dir`` points at now and swap it in; returns its version.

        The new engine is loaded, checked file by file (:meth:`Engine.load`) and asked one
        search and one recommendation before anything changes; if any step fails the error
        propagates and the engine being served stays. The swap itself is one assignment
        made while no write is in progress, so every request is answered wholly by the old
        engine or wholly by the new one.
        """
        with self._reload_lock:
            engine = Engine.load(self.engine_dir)
            if engine.pseudonymiser.fingerprint != self.engine.pseudonymiser.fingerprint:
                raise ValueError(
                    f"{engine.path}: built with another pseudonymisation key than the engine "
                    "being served, so the event log's users would not match its users"
                )
            engine.search_page("shoplm reload probe", k=1)
            engine.feed.recommend(Sequences.from_lists([_NO_HISTORY]), 1)
            with self._write_lock, self._commit_lock:
                retired, self._served = self._served, self._serve(engine)
            if retired is not None:
                retired.counts.stop()
            return self.version

    def _serve(self, engine: Engine) -> _Served:
        """The live state on ``engine``: the log's catalogue edits, then its recent items."""
        catalog = LiveCatalog(engine.items)
        catalog.apply(self.log.items())
        sessions = SessionStore(self.session_items)
        past = self.log.events(("user", "item", "event", "timestamp"))
        sessions.add(
            past["user"].to_numpy(dtype=object),
            catalog.ids.get_indexer(past["item"].fillna("")),
            past["event"].to_numpy(dtype=object),
        )
        if len(past):
            self.newest_event_ns = max(self.newest_event_ns, int(past["timestamp"].max()))
        # events newer than the build are not in its counts yet
        counts = LiveCooccurrence(engine.cooccurrence, engine.history_users, self.fold_interval)
        built_ns = pd.Timestamp(engine.manifest["created_at"]).value
        since = (past["timestamp"] >= built_ns).to_numpy()
        counts.add(
            past["user"].to_numpy(dtype=object)[since],
            catalog.ids.get_indexer(past["item"].fillna(""))[since],
            past["event"].to_numpy(dtype=object)[since],
            past["timestamp"].to_numpy(dtype=np.int64)[since],
        )
        counts.fold()
        counts.start()
        # posted events use shoplm's own field names, whatever the shop's file columns are
        validator = EventValidator(engine.config.events.event_names, engine.pseudonymiser)
        arms = {spec: self._arm(spec, engine, catalog) for spec in self.arm_specs}
        return _Served(engine, catalog, sessions, validator, counts, arms)

    def _arm(self, spec: ArmSpec, served: Engine, catalog: LiveCatalog) -> _Arm:
        """``spec`` on the served engine, or on its own version mapped to the live catalogue."""
        engine = served
        if spec.engine is not None and spec.engine != served.path.name:
            engine = self._arm_engine(spec.engine, served)
        feed = engine.feed
        if spec.settings:
            feed = copy.copy(feed)
            for name, value in spec.settings:
                setattr(feed, name.removeprefix("recommend."), value)
        if engine is served:
            return _Arm(engine, feed)
        arm_ids = pd.Index(engine.items["item_id"])
        to_arm = arm_ids.get_indexer(catalog.id_array[: catalog.n_base])
        from_arm = catalog.ids.get_indexer(arm_ids)
        return _Arm(engine, feed, to_arm, from_arm, int((from_arm < 0).sum()))

    def _arm_engine(self, version: str, served: Engine) -> Engine:
        """Engine version ``version`` from the served engine's root, loaded and checked once."""
        if version not in self._arm_engines:
            engine = Engine.load(served.path.parent / version)
            if engine.pseudonymiser.fingerprint != served.pseudonymiser.fingerprint:
                raise ValueError(
                    f"{engine.path}: built with another pseudonymisation key than the engine "
                    "being served, so its users would not match the experiment's users"
                )
            engine.search_page("shoplm variant probe", k=1)
            engine.feed.recommend(Sequences.from_lists([_NO_HISTORY]), 1)
            self._arm_engines[version] = engine
        return self._arm_engines[version]

    # ------------------------------------------------------------------ reads
    def pseudonym(self, user: str) -> str:
        """The keyed pseudonym the engine, the log and the experiments know ``user`` by."""
        return self.served.engine.pseudonymiser.pseudonymise_one(user)

    def search(
        self, query: str, k: int, offset: int, filters: SearchFilters, arm: ArmSpec | None = None
    ) -> Ranked:
        """One page of results, with the items added since the build merged in.

        An added item that holds every word of the query goes before the engine's results
        (the shop just added it, and the engine cannot score it yet); one that holds only
        some of the words goes after them. ``arm`` answers with a variant's engine version.
        """
        return self.search_many([SearchRequest(query, k, offset, filters, arm)])[0]

    def search_many(self, requests: Sequence[SearchRequest]) -> list[Ranked]:
        """:meth:`search` for several requests, ranked in one batch per engine version."""
        served = self.served
        catalog = served.catalog
        answers: list[Ranked | None] = [None] * len(requests)
        for chosen, rows in _by_arm(served, [r.arm for r in requests]):
            engine = chosen.engine if chosen is not None else served.engine
            hidden = int(catalog.deleted[: catalog.n_base].sum())
            if chosen is not None:
                hidden += chosen.n_unlisted
            pages = engine.search_pages(
                [
                    PageRequest(r.query, r.offset + r.k + hidden, 0, r.filters)
                    for r in (requests[row] for row in rows)
                ]
            )
            for row, page in zip(rows, pages, strict=True):
                answers[row] = _merged_page(catalog, chosen, requests[row], page)
        return [answer for answer in answers if answer is not None]

    def recommend(
        self, user: str, k: int, arm: ArmSpec | None = None, key: str | None = None
    ) -> Ranked:
        """Top ``k`` for the user's build-time history plus everything they did since.

        ``arm`` answers with a variant's engine version and feed settings; ``key`` is the
        user's pseudonym when the caller has it already.
        """
        return self.recommend_many([FeedRequest(user, k, arm, key)])[0]

    def recommend_many(self, requests: Sequence[FeedRequest]) -> list[Ranked]:
        """:meth:`recommend` for several users, scored in one feed call per engine version.

        The feed's scoring is vectorised over histories, so users who ask together cost
        far less than one at a time (the service batches the requests that arrive
        together); each answer is what the user would get alone.
        """
        served = self.served
        catalog = served.catalog
        answers: list[Ranked | None] = [None] * len(requests)
        for chosen, rows in _by_arm(served, [r.arm for r in requests]):
            engine = chosen.engine if chosen is not None else served.engine
            feed = chosen.feed if chosen is not None else engine.feed
            to_arm = chosen.to_arm if chosen is not None else None
            from_arm = chosen.from_arm if chosen is not None else None
            hidden = int(catalog.deleted[: catalog.n_base].sum())
            if chosen is not None:
                hidden += chosen.n_unlisted
            histories = Sequences.from_lists(
                [self._history(served, engine, requests[row], to_arm) for row in rows]
            )
            k = max(requests[row].k for row in rows)
            all_ids, all_scores, all_reasons = feed.recommend(histories, k + hidden)
            for row, ids, scores, reasons in zip(
                rows, all_ids, all_scores, all_reasons, strict=True
            ):
                listed = ids >= 0
                ids, scores = ids[listed], scores[listed]
                if from_arm is not None:
                    ids = from_arm[ids]
                keep = (ids >= 0) & ~catalog.deleted[np.maximum(ids, 0)]
                k = requests[row].k
                answers[row] = Ranked(
                    ids=catalog.id_array[ids[keep][:k]].tolist(),
                    titles=catalog.titles[ids[keep][:k]].tolist(),
                    scores=scores[keep][:k].astype(float).tolist(),
                    reasons=[r for r, kept in zip(reasons, keep, strict=False) if kept][:k],
                )
        return [answer for answer in answers if answer is not None]

    def _history(
        self, served: _Served, engine: Engine, request: FeedRequest, to_arm: np.ndarray | None
    ) -> np.ndarray:
        """The user's build-time history and the items of their live session, as rows of
        ``engine`` (``to_arm`` maps live rows to an arm engine's)."""
        key = request.key
        if key is None:
            key = served.engine.pseudonymiser.pseudonymise_one(request.user)
        built = _NO_HISTORY
        if key in engine.history_users and key not in self._forgotten:
            built = engine.histories[int(engine.history_users.get_loc(key))]
        recent = served.sessions.recent(key)
        # items added since the build are unknown to the engine's recommender
        recent = recent[recent < served.catalog.n_base]
        if to_arm is not None:
            recent = to_arm[recent]
            recent = recent[recent >= 0]
        return np.concatenate([built, recent])

    def similar(self, item_id: str, k: int, arm: ArmSpec | None = None) -> Ranked:
        """Items to show next to ``item_id``, from the arm's engine; only listed ones.

        Raises KeyError when the item is unknown or withdrawn.
        """
        served = self.served
        catalog = served.catalog
        row = int(catalog.ids.get_indexer([item_id])[0])
        if row < 0 or catalog.deleted[row]:
            raise KeyError(item_id)
        chosen = served.arms.get(arm) if arm is not None else None
        engine = chosen.engine if chosen is not None else served.engine
        hidden = int(catalog.deleted[: catalog.n_base].sum())
        if chosen is not None:
            hidden += chosen.n_unlisted
        (found,) = engine.similar([item_id], k + hidden)
        rows = catalog.ids.get_indexer(found.items)
        keep = (rows >= 0) & ~catalog.deleted[np.maximum(rows, 0)]
        rows = rows[keep][:k]
        return Ranked(
            ids=catalog.id_array[rows].tolist(),
            titles=catalog.titles[rows].tolist(),
            scores=[s for s, kept in zip(found.scores, keep, strict=True) if kept][:k],
            reasons=[r for r, kept in zip(found.reasons, keep, strict=True) if kept][:k],
        )

    # ------------------------------------------------------------------ writes
    def check(self, records: Sequence[Mapping[str, object]]) -> tuple[CheckedEvents, _Served]:
        """Validate events as an event file is validated; raises :class:`EventsRejected`.

        Events sent without a timestamp are never duplicates (two identical clicks may both
        be real); they are stamped with the time they are stored. Timed events that repeat
        each other exactly within one request are rejected, as within one file.
        """
        served = self.served
        catalog = served.catalog
        checked = served.validator.check(records, catalog.ids, catalog.deleted)
        if checked.problems:
            raise EventsRejected(checked.problems)
        return checked, served

    def ingest(self, records: Sequence[Mapping[str, object]]) -> int:
        """Validate and store events durably, all or none; returns how many were new.

        An ``event_id`` already stored is stored once. Raises :class:`EventsRejected`
        naming each bad row and field, or :class:`~shoplm.realtime.event_log.LogWriteError`
        when the log cannot be written.
        """
        checked, served = self.check(records)
        done = threading.Event()
        ticket = _Ticket(checked, served, done.set)
        self._submit(ticket)
        done.wait()
        if ticket.error is not None:
            raise ticket.error
        return ticket.stored

    async def ingest_async(self, records: Sequence[Mapping[str, object]]) -> int:
        """:meth:`ingest` for the event loop: waits for the commit without holding a thread."""
        checked, served = self.check(records)
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def notify() -> None:
            loop.call_soon_threadsafe(_settle, finished)

        ticket = _Ticket(checked, served, notify)
        self._submit(ticket)
        await finished
        if ticket.error is not None:
            raise ticket.error
        return ticket.stored

    def _submit(self, ticket: _Ticket) -> None:
        with self._queue_ready:
            if self._closing:
                raise RuntimeError("the event log is closed")
            self._queue.append(ticket)
            self._queue_ready.notify()

    def _run_commits(self) -> None:
        """The committer thread: store whatever is queued, one transaction at a time."""
        while True:
            with self._queue_ready:
                while not self._queue and not self._closing:
                    self._queue_ready.wait()
                if not self._queue:
                    return
            with self._commit_lock:
                with self._queue_ready:
                    batch, self._queue = self._queue, []
                self._commit(batch)
            for ticket in batch:
                ticket.notify()

    def _commit(self, batch: list[_Ticket]) -> None:
        """Store every ticket's rows in one transaction, then update the sessions."""
        now = time.time_ns()
        # an event sent without a time happened when it is stored
        rows = [
            row if row[4] is not None else (*row[:4], now, *row[5:])
            for ticket in batch
            for row in ticket.checked.rows
        ]
        try:
            new = self.log.append_rows(rows)
        except Exception as exc:
            for ticket in batch:
                ticket.error = exc
            return
        served = self.served
        start = 0
        for ticket in batch:
            end = start + len(ticket.checked.rows)
            ticket.stored = int(new[start:end].sum())
            start = end
        stored_rows = [row for row, is_new in zip(rows, new, strict=True) if is_new]
        items = np.array([i for t in batch for i in t.checked.items], dtype=np.int64)[new]
        if any(ticket.served is not served for ticket in batch):
            # a reload swapped engines since validation: internal item ids changed
            items = served.catalog.ids.get_indexer([row[2] or "" for row in stored_rows])
        users = np.array([row[1] for row in stored_rows], dtype=object)
        events = np.array([row[3] for row in stored_rows], dtype=object)
        served.sessions.add(users, items, events)
        served.counts.add(
            users, items, events, np.array([row[4] for row in stored_rows], dtype=np.int64)
        )
        if stored_rows:
            self.newest_event_ns = max(self.newest_event_ns, max(r[4] for r in stored_rows))
        for listener in self.listeners:
            try:
                listener(stored_rows)
            except Exception:  # the events are stored: a listener's failure must not undo that
                LOGGER.exception(
                    "commit listener failed", extra={"fields": {"rows": len(stored_rows)}}
                )

    def put_item(self, item_id: str, fields: dict[str, object]) -> bool:
        """Add or change an item, durably; returns whether it is new."""
        with self._write_lock:
            self.log.put_item(item_id, fields)
            return self.served.catalog.put(item_id, fields)

    def delete_item(self, item_id: str) -> bool:
        """Withdraw an item, durably; False when it is unknown or already withdrawn."""
        with self._write_lock:
            catalog = self.served.catalog
            if item_id not in catalog.ids or catalog.deleted[catalog.ids.get_loc(item_id)]:
                return False
            self.log.put_item(item_id, {}, deleted=True)
            return catalog.delete(item_id)

    def forget_user(self, user_id: str) -> int:
        """Erase a user from the live log, the session state and every engine version."""
        served = self.served
        key = served.engine.pseudonymiser.pseudonymise_one(user_id)
        with self._write_lock:
            self._forgotten.add(key)
            removed = self.log.forget(key)
            served.sessions.forget(key)
            return removed + forget_user(self.engine_dir, user_id, served.engine.config)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # the client may have gone away and the request been cancelled
        future.set_result(None)


def _by_arm(served: _Served, arms: Sequence[ArmSpec | None]) -> list[tuple[_Arm | None, list[int]]]:
    """Request positions grouped by the arm that answers them (None: the served engine)."""
    groups: dict[ArmSpec | None, list[int]] = {}
    for row, arm in enumerate(arms):
        groups.setdefault(arm if arm in served.arms else None, []).append(row)
    return [(served.arms[arm] if arm is not None else None, rows) for arm, rows in groups.items()]


def _merged_page(
    catalog: LiveCatalog, chosen: _Arm | None, request: SearchRequest, page: SearchPage
) -> Ranked:
    """The engine's page with withdrawn items dropped and items added since merged in."""
    rows = page.ids
    if chosen is not None and chosen.from_arm is not None:
        rows = chosen.from_arm[rows]
    offset, k = request.offset, request.k
    live = (rows >= 0) & ~catalog.deleted[np.maximum(rows, 0)]
    fresh_ids, fresh_scores = catalog.search(request.query, offset + k, request.filters)
    old = live & ~np.isin(rows, fresh_ids) if fresh_ids.size else live
    full = fresh_scores >= 1
    ids = np.concatenate([fresh_ids[full], rows[old], fresh_ids[~full]])
    scores = np.concatenate([fresh_scores[full], page.scores[old], fresh_scores[~full]])
    ids, scores = ids[offset : offset + k], scores[offset : offset + k]
    return Ranked(
        ids=catalog.id_array[ids].tolist(),
        titles=catalog.titles[ids].tolist(),
        scores=scores.astype(float).tolist(),
        total=page.total - int((~live).sum()) + fresh_ids.size,
        suggestion=page.parsed.suggestion,
        facets=page.facets,
        applied=page.applied,
    )
