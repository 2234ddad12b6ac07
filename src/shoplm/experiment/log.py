"""The exposure log and the attribution of later behaviour to the variant a user was shown.

Every served result of an experiment is recorded as an *exposure* (experiment, variant,
pseudonymised user, time, surface, item ids). Clicks, carts and purchases are recorded once
as *outcomes*, whatever experiments are running; attribution joins the two at report time:
an outcome counts for an experiment when the same user had been exposed to it, at most the
attribution window before the outcome (measured from the latest exposure, since a user who
keeps seeing the variant keeps being influenced by it). The variant is the one of the
user's **first** exposure: if a user somehow saw two variants (a change of shares, a bug),
the analysis stays intention-to-treat and the count of such users is reported.

Storage is one SQLite file (WAL), written in one transaction per call, like the service's
event log. Users are keyed pseudonyms only; :meth:`ExperimentLog.forget` erases one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shoplm.experiment.config import ExperimentConfig

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,          -- ExperimentConfig as JSON
    registered_at INTEGER NOT NULL -- ns since the epoch, UTC
);
CREATE TABLE IF NOT EXISTS exposures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment TEXT NOT NULL,
    variant TEXT NOT NULL,
    user TEXT NOT NULL,            -- keyed pseudonym, never the raw id
    served_at INTEGER NOT NULL,    -- ns since the epoch, UTC
    surface TEXT NOT NULL,         -- e.g. "home", "search", "similar"
    items TEXT NOT NULL            -- JSON array of the shop's item ids, in served order
);
CREATE INDEX IF NOT EXISTS exposures_experiment ON exposures (experiment, user, served_at);
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    item TEXT,
    event TEXT NOT NULL,           -- click, add_to_cart or purchase
    timestamp INTEGER NOT NULL,    -- ns since the epoch, UTC
    revenue REAL NOT NULL          -- the purchase's amount; 0 for clicks and carts
);
CREATE INDEX IF NOT EXISTS outcomes_user ON outcomes (user, timestamp);
"""

#: Outcome event types that are attributed; anything else is counted and not stored.
OUTCOME_EVENTS = ("click", "add_to_cart", "purchase")

EXPOSURE_COLUMNS = ("variant", "user", "served_at", "surface", "items")
OUTCOME_COLUMNS = ("user", "item", "event", "timestamp", "revenue")


class ExperimentError(ValueError):
    """An experiment that is unknown, or redefined under a name already in use."""


@dataclass(frozen=True)
class StoredOutcomes:
    """What :meth:`ExperimentLog.record_outcomes` kept, and what it left out and why."""

    stored: int
    skipped: dict[str, int]


class ExperimentLog:
    """One SQLite file holding experiment definitions, exposures and outcomes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ExperimentLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ experiments
    def register(self, config: ExperimentConfig) -> None:
        """Record an experiment's definition; a different one under the same name is refused.

        Changing shares or variants of a running test breaks the sample-ratio check and mixes
        populations, so it takes a new name (or a new salt and name) instead.
        """
        text = config.model_dump_json()
        with self._lock, self._transaction():
            row = self._db.execute(
                "SELECT config FROM experiments WHERE name = ?", (config.name,)
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO experiments (name, config, registered_at) VALUES (?, ?, ?)",
                    (config.name, text, time.time_ns()),
                )
            elif ExperimentConfig.model_validate_json(row[0]) != config:
                raise ExperimentError(
                    f"{self.path}: experiment {config.name!r} is already registered with "
                    "another definition; start the changed test under a new name"
                )

    def experiment(self, name: str) -> ExperimentConfig:
        with self._lock:
            row = self._db.execute("SELECT config FROM experiments WHERE name = ?", (name,))
            found = row.fetchone()
        if found is None:
            raise ExperimentError(
                f"{self.path}: no experiment {name!r}; registered: {self.experiment_names()}"
            )
        return ExperimentConfig.model_validate_json(found[0])

    def experiment_names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM experiments ORDER BY name")]

    # ------------------------------------------------------------------ writes
    def record_exposures(self, experiment: str, exposures: pd.DataFrame) -> int:
        """Store served results (columns :data:`EXPOSURE_COLUMNS`; ``items`` lists of ids).

        Every variant name must belong to the registered experiment: a typo here would
        otherwise surface weeks later as a sample-ratio mismatch.
        """
        config = self.experiment(experiment)
        frame = _require(exposures, EXPOSURE_COLUMNS, "exposures")
        unknown = sorted(set(frame["variant"].astype(str)) - set(config.variant_names))
        if unknown:
            raise ExperimentError(
                f"exposures: variant(s) {unknown} are not in experiment {experiment!r} "
                f"({config.variant_names})"
            )
        rows = zip(
            [experiment] * len(frame),
            frame["variant"].astype(str),
            frame["user"].astype(str),
            frame["served_at"].astype(np.int64).tolist(),
            frame["surface"].astype(str),
            [json.dumps([str(i) for i in items]) for items in frame["items"]],
            strict=True,
        )
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO exposures (experiment, variant, user, served_at, surface, items) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(frame)

    def record_outcomes(self, events: pd.DataFrame) -> StoredOutcomes:
        """Store clicks, carts and purchases (columns :data:`OUTCOME_COLUMNS`).

        Other event types (views, searches, ...) are not outcomes; they are counted in the
        result rather than stored. A missing revenue is 0 (clicks and carts have none).
        """
        frame = _require(events, OUTCOME_COLUMNS, "outcomes")
        event = frame["event"].astype(str)
        keep = event.isin(OUTCOME_EVENTS).to_numpy()
        skipped = event[~keep].value_counts().to_dict()
        kept = frame[keep]
        revenue = pd.to_numeric(kept["revenue"], errors="coerce")
        if (revenue < 0).any():
            row = int(np.flatnonzero((revenue < 0).to_numpy())[0])
            raise ValueError(f"outcomes: row {row}: revenue must be >= 0, got {revenue.iloc[row]}")
        item = kept["item"].astype(object)
        rows = zip(
            kept["user"].astype(str),
            item.where(item.notna(), None),
            event[keep],
            kept["timestamp"].astype(np.int64).tolist(),
            revenue.fillna(0.0).astype(float).tolist(),
            strict=True,
        )
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT INTO outcomes (user, item, event, timestamp, revenue) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        return StoredOutcomes(int(keep.sum()), {f"event {k!r}": int(v) for k, v in skipped.items()})

    def forget(self, user: str) -> int:
        """Erase every exposure and outcome of the pseudonym ``user``; returns rows removed."""
        with self._lock, self._transaction():
            removed = self._db.execute("DELETE FROM exposures WHERE user = ?", (user,)).rowcount
            removed += self._db.execute("DELETE FROM outcomes WHERE user = ?", (user,)).rowcount
        return removed

    # ------------------------------------------------------------------ reads
    def exposures(self, experiment: str) -> pd.DataFrame:
        """Exposures of one experiment (``items`` as JSON text), oldest first."""
        with self._lock:
            return pd.read_sql_query(
                "SELECT variant, user, served_at, surface, items FROM exposures "
                "WHERE experiment = ? ORDER BY served_at, id",
                self._db,
                params=(experiment,),
            )

    def outcomes(self, users: Sequence[str] | None = None) -> pd.DataFrame:
        """Outcomes, oldest first; only those of ``users`` when given."""
        query = "SELECT user, item, event, timestamp, revenue FROM outcomes"
        params: tuple[str, ...] = ()
        if users is not None:
            query += " WHERE user IN (SELECT value FROM json_each(?))"
            params = (json.dumps(list(users)),)
        with self._lock:
            return pd.read_sql_query(query + " ORDER BY timestamp, id", self._db, params=params)

    def attributed(self, experiment: str) -> Attribution:
        """Per-user totals of one experiment, attributed with its configured window."""
        config = self.experiment(experiment)
        exposures = self.exposures(experiment)
        outcomes = self.outcomes(exposures["user"].unique().tolist())
        window_ns = int(config.attribution_window.total_seconds() * 1e9)
        return attribute(exposures, outcomes, window_ns)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


@dataclass(frozen=True)
class Attribution:
    """Per-user totals, one row per exposed user (the unit of analysis), plus the counts of
    what did not fit cleanly, so nothing is dropped unseen."""

    #: index ``user``; columns variant, exposures, first_exposure, clicks, carts, purchases,
    #: revenue
    users: pd.DataFrame
    #: users exposed to more than one variant (analysed in their first one)
    n_multi_variant_users: int
    #: outcomes of exposed users before their first exposure or outside the window
    n_unattributed_outcomes: int


def attribute(exposures: pd.DataFrame, outcomes: pd.DataFrame, window_ns: int) -> Attribution:
    """Attribute ``outcomes`` to the variant of each user's first exposure.

    ``exposures`` needs columns user, variant, served_at; ``outcomes`` user, event,
    timestamp, revenue (times in the same unit as ``window_ns``). An outcome counts when
    the user's latest exposure at or before it is at most ``window_ns`` earlier. Users
    with no outcome get zeros: a user who was shown a variant and did nothing is data.
    """
    if window_ns <= 0:
        raise ValueError(f"window_ns must be positive, got {window_ns}")
    exposed = exposures[["user", "variant", "served_at"]].sort_values("served_at", kind="stable")
    per_user = exposed.groupby("user", sort=True).agg(
        variant=("variant", "first"),
        first_exposure=("served_at", "first"),
        exposures=("served_at", "size"),
        n_variants=("variant", "nunique"),
    )
    # get_indexer, not isin: isin on Arrow-backed strings loops in Python
    events = outcomes[per_user.index.get_indexer(outcomes["user"]) >= 0]
    events = events.assign(timestamp=events["timestamp"].astype(np.int64)).sort_values(
        "timestamp", kind="stable"
    )
    matched = pd.merge_asof(
        events,
        exposed[["user", "served_at"]].assign(served_at=exposed["served_at"].astype(np.int64)),
        left_on="timestamp",
        right_on="served_at",
        by="user",
        direction="backward",
    )
    inside = (matched["timestamp"] - matched["served_at"] <= window_ns).to_numpy()
    counted = matched[inside]
    kind = counted["event"].to_numpy()
    totals = (
        pd.DataFrame(
            {
                "user": counted["user"].to_numpy(),
                "clicks": (kind == "click").astype(np.int64),
                "carts": (kind == "add_to_cart").astype(np.int64),
                "purchases": (kind == "purchase").astype(np.int64),
                "revenue": np.where(kind == "purchase", counted["revenue"].to_numpy(float), 0.0),
            }
        )
        .groupby("user")
        .sum()
    )
    users = per_user.drop(columns="n_variants").join(totals, how="left")
    users[["clicks", "carts", "purchases"]] = (
        users[["clicks", "carts", "purchases"]].fillna(0).astype(np.int64)
    )
    users["revenue"] = users["revenue"].fillna(0.0)
    return Attribution(
        users=users,
        n_multi_variant_users=int((per_user["n_variants"] > 1).sum()),
        n_unattributed_outcomes=int((~inside).sum()),
    )


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; expected {list(columns)}")
    return frame.loc[:, list(columns)]
