"""Co-occurrence counts that keep up with the event stream between builds.

The session store makes a user's next answer reflect what they just did; this makes
everyone's answers reflect what other shoppers just did together: events the service
stores are folded into the served engine's co-occurrence model by
:meth:`~shoplm.recommend.cooccurrence.CooccurrenceRecommender.partial_fit`, which leaves
the model equal to a refit on all events (see its docstring for the one exception).

Folding costs one pass over the count matrices, so events are gathered and folded in one
batch every ``interval`` seconds by a background thread, never on the request path or in
the committer (an event's 2xx does not wait for it). The model's arrays are replaced, not
written into, except the item counts, so a request reading it meanwhile sees the old or
the new counts of each item.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pandas as pd

from shoplm.data.interactions import Interactions
from shoplm.realtime.sessions import WANTING_EVENTS
from shoplm.recommend.cooccurrence import CooccurrenceRecommender

LOGGER = logging.getLogger("shoplm.realtime")


class LiveCooccurrence:
    """Gathers stored events and folds them into ``model`` in batches.

    ``known_users`` are the pseudonyms of the users the model was fitted on, in its row
    order; a user first seen live gets the next free row.
    """

    def __init__(
        self, model: CooccurrenceRecommender, known_users: pd.Index, interval: float = 1.0
    ) -> None:
        self.model = model
        self.known_users = known_users
        self.interval = interval
        #: events folded into the model so far
        self.folded = 0
        self._new_users: dict[str, int] = {}
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._lock = threading.Lock()
        self._fold_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self, users: np.ndarray, items: np.ndarray, events: np.ndarray, times_ns: np.ndarray
    ) -> None:
        """Queue stored events (pseudonyms, internal item ids, event names, times in ns).

        Items the model does not know (added since the build, or unknown: -1) and events
        that are not about wanting an item are left out, as the build leaves them out.
        """
        wanted = np.isin(events, list(WANTING_EVENTS)) & (items >= 0) & (items < self.model.n_items)
        if not wanted.any():
            return
        batch = (
            np.asarray(users, dtype=object)[wanted],
            np.asarray(items, dtype=np.int64)[wanted],
            np.asarray(times_ns, dtype=np.int64)[wanted] // 1_000_000_000,
        )
        with self._lock:
            self._pending.append(batch)

    def fold(self) -> int:
        """Fold every queued event into the model now; returns how many were folded."""
        with self._fold_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return 0
            users = np.concatenate([batch[0] for batch in pending])
            items = np.concatenate([batch[1] for batch in pending])
            times = np.concatenate([batch[2] for batch in pending])
            rows = self._user_rows(users)
            self.model.partial_fit(
                Interactions(
                    users=rows,
                    items=items,
                    times=times,
                    weights=np.ones(items.size, dtype=np.float32),
                    n_users=len(self.known_users) + len(self._new_users),
                    n_items=self.model.n_items,
                )
            )
            self.folded += items.size
            return items.size

    def _user_rows(self, users: np.ndarray) -> np.ndarray:
        rows = self.known_users.get_indexer(pd.Index(users, dtype=object))
        for position in np.flatnonzero(rows < 0):
            key = users[position]
            rows[position] = self._new_users.setdefault(
                key, len(self.known_users) + len(self._new_users)
            )
        return rows.astype(np.int64)

    def start(self) -> None:
        """Fold queued events every ``interval`` seconds until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="shoplm-cooccurrence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread; what is still queued is left (the log has it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fold()
            except Exception:  # stored events stay stored; the next build counts them
                LOGGER.exception("folding events into co-occurrence failed")
