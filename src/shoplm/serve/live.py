"""A loaded engine plus everything that happened since it was built.

The engine answers from its build; this layer folds in the event log (recent items per
user), catalogue edits (new items searchable, deleted items hidden) and erasures, so the
HTTP routes stay thin and every answer reflects each acknowledged write.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from shoplm.config import EventsConfig
from shoplm.data.events import DuplicateFinder, normalise_events
from shoplm.data.interactions import Sequences
from shoplm.data.report import ValidationReport
from shoplm.data.schema import EVENT_CODES, EVENT_FIELDS
from shoplm.engine import Engine, forget_user
from shoplm.realtime.event_log import EventLog
from shoplm.realtime.items import LiveCatalog
from shoplm.realtime.sessions import SessionStore
from shoplm.search.pipeline import SearchFilters

_EVENT_NAMES = np.array(list(EVENT_CODES), dtype=object)


@dataclass
class _Ticket:
    """One ``ingest`` call waiting for a group commit, and its outcome."""

    records: list[dict[str, object]]
    done: bool = False
    stored: int = 0
    error: Exception | None = None


class EventsRejected(ValueError):
    """Posted events that break the event rules; ``problems`` name each row and field."""

    def __init__(self, problems: list[dict[str, object]]) -> None:
        super().__init__(f"{len(problems)} problem(s) in the posted events")
        self.problems = problems


@dataclass
class Ranked:
    ids: np.ndarray
    scores: np.ndarray
    total: int = 0
    suggestion: str | None = None
    facets: dict[str, dict[str, int]] | None = None
    applied: dict[str, object] | None = None
    #: one reason per item, for recommendations
    reasons: list[str] | None = None


class LiveEngine:
    """Queries and writes against one engine directory and its event log."""

    def __init__(
        self,
        engine: Engine,
        engine_dir: Path,
        log: EventLog,
        catalog: LiveCatalog,
        sessions: SessionStore,
    ) -> None:
        self.engine = engine
        self.engine_dir = engine_dir
        self.log = log
        self.catalog = catalog
        self.sessions = sessions
        # Pseudonyms erased while running: the loaded engine still holds their build-time
        # history in memory (the files are rewritten by ``forget_user``).
        self._forgotten: set[str] = set()
        # catalogue edits and erasures change shared state in several steps: one at a time
        self._write_lock = threading.Lock()
        self._pending: list[_Ticket] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        # Posted events use shoplm's own field names, whatever the shop's file columns are.
        self._event_config = engine.config.model_copy(
            update={"events": EventsConfig(event_names=engine.config.events.event_names)}
        )

    @classmethod
    def open(cls, engine_dir: Path, log_path: Path, session_items: int = 50) -> LiveEngine:
        """Load the engine and replay the log: catalogue edits first, then recent items."""
        engine = Engine.load(engine_dir)
        log = EventLog(log_path)
        catalog = LiveCatalog(engine.items)
        catalog.apply(log.items())
        sessions = SessionStore(session_items)
        past = log.events(("user", "item", "event"))
        sessions.add(
            past["user"].to_numpy(dtype=object),
            catalog.ids.get_indexer(past["item"].fillna("")),
            past["event"].to_numpy(dtype=object),
        )
        return cls(engine, Path(engine_dir), log, catalog, sessions)

    @property
    def version(self) -> str:
        return self.engine.path.name

    # ------------------------------------------------------------------ reads
    def search(
        self, query: str, k: int, offset: int, filters: SearchFilters, user: str | None = None
    ) -> Ranked:
        """One page of results, with the items added since the build merged in.

        An added item that holds every word of the query goes before the engine's results
        (the shop just added it, and the engine cannot score it yet); one that holds only
        some of the words goes after them.

        With ``user`` the search is recorded in the log as a search event of that user, the
        impressions that later search clicks are learned against.
        """
        hidden = int(self.catalog.deleted[: self.catalog.n_base].sum())
        page = self.engine.search_page(query, k=offset + k + hidden, offset=0, filters=filters)
        live = ~self.catalog.deleted[page.ids]
        fresh_ids, fresh_scores = self.catalog.search(query, offset + k, filters)
        old = live & ~np.isin(page.ids, fresh_ids)
        full = fresh_scores >= 1
        ids = np.concatenate([fresh_ids[full], page.ids[old], fresh_ids[~full]])
        scores = np.concatenate([fresh_scores[full], page.scores[old], fresh_scores[~full]])
        ids, scores = ids[offset : offset + k], scores[offset : offset + k]
        if user is not None:
            self.ingest([{"user_id": user, "event": "search", "query": query}])
        return Ranked(
            ids=ids,
            scores=scores.astype(float),
            total=page.total - int((~live).sum()) + fresh_ids.size,
            suggestion=page.parsed.suggestion,
            facets=page.facets,
            applied=page.applied,
        )

    def recommend(self, user: str, k: int) -> Ranked:
        """Top ``k`` for the user's build-time history plus everything they did since."""
        key = self.engine.pseudonymiser.pseudonymise_one(user)
        row = int(self.engine.history_users.get_indexer([key])[0])
        built = (
            self.engine.histories[row]
            if row >= 0 and key not in self._forgotten
            else np.zeros(0, dtype=np.int64)
        )
        recent = self.sessions.recent(key)
        # items added since the build are unknown to the engine's recommender
        recent = recent[recent < self.catalog.n_base]
        history = Sequences.from_lists([np.concatenate([built, recent])])
        hidden = int(self.catalog.deleted[: self.catalog.n_base].sum())
        ids, scores, reasons = self.engine.feed.recommend(history, k + hidden)
        ids, scores = ids[0], scores[0]
        listed = ids >= 0
        ids, scores = ids[listed], scores[listed]
        keep = ~self.catalog.deleted[ids]
        why = [r for r, kept in zip(reasons[0], keep, strict=True) if kept][:k]
        return Ranked(ids[keep][:k], scores[keep][:k].astype(float), reasons=why)

    def titles(self, ids: np.ndarray) -> list[str]:
        return self.catalog.titles[ids].tolist()

    def item_ids(self, ids: np.ndarray) -> list[str]:
        return self.catalog.ids[ids].tolist()

    # ------------------------------------------------------------------ writes
    def ingest(self, records: list[dict[str, object]]) -> int:
        """Validate events as an event file is validated and store them durably; all or none.

        Returns how many were new (an ``event_id`` already stored is stored once). Raises
        :class:`EventsRejected` naming each bad row and field.

        Concurrent calls are committed together (group commit): whichever caller gets the
        flush lock validates and stores every request waiting by then, in one pass of the
        file loader's validation and one transaction. Validation and the fsync cost about the
        same for one event as for hundreds, so throughput grows with concurrency instead of
        paying both per request. One consequence: an event that exactly repeats another
        with a timestamp (same user, item, type, time and fields) in the same commit group
        is rejected as a duplicate, as the file loader rejects it within a file. Events sent
        without a timestamp are never duplicates (two identical clicks may both be real);
        they are stamped with the time they are stored.
        """
        ticket = _Ticket(records)
        with self._pending_lock:
            self._pending.append(ticket)
        with self._flush_lock:
            if not ticket.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit(batch)
        if ticket.error is not None:
            raise ticket.error
        return ticket.stored

    def _commit(self, batch: list[_Ticket]) -> None:
        """Validate and store the requests of ``batch``; each ticket gets its own outcome."""
        try:
            offsets = np.cumsum([0, *(len(t.records) for t in batch)])
            table, problems = self._validate([r for t in batch for r in t.records])
            owner = np.searchsorted(offsets, table["seq"].to_numpy(), side="right") - 1
            rejected = np.zeros(len(batch), dtype=bool)
            for i, ticket in enumerate(batch):
                mine = [
                    {**p, "row": p["row"] - int(offsets[i])}
                    for p in problems
                    if offsets[i] <= p["row"] < offsets[i + 1]
                ]
                if mine:
                    ticket.error = EventsRejected(mine)
                    rejected[i] = True
            accepted = ~rejected[owner]
            stored = self._store(table.filter(pa.array(accepted)))
            counts = np.bincount(owner[accepted][stored], minlength=len(batch))
            for ticket, count in zip(batch, counts.tolist(), strict=True):
                ticket.stored = count
        except Exception as exc:
            for ticket in batch:
                ticket.error = exc
            raise
        finally:
            for ticket in batch:
                ticket.done = True

    def _validate(self, records: list[dict[str, object]]) -> tuple[pa.Table, list[dict]]:
        """The file loader's checks over the records: the kept rows and every problem."""
        frame = pd.DataFrame.from_records(records, columns=[*EVENT_FIELDS, "event_id"])
        frame = frame.astype(object).where(frame.notna(), None)
        event_ids = frame.pop("event_id").to_numpy()
        report = ValidationReport(examples_per_reason=len(frame))
        table = normalise_events(
            Path("request"),
            frame.astype("string").astype(object),
            np.arange(len(frame)),
            self._event_config,
            self.catalog.ids,
            self.engine.pseudonymiser,
            report,
            DuplicateFinder(),
            seq_start=0,
        )
        problems = [
            {"row": row, "field": field, "message": reason, "input": value}
            for (_, field, severity, reason), examples in report.examples.items()
            if severity == "error"
            for row, value in examples
        ]
        items = table["item"].to_numpy().astype(np.int64)
        withdrawn = (items >= 0) & self.catalog.deleted[np.maximum(items, 0)]
        problems += [
            {"row": int(r), "field": "item_id", "message": "item was deleted", "input": ""}
            for r in table["seq"].to_numpy()[withdrawn]
        ]
        table = table.append_column("event_id", pa.array(event_ids[table["seq"].to_numpy()]))
        return table, sorted(problems, key=lambda p: (p["row"], p["field"]))

    def _store(self, table: pa.Table) -> np.ndarray:
        """Append validated events to the log and the session state; the mask of new rows."""
        items = table["item"].to_numpy().astype(np.int64)
        users = table["user"].to_numpy(zero_copy_only=False).astype(object)
        events = _EVENT_NAMES[table["event"].to_numpy()]
        stored = self.log.append(
            pd.DataFrame(
                {
                    "event_id": table["event_id"].to_numpy(zero_copy_only=False),
                    "user": users,
                    "item": np.where(
                        items >= 0, self.catalog.ids.to_numpy(dtype=object)[items], None
                    ),
                    "event": events,
                    # an event sent without a time happened when it arrived
                    "timestamp": pc.fill_null(
                        table["timestamp"].cast("int64"), time.time_ns()
                    ).to_numpy(),
                    "query": table["query"].to_pandas().replace("", None),
                    "value": table["value"].to_numpy(zero_copy_only=False),
                    "session": table["session"].to_pandas().replace("", None),
                }
            )
        )
        self.sessions.add(users[stored], items[stored], events[stored])
        return stored

    def put_item(self, item_id: str, fields: dict[str, object]) -> bool:
        """Add or change an item, durably; returns whether it is new."""
        with self._write_lock:
            self.log.put_item(item_id, fields)
            return self.catalog.put(item_id, fields)

    def delete_item(self, item_id: str) -> bool:
        """Withdraw an item, durably; False when it is unknown or already withdrawn."""
        with self._write_lock:
            row = self.catalog.ids.get_indexer([item_id])[0]
            if row < 0 or self.catalog.deleted[row]:
                return False
            self.log.put_item(item_id, {}, deleted=True)
            return self.catalog.delete(item_id)

    def forget_user(self, user_id: str) -> int:
        """Erase a user from the live log, the session state and every engine version."""
        key = self.engine.pseudonymiser.pseudonymise_one(user_id)
        with self._write_lock:
            self._forgotten.add(key)
            removed = self.log.forget(key)
            self.sessions.forget(key)
            return removed + forget_user(self.engine_dir, user_id, self.engine.config)
