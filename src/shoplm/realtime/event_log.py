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
fsync per commit, which the service amortises by committing every request waiting at that
moment in one transaction (see :class:`shoplm.serve.live.LiveEngine`).

A write that fails (disk full, file system read-only, an I/O error) is rolled back and
raised as :class:`LogWriteError`, which says which of these it was and names the file;
the connection stays usable, so writes succeed again once the disk has room.
"""

from __future__ import annotations

import errno
import json
import os
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
_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}, received_at) "
    f"VALUES ({', '.join('?' * (len(EVENT_COLUMNS) + 1))})"
)


class LogWriteError(OSError):
    """The log could not be written; ``reason`` is ``"full"``, ``"read-only"`` or ``"io"``.

    Nothing of the failed write is stored (its transaction was rolled back), and what was
    stored before is intact: SQLite's WAL keeps the last committed state readable.
    """

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        what = {
            "full": "the disk (or the log's size limit) is full",
            "read-only": "the data directory is read-only",
            "io": "an I/O error",
        }[reason]
        super().__init__(f"event log {path}: cannot write, {what} ({detail})")
        self.reason = reason


class EventLog:
    """One SQLite file; every write is one durable transaction, safe across threads."""

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        """Open (or create) the log at ``path``; ``max_bytes`` caps the database's size.

        At the cap a write fails as on a full disk, so the log cannot fill the disk the
        engine and the operating system need.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the server's threads; the lock serialises writers
            # (SQLite allows one at a time anyway) and keeps reads off a half-done
            # transaction.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            if max_bytes is not None:
                page = self._db.execute("PRAGMA page_size").fetchone()[0]
                self._db.execute(f"PRAGMA max_page_count={max(1, max_bytes // page)}")
        except (OSError, sqlite3.Error) as exc:
            error = self._write_error(exc)
            if error.reason != "read-only" or not self.path.is_file():
                raise error from exc
            # An existing log on a read-only disk is still read: the service answers
            # searches and recommendations, and refuses writes with this error.
            self._db = self._open_read_only()
            self.refusal: LogWriteError | None = error
        else:
            self.refusal = None

    def _open_read_only(self) -> sqlite3.Connection:
        """A read-only connection; with no WAL file left (a clean close) the file is whole
        as it is, which SQLite is told (``immutable``) since it cannot make a lock file."""
        wal = self.path.with_name(self.path.name + "-wal")
        mode = "ro" if wal.exists() else "ro&immutable=1"
        return sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode={mode}", uri=True, check_same_thread=False
        )

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
        return self.append_rows(list(frame.itertuples(index=False, name=None)))

    def append_rows(self, rows: list[tuple]) -> np.ndarray:
        """:meth:`append` for rows already in :data:`EVENT_COLUMNS` order (no data frame)."""
        received = time.time_ns()
        given = json.dumps(list({r[0] for r in rows if r[0] is not None}))
        new = np.ones(len(rows), dtype=bool)
        with self._lock, self._transaction():
            seen = {
                row[0]
                for row in self._db.execute(
                    "SELECT event_id FROM events WHERE event_id IN "
                    "(SELECT value FROM json_each(?))",
                    (given,),
                )
            }
            for i, row in enumerate(rows):
                if row[0] is not None:
                    new[i] = row[0] not in seen
                    seen.add(row[0])
            self._db.executemany(
                _INSERT, [(*row, received) for row, is_new in zip(rows, new, strict=True) if is_new]
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
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if anything in it fails.

        A failure to write (at any step: the commit is where a full disk usually shows) is
        raised as :class:`LogWriteError`.
        """
        if self.refusal is not None:
            raise self.refusal
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: Exception) -> LogWriteError:
        """What kind of failure ``exc`` is: SQLite's code, or the file system's state."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
        if code == sqlite3.SQLITE_FULL or getattr(exc, "errno", None) == errno.ENOSPC:
            return LogWriteError(self.path, "full", str(exc))
        if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN) or _read_only(
            self.path.parent
        ):
            return LogWriteError(self.path, "read-only", str(exc))
        return LogWriteError(self.path, "io", str(exc))


def _read_only(folder: Path) -> bool:
    """Whether ``folder`` is on a read-only file system or not writable by this process."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
    except OSError:
        return False
