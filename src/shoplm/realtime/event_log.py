"""The append-only event log of the running service, and its side table of catalogue edits.

Events posted to the service land here before the request is acknowledged; session state is
rebuilt from this log when the service starts, and the next engine build can read it. Users
are stored as keyed pseudonyms only (the caller pseudonymises before appending), items by
the shop's own id, so the log stays valid across engine versions whose internal ids differ.

Durability: the database runs in WAL mode with ``synchronous=FULL``. In WAL mode
``synchronous=NORMAL`` writes each commit to the WAL file but fsyncs only at checkpoints: a
killed *process* loses nothing (the WAL is in the OS page cache), but a power cut or kernel
crash can lose the last commits, i.e. events the client was told were stored. ``FULL``
fsyncs the WAL on every commit, so a 2xx means the event is on disk. The price is one
fsync per request, which callers amortise by posting events in batches (one transaction
per request, whatever its size).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT UNIQUE,          -- the caller's idempotency key: a retry is stored once
    user TEXT NOT NULL,            -- keyed pseudonym, never the raw id
    item TEXT,                     -- the shop's item id; NULL for a search without a click
    event TEXT NOT NULL,
    timestamp INTEGER NOT NULL,    -- ns since the epoch, UTC
    query TEXT,
    value REAL,
    session TEXT,
    received_at INTEGER NOT NULL   -- ns since the epoch, UTC
);
CREATE INDEX IF NOT EXISTS events_user ON events (user);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    fields TEXT NOT NULL,          -- JSON object of catalogue fields
    deleted INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
"""

#: Columns of the frames ``append`` takes and ``events`` returns.
EVENT_COLUMNS = ("event_id", "user", "item", "event", "timestamp", "query", "value", "session")


class EventLog:
    """One SQLite file; every write is one durable transaction, safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the server's worker threads; the lock serialises writers
        # (SQLite allows one at a time anyway) and keeps reads off a half-done transaction.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, events: pd.DataFrame) -> np.ndarray:
        """Store ``events`` (columns :data:`EVENT_COLUMNS`) in one transaction.

        Returns a mask of the rows stored: a row whose ``event_id`` is already in the log,
        or repeats an earlier row of this batch, is skipped, so a client may retry a
        request whose answer it never got.
        """
        frame = events.loc[:, list(EVENT_COLUMNS)].astype(object)
        frame = frame.where(frame.notna(), None)
        frame["received_at"] = time.time_ns()
        ids = frame["event_id"]
        given = json.dumps(ids.dropna().unique().tolist())
        with self._lock, self._transaction():
            stored_before = {
                row[0]
                for row in self._db.execute(
                    "SELECT event_id FROM events WHERE event_id IN "
                    "(SELECT value FROM json_each(?))",
                    (given,),
                )
            }
            new = ~(ids.isin(stored_before) | (ids.notna() & ids.duplicated())).to_numpy()
            self._db.executemany(
                f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}, received_at) "
                f"VALUES ({', '.join('?' * (len(EVENT_COLUMNS) + 1))})",
                frame[new].itertuples(index=False, name=None),
            )
        return new

    def events(self, columns: tuple[str, ...] = EVENT_COLUMNS) -> pd.DataFrame:
        """Every stored event, oldest first."""
        with self._lock:
            return pd.read_sql_query(
                f"SELECT {', '.join(columns)} FROM events ORDER BY id", self._db
            )

    def forget(self, user: str) -> int:
        """Erase every event of the pseudonym ``user``; returns how many were removed."""
        with self._lock, self._transaction():
            return self._db.execute("DELETE FROM events WHERE user = ?", (user,)).rowcount

    def put_item(self, item_id: str, fields: dict[str, object], deleted: bool = False) -> None:
        """Record an added, changed or deleted catalogue item (the latest state wins)."""
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO items (item_id, fields, deleted, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (item_id) DO UPDATE SET fields = excluded.fields, "
                "deleted = excluded.deleted, updated_at = excluded.updated_at",
                (item_id, json.dumps(fields), int(deleted), time.time_ns()),
            )

    def items(self) -> pd.DataFrame:
        """The catalogue edits: ``item_id``, ``deleted`` and one column per stored field."""
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id, fields, deleted FROM items ORDER BY rowid"
            ).fetchall()
        fields = pd.DataFrame.from_records([json.loads(f) for _, f, _ in rows])
        fields.insert(0, "item_id", [r[0] for r in rows])
        fields.insert(1, "deleted", [bool(r[2]) for r in rows])
        return fields

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if the body raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
